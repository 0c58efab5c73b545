"""Replicas each second's demand needs so that the fluid model meets the SLOs (oracle, static sizing).

In the fluid model (scaler/testbench/sim/fluid.py), with an empty backlog:

- prefill: a step's arrivals are served within the step, with TTFT = ISL / tokens_per_s + kv_transfer,
  iff its prefill demand D = rate x ISL fits the capacity: n >= D / tokens_per_s. Any excess leaves a
  backlog that every later request waits behind. (A backlog of up to the TTFT slack could be
  tolerated; the sizing here does not use it: it is the no-queue sizing, slightly conservative.)
- decode: a step's decode work R = rate x OSL tokens/s is served without stalling at an ITL within
  the SLO iff R / n <= b* / itl(b*), where b* is the largest batch that fits max_num_seqs, the KV
  cache (b x (ISL + OSL/2) tokens) and itl(b) <= ITL SLO.

Both are at least 1 (every policy keeps one replica per role). Vectorised over steps.
"""

from __future__ import annotations

import numpy as np

from scaler.testbench.emulator.profile import EmulatorProfile


def decode_tokens_per_s_per_replica(
    profile: EmulatorProfile, isl: np.ndarray, osl: np.ndarray, itl_slo: float
) -> np.ndarray:
    """Decode tokens/s one replica serves within the ITL SLO and its KV cache, per step."""
    d = profile.decode
    context = np.maximum(np.asarray(isl, float) + np.asarray(osl, float) / 2.0, 1.0)
    b = np.minimum(float(d.max_num_seqs), profile.kv_tokens_per_replica / context)
    if d.itl_per_seq_s > 0:
        b = np.minimum(b, max(0.0, (itl_slo - d.itl_base_s) / d.itl_per_seq_s))
    return b / (d.itl_base_s + d.itl_per_seq_s * b)


def replicas_needed(profile: EmulatorProfile, rate: np.ndarray, isl: np.ndarray, osl: np.ndarray,
                    itl_slo: float) -> dict[str, np.ndarray]:
    """Per step, the fewest prefill and decode replicas that serve it within the SLOs (>= 1)."""
    rate = np.asarray(rate, float)
    prefill = rate * isl / profile.prefill.tokens_per_s
    decode = rate * osl / np.maximum(decode_tokens_per_s_per_replica(profile, isl, osl, itl_slo), 1e-9)
    return {
        "prefill": np.maximum(1, np.ceil(prefill - 1e-9)).astype(int),
        "decode": np.maximum(1, np.ceil(decode - 1e-9)).astype(int),
    }


def forward_max(x: np.ndarray, w: int) -> np.ndarray:
    """out[i] = max(x[i : i + w + 1]) (the window is cut at the end of the array)."""
    from scipy.ndimage import maximum_filter1d

    x = np.asarray(x)
    if w <= 0 or len(x) == 0:
        return x.copy()
    # maximum_filter1d centres its window; origin -(size // 2) makes it cover [i, i + w]
    # ("nearest" repeats the last value, which is inside every window cut at the end).
    size = w + 1
    return maximum_filter1d(x, size=size, origin=-(size // 2), mode="nearest")
