"""`reactive-ttft`: the published AKS KEDA example for Dynamo (reference/landscape.md, dynamo.md).

Prefill: a ScaledObject with a Prometheus trigger on
`histogram_quantile(0.99, sum(rate(dynamo_frontend_time_to_first_token_seconds_bucket[2m])) by (le))`,
threshold 0.3 (AverageValue, KEDA's default metricType), minReplicaCount 2, no behavior block (the
HPA's legacy defaults: 300 s scale-down stabilisation, scale-up at most max(2 x current, 4) per
sync, 10 % tolerance). pollingInterval 30 and cooldownPeriod 120 only act on 0 <-> min.

Decode: the example has no decode signal. The fairest reading: a second ScaledObject of the same
shape on the p99 ITL over 2 minutes, threshold = the ITL SLO, minReplicaCount 2.

maxReplicaCount: the example's 4 fits its load, not these; the replay uses the operator's
obvious ceiling, the replicas the trace's busiest second needs (static-peak's size), at least 2.

AverageValue with one cluster-wide value means desired = ceil(p99 / threshold): at 10 replicas a
p99 TTFT of 0.33 s is within tolerance and it takes p99 > 3.3 s to add one. That is what the
example does; the replay keeps it. An empty window (no requests) reads 0 (KEDA's
ignoreNullValues default).
"""

from __future__ import annotations

from scaler.testbench.sim.actuation import ScaledObject
from scaler.testbench.sim.policies.base import Policy

THRESHOLD_TTFT_S = 0.3
WINDOW_S = 120.0
MIN_REPLICAS = 2


class ReactiveTtft(Policy):
    name = "reactive-ttft"
    interval_s = 15.0  # the Prometheus query runs at every HPA sync

    def __init__(self, ctx, threshold_s: float = THRESHOLD_TTFT_S) -> None:
        super().__init__(ctx)
        if not threshold_s > 0:
            raise ValueError(f"threshold_s must be > 0, got {threshold_s}")
        self.threshold_s = threshold_s  # the prefill trigger's threshold (the frontier sweeps it)

    def scaled_object(self, role: str) -> ScaledObject:
        threshold = self.threshold_s if role == "prefill" else self.ctx.itl_slo
        ceiling = max(MIN_REPLICAS, int(self.ctx.need[role].max()))
        return ScaledObject(min_replicas=MIN_REPLICAS, max_replicas=ceiling, target=threshold, behavior=None)

    def initial_replicas(self) -> dict[str, int]:
        return {role: max(MIN_REPLICAS, n) for role, n in super().initial_replicas().items()}

    def step(self, now, i, telemetry, cluster) -> dict[str, float]:
        w = telemetry.window(WINDOW_S)
        return {"prefill": w.get("ttft_p99", 0.0), "decode": w.get("itl_p99", 0.0)}
