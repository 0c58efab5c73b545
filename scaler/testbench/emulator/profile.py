"""Capacity and timing profile of the emulated prefill/decode graph.

Every default is a published figure (source in the comment next to it). The reference point is the
profile Dynamo's SLA planner documents for its disaggregated benchmark: one H200 GPU per worker,
Llama-3.1-8B-Instruct-FP8 served by vLLM.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from scaler import capacity_profile as cp

# --- KV cache capacity of one H200 worker serving Llama-3.1-8B (FP8 weights, BF16 KV cache) -------
# H200 HBM: 141 GB (NVIDIA H200 datasheet).
H200_MEMORY_BYTES = 141e9
# vLLM's default --gpu-memory-utilization is 0.9 (vLLM engine arguments).
GPU_MEMORY_UTILIZATION = 0.9
# Llama-3.1-8B-Instruct-FP8 weights resident on the GPU: ~8.5 GB as vLLM reports when loading the
# checkpoint (FP8 linear layers at 1 byte/param, BF16 embeddings and lm_head).
LLAMA31_8B_FP8_WEIGHTS_BYTES = 8.5e9
# KV bytes per token for Llama-3.1-8B (config.json: 32 layers, 8 KV heads, head dim 128), K and V,
# BF16 (2 bytes): 32 * 8 * 128 * 2 * 2 = 131072 B = 128 KiB per token.
LLAMA31_8B_KV_BYTES_PER_TOKEN = 32 * 8 * 128 * 2 * 2
# vLLM's default KV block size is 16 tokens (CacheConfig.block_size).
VLLM_KV_BLOCK_SIZE = 16
# (141e9 * 0.9 - 8.5e9) / (131072 * 16) = 56457 blocks (~903k tokens). Decimal GB, rounded figures;
# vLLM also reserves activation and CUDA-graph memory (a few GB), not subtracted here, so a real
# engine reports a few percent fewer blocks.
H200_LLAMA31_8B_KV_BLOCKS = int(
    (H200_MEMORY_BYTES * GPU_MEMORY_UTILIZATION - LLAMA31_8B_FP8_WEIGHTS_BYTES)
    // (LLAMA31_8B_KV_BYTES_PER_TOKEN * VLLM_KV_BLOCK_SIZE)
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PrefillProfile(_Strict):
    """A prefill worker serves one request at a time at a fixed token rate."""

    # Dynamo SLA-planner profile (docs, H200, Llama-3.1-8B-FP8): 40k prefill tokens/s/GPU at 80 ms TTFT.
    tokens_per_s: float = Field(default=40_000.0, gt=0)
    # One GPU per prefill engine in that profile (TP=1).
    gpus_per_replica: int = Field(default=1, ge=1)
    # The disaggregated examples in Dynamo start with one prefill and one decode worker.
    initial_replicas: int = Field(default=1, ge=0)


class DecodeProfile(_Strict):
    """A decode worker batches up to max_num_seqs sequences; its ITL grows linearly with the batch.

    itl(b) = itl_base_s + itl_per_seq_s * b. With the defaults b = 100 gives 10 ms ITL and
    100 / 0.010 = 10k tokens/s, the Dynamo SLA-planner profile point (10k decode tokens/s/GPU at
    10 ms ITL, H200, Llama-3.1-8B-FP8). Only that point is published: the split into a 6 ms
    intercept (the weight-read-bound step of a small batch) and a 40 us/sequence slope is the
    emulator's choice.
    """

    itl_base_s: float = Field(default=0.006, gt=0)
    itl_per_seq_s: float = Field(default=0.00004, ge=0)
    # vLLM's default --max-num-seqs (256; newer vLLM raises it on large GPUs, we keep the classic value).
    max_num_seqs: int = Field(default=256, ge=1)
    # One GPU per decode engine in the Dynamo profile (TP=1).
    gpus_per_replica: int = Field(default=1, ge=1)
    initial_replicas: int = Field(default=1, ge=0)

    def itl(self, batch: int) -> float:
        """Inter-token latency (seconds) of a decode step with `batch` running sequences."""
        return self.itl_base_s + self.itl_per_seq_s * batch


class EmulatorProfile(_Strict):
    """Everything that sets the emulated graph's capacity and timing."""

    prefill: PrefillProfile = PrefillProfile()
    decode: DecodeProfile = DecodeProfile()
    # vLLM default KV block size (tokens per block).
    kv_block_size: int = Field(default=VLLM_KV_BLOCK_SIZE, ge=1)
    # KV blocks per worker (both roles run the same engine on the same GPU): derived above, 56457.
    kv_blocks_per_replica: int = Field(default=H200_LLAMA31_8B_KV_BLOCKS, ge=1)
    # Time from "replica created" to "serving": ~90 s of model load on a warm node, measured in the
    # published AKS + KEDA Dynamo walk-through (a cold node adds ~3 min of node provisioning).
    startup_delay_s: float = Field(default=90.0, ge=0)
    # Prefill-to-decode KV transfer: a 2k-token prompt is 256 MiB of KV; over NVLink/NIXL at tens of
    # GB/s that is a few ms. 5 ms is the emulator's flat figure.
    kv_transfer_s: float = Field(default=0.005, ge=0)
    # Longest simulation step (seconds). Prefill is event-exact; decode progress is integrated per step.
    tick_s: float = Field(default=0.05, gt=0)

    @model_validator(mode="after")
    def _check(self) -> EmulatorProfile:
        if self.tick_s > 1.0:
            raise ValueError("tick_s above 1 s makes decode timing meaningless")
        return self

    @property
    def kv_tokens_per_replica(self) -> int:
        return self.kv_blocks_per_replica * self.kv_block_size


# Lengths at which capacity_profile samples the curves.
ISL_POINTS = (128, 512, 1024, 2048, 4096, 8192, 16384)
CONTEXT_POINTS = (256, 1024, 2048, 3072, 4096, 8192, 16384, 32768)


def capacity_profile(p: EmulatorProfile, ttft_target_s: float, itl_target_s: float) -> cp.CapacityProfile:
    """The emulated hardware's capacity at the SLOs.

    Prefill: the emulator serves prefill at a fixed token rate, whatever the input length, so the
    curve is flat (a real profile falls with ISL: attention is quadratic).
    Decode: the largest batch b whose ITL meets the target, itl(b) = itl_base + itl_per_seq x b <=
    target, also capped by max_num_seqs and by KV (b x context <= KV tokens); tokens/s = b / itl(b).
    """
    b_itl = int((itl_target_s - p.decode.itl_base_s) / p.decode.itl_per_seq_s) if p.decode.itl_per_seq_s else p.decode.max_num_seqs
    if b_itl < 1:
        raise ValueError(f"the ITL target {itl_target_s}s is below the emulated ITL of one sequence")
    kv = float(p.kv_tokens_per_replica)
    points = []
    for ctx in CONTEXT_POINTS:
        b = max(1, min(b_itl, p.decode.max_num_seqs, int(kv // ctx)))
        points.append(cp.ContextPoint(context=ctx, tokens_per_s=round(b / p.decode.itl(b), 1)))
    return cp.CapacityProfile(
        prefill=cp.PrefillProfile(gpus_per_replica=p.prefill.gpus_per_replica, ttft_target_s=ttft_target_s,
                               tokens_per_s=[cp.IslPoint(isl=i, tokens_per_s=p.prefill.tokens_per_s) for i in ISL_POINTS]),
        decode=cp.DecodeProfile(gpus_per_replica=p.decode.gpus_per_replica, itl_target_s=itl_target_s, kv_tokens=kv,
                             tokens_per_s=points),
    )
