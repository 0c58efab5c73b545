"""The one typed configuration of pdscaler (pydantic), with the published figures as defaults.

Every field is documented here and in the commented example (`pdscaler config example`, the file
scaler/data/config.example.yaml). An invalid file fails at start-up with pydantic's error: the path
of the offending field and the value that was given.
"""

from __future__ import annotations

import re
import types
import typing
from datetime import time
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from scaler.capacity_profile import CapacityProfile
from scaler.validation import yaml_error_line

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float:
    """Seconds from a number (seconds) or a string such as "90s", "5m", "1.5h", "250ms"."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '90s', '5m'")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNIT_S[m.group(2)]
    raise ValueError(f"invalid duration {value!r}: use seconds or a string like '90s', '5m', '1h'")


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
Name = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PrefillCapacity(_Model):
    """What one prefill replica serves. Defaults: Dynamo's SLA-planner profile (H200, Llama-3.1-8B-FP8:
    40k prefill tokens/s per GPU at 80 ms TTFT)."""

    tokens_per_s: float = Field(40_000, gt=0, description="prefill tokens/s one replica sustains at the TTFT target")
    target_utilization: float = Field(0.8, gt=0, le=1, description="plan to use at most this share of it")
    backlog_drain: Duration = Field(30.0, gt=0, description="queued prefill tokens must drain within this time")


class DecodeCapacity(_Model):
    """What one decode replica serves. Defaults: Dynamo's SLA-planner profile (10k decode tokens/s per
    GPU at 10 ms ITL) and the KV cache of an H200 serving Llama-3.1-8B (about 900k tokens)."""

    tokens_per_s: float = Field(10_000, gt=0, description="decode tokens/s one replica sustains at the ITL target")
    kv_tokens: float = Field(896_000, gt=0, description="KV-cache capacity of one replica, in tokens")
    target_utilization: float = Field(0.8, gt=0, le=1, description="plan to fill at most this share of KV and throughput")


class Stabilisation(_Model):
    """HPA semantics: a rise is acted on at the LOWEST recommendation of the scale-up window, a fall at
    the HIGHEST of the scale-down window. Defaults: the HPA's (0 s up, 300 s down)."""

    scale_up: Duration = Field(0.0, description="scale-up stabilisation window")
    scale_down: Duration = Field(300.0, description="scale-down stabilisation window")
    forecast_scale_down: Duration | None = Field(
        60.0, ge=0, description="the scale-down window while the calibrated forecast has settled on its own evidence "
        "(a fall then also keeps what the forecast needs until a replica could be back); null = always scale_down"
    )


class MaxStep(_Model):
    """How far one decision may move a role's target (None = unlimited)."""

    up: int | None = Field(None, ge=1, description="at most this many replicas more per decision")
    up_ratio: float | None = Field(None, gt=0, description="or at most this share of the current count more")
    down: int | None = Field(None, ge=1, description="at most this many replicas fewer per decision")


class Startup(_Model):
    """How long a new replica takes to serve: the lead time forecasts must look ahead."""

    warm: Duration = Field(90.0, gt=0, description="model load on a provisioned node (AKS walk-through: ~90 s)")
    cold: Duration | None = Field(
        None, gt=0, description="when a node must be provisioned first (AKS: ~3-8 min node + model load); "
        "null: no cold starts (a static node pool, or nodes kept ahead by a warm role)"
    )
    learn: bool = Field(True, description="learn the warm start-up time from observed rollouts")
    lead: Literal["configured", "observed"] = Field(
        "configured", description="the start-up time a rise is planned on: `configured` = the warm time with a "
        "warm role, else the cold one; `observed` = what the role's starts took (p90 of the last 20: cold where "
        "the warm pool does not cover the rises; more attainment, more GPU-hours, BENCHMARKS round 5)"
    )

    @property
    def cold_s(self) -> float:
        """The cold start-up time in use: the warm one when there are no cold starts."""
        return self.warm if self.cold is None else max(self.cold, self.warm)


_HHMM = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)$")


def _time_of_day(value: object) -> object:
    """A time of day from "HH:MM" (00:00-23:59); `time` values pass through."""
    if isinstance(value, str):
        m = _HHMM.match(value)
        if not m or int(m.group(1)) == 24:
            raise ValueError(f"invalid time of day {value!r}: use HH:MM, 00:00 to 23:59")
        return time(int(m.group(1)), int(m.group(2)))
    return value


def _end_of_window(value: object) -> object:
    """A window's end: "HH:MM", or "24:00" for midnight at the end of the day (23:59:59)."""
    if isinstance(value, str) and value == "24:00":
        return time(23, 59, 59)
    if isinstance(value, str) and value.startswith("24:"):
        raise ValueError(f"invalid end {value!r}: 24:00 is the last")
    return _time_of_day(value)


class ScheduleEntry(_Model):
    """A floor in force on some weekdays between two times of day (in the graph's time zone)."""

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        default_factory=lambda: ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    )
    start: Annotated[time, BeforeValidator(_time_of_day)] = Field(description="HH:MM")
    end: Annotated[time, BeforeValidator(_end_of_window)] = Field(
        description="HH:MM, 24:00 = midnight; before start = runs past midnight (exclusive)"
    )
    min_replicas: int = Field(ge=0)


class SafetyNet(_Model):
    """Observed limits that trigger an immediate scale-up (None = not watched). TTFT and ITL limits
    default to the graph's SLOs."""

    enabled: bool = True
    queued_requests: float | None = Field(None, ge=0, description="prefill roles: frontend queue length")
    ttft_p99_s: float | None = Field(None, gt=0, description="prefill roles; default: slo.ttft_s")
    kv_usage: float | None = Field(0.95, gt=0, le=1, description="decode roles: KV-cache usage share")
    itl_p99_s: float | None = Field(None, gt=0, description="decode roles; default: slo.itl_s")
    step_ratio: float = Field(0.5, gt=0, description="scale up to ready + max(1, this share of the ready count)")
    cooldown: Duration = Field(
        60.0, ge=0, description="after an emergency step, wait the warm start-up time plus this before the next"
    )
    min_load: float = Field(
        0.5, ge=0, description="latency breaches count only while demand is at least this share of ready capacity"
    )


K8sName = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]


class ScaleTargetRef(_Model):
    """Any Kubernetes resource with a /scale subresource (what a ScaledObject's scaleTargetRef names)."""

    api_version: str = Field(pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?v[0-9]+[a-z0-9]*$",
                             description="e.g. apps/v1, nvidia.com/v1alpha1")
    kind: str = Field(pattern=r"^[A-Z][A-Za-z0-9]*$", description="e.g. Deployment")
    name: K8sName
    plural: str | None = Field(
        None, pattern=r"^[a-z0-9]+$", description="the resource's plural (default: the kind lowercased + 's')"
    )

    @property
    def resource(self) -> str:
        return self.plural or self.kind.lower() + "s"

    def scale_path(self, namespace: str) -> str:
        """The API server path of the scale subresource."""
        prefix = "/api" if "/" not in self.api_version else "/apis"
        return f"{prefix}/{self.api_version}/namespaces/{namespace}/{self.resource}/{self.name}/scale"


DGDSA_API_VERSION = "nvidia.com/v1alpha1"
DGDSA_KIND = "DynamoGraphDeploymentScalingAdapter"


def dgdsa_ref(dgd: str, service: str) -> ScaleTargetRef:
    """Dynamo's scaling adapter of one DGD service: `<dgd>-<service key lowercased>`."""
    return ScaleTargetRef(api_version=DGDSA_API_VERSION, kind=DGDSA_KIND, name=f"{dgd}-{service.lower()}")


class RoleConfig(_Model):
    """One scaled role of a serving graph (a DGD service behind a scaling adapter)."""

    kind: Literal["prefill", "decode", "warm"] = Field(
        description="which capacity rule sizes this role; warm = placeholder (balloon) pods keeping GPU "
        "nodes provisioned for forecast scale-ups"
    )
    min_replicas: int = Field(1, ge=0, description="floor; also the answer before any data arrives")
    max_replicas: int = Field(16, ge=1, description="ceiling")
    gpus_per_replica: int = Field(1, ge=1)
    component: str | None = Field(
        None, description="the worker's dynamo_component label (e.g. VllmDecodeWorker); default: any"
    )
    prefill: PrefillCapacity = PrefillCapacity()
    decode: DecodeCapacity = DecodeCapacity()
    stabilisation: Stabilisation = Stabilisation()
    max_step: MaxStep = MaxStep()
    startup: Startup = Startup()
    schedule: list[ScheduleEntry] = Field(default_factory=list, description="scheduled floors (warm-pool minimums)")
    lead_time_floor: bool = Field(
        True, description="never go below what the forecast needs within the cold start-up time"
    )
    safety_net: SafetyNet = SafetyNet()
    no_cascade: bool = Field(True, description="no new scale-up while replicas asked for earlier are starting")
    service: str | None = Field(
        None, min_length=1, max_length=253, pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
        description="the DGD service key (e.g. VllmPrefillWorker): the scale target is its adapter "
        "`<dgd>-<service lowercased>`; default: the DGD service whose subComponentType is the role's kind",
    )
    scale_target: ScaleTargetRef | None = Field(
        None, description="any /scale resource instead of a DGD service (e.g. the warm role's Deployment)"
    )

    @model_validator(mode="after")
    def _bounds(self) -> "RoleConfig":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        if self.service is not None and self.scale_target is not None:
            raise ValueError("give service (a DGD service) or scale_target (any /scale resource), not both")
        return self


class Slo(_Model):
    """Service-level objectives. Defaults: MLPerf Inference's interactive Llama-3.1-8B scenario."""

    ttft_s: float = Field(0.5, gt=0, description="time to first token")
    itl_s: float = Field(0.03, gt=0, description="inter-token latency")
    attainment: float = Field(
        0.99, gt=0.5, lt=1, description="the share of requests that should meet the SLOs: the calibrated "
        "headroom sizes for it (forecast.headroom)"
    )


class RatioBounds(_Model):
    """Bounds on prefill replicas / decode replicas (None = unbounded)."""

    min: float | None = Field(None, gt=0)
    max: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "RatioBounds":
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) > max ({self.max})")
        return self


class GraphConfig(_Model):
    """A serving graph (a DynamoGraphDeployment) and the roles pdscaler sizes for it."""

    namespace: str | None = Field(
        None, description="Kubernetes namespace; None matches a ScaledObject in any namespace"
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="label matchers selecting this graph's series in Prometheus "
        '(default: dynamo_namespace="<namespace>-<graph>")',
    )
    dgd: Name | None = Field(None, description="the DynamoGraphDeployment's name (default: the graph's name)")
    roles: dict[Name, RoleConfig]
    mode: Literal["active", "advisory"] = Field(
        "active", description="advisory: compute, export and explain decisions, but keep the current replicas"
    )
    slo: Slo = Field(default_factory=lambda: Slo())
    profile: str | CapacityProfile | None = Field(
        None, description="capacity profile: a YAML file path or inline; default: the roles' flat figures"
    )
    decision_window: Duration = Field(
        60.0, gt=0, description="targets cover forecast demand over [now + lead time, now + lead time + this]"
    )
    gpu_budget: int | None = Field(None, ge=1, description="GPUs all roles of the graph may use together")
    hpa_tolerance: float = Field(
        0.0, ge=0, lt=1, description="the tolerance the graph's HPAs run with (the shipped ScaledObjects: 0; "
        "Kubernetes' default 0.1 where it cannot be set): a needed rise is rounded up to one the HPA acts on"
    )
    prefill_decode_ratio: RatioBounds = Field(default_factory=lambda: RatioBounds())
    timezone: str = Field("UTC", description="time zone of the roles' schedules")

    @field_validator("timezone")
    @classmethod
    def _known_tz(cls, tz: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {tz!r}") from None
        return tz

    def dgd_name(self, graph: str) -> str:
        return self.dgd or graph

    def ignored_settings(self, graph: str) -> list[str]:
        """Settings this graph gives that have no effect, as lines for a person: a role's flat capacity
        figures when the graph has a capacity profile; a warm role when no serving role has cold starts."""
        out = []
        serving = [rc for rc in self.roles.values() if rc.kind != "warm"]
        for role, rc in self.roles.items():
            if rc.kind == "warm" and serving and all(s.startup.cold is None for s in serving):
                out.append(f"graphs.{graph}.roles.{role} keeps nothing warm: no serving role sets startup.cold "
                           f"(cold starts), so the forecast needs no placeholder within a start-up")
        if self.profile is None:
            return out
        for role, rc in self.roles.items():
            for part, fields in (("prefill", ("tokens_per_s",)), ("decode", ("tokens_per_s", "kv_tokens"))):
                for f in sorted(set(fields) & getattr(rc, part).model_fields_set):
                    out.append(f"graphs.{graph}.roles.{role}.{part}.{f} is ignored: the graph's capacity "
                               f"profile gives the per-replica figures")
        return out

    def capacity_profile(self) -> CapacityProfile:
        """The graph's capacity profile: inline, loaded from its file, or flat from the roles' figures."""
        from scaler.capacity_profile import flat_profile, load_profile, role_gpus

        if isinstance(self.profile, CapacityProfile):
            return self.profile
        if isinstance(self.profile, str):  # a Dynamo profiler output is converted at this graph's SLOs
            gpus = role_gpus(self)
            return load_profile(self.profile, self.slo.ttft_s, self.slo.itl_s, gpus.get("prefill"), gpus.get("decode"))
        pre = next((rc for rc in self.roles.values() if rc.kind == "prefill"), None) or RoleConfig(kind="prefill")
        dec = next((rc for rc in self.roles.values() if rc.kind == "decode"), None) or RoleConfig(kind="decode")
        return flat_profile(pre.prefill.tokens_per_s, dec.decode.tokens_per_s, dec.decode.kv_tokens,
                            pre.gpus_per_replica, dec.gpus_per_replica)

    @field_validator("roles")
    @classmethod
    def _some_roles(cls, roles: dict[str, RoleConfig]) -> dict[str, RoleConfig]:
        if not roles:
            raise ValueError("a graph needs at least one role")
        return roles


def _known_metric_keys(names: dict[str, str]) -> dict[str, str]:
    from scaler.signals import DEFAULT_METRIC_NAMES

    unknown = sorted(set(names) - set(DEFAULT_METRIC_NAMES))
    if unknown:
        raise ValueError(f"unknown metric keys {unknown}; known keys: {sorted(DEFAULT_METRIC_NAMES)}")
    return names


def _known_signal_keys(queries: dict[str, str]) -> dict[str, str]:
    from scaler.signals import SIGNALS

    known = sorted({s.name for s in SIGNALS})
    unknown = sorted(set(queries) - set(known))
    if unknown:
        raise ValueError(f"unknown signals {unknown}; known signals: {known}")
    return queries


MetricNames = Annotated[dict[str, str], AfterValidator(_known_metric_keys)]


class PrometheusSourceConfig(_Model):
    kind: Literal["prometheus"] = "prometheus"
    url: str = Field("http://prometheus-operated.monitoring:9090", description="Prometheus base URL")
    timeout: Duration = Field(
        2.0, gt=0, description="total time a query may take, from connecting to the answer's last byte"
    )
    poll_deadline: Duration | None = Field(
        None, gt=0, description="total time one poll's queries may take; graphs not read by then are held "
        "(missing data). Default: 3 x timeout, at most 0.8 x poll_interval (a larger value is capped at it)"
    )
    rate_window: Duration = Field(60.0, gt=0, description="window of rate() and histogram_quantile()")
    metric_names: MetricNames = Field(
        default_factory=dict, description="override Dynamo metric names (keys: see scaler/signals.py)"
    )
    queries: Annotated[dict[str, str], AfterValidator(_known_signal_keys)] = Field(
        default_factory=dict, description="replace whole PromQL templates per signal (see scaler/signals.py)"
    )


class ScrapeSourceConfig(_Model):
    kind: Literal["scrape"] = "scrape"
    targets: dict[str, list[str]] = Field(description="graph name -> /metrics URLs of its frontend and workers")
    timeout: Duration = Field(2.0, gt=0)
    rate_window: Duration = Field(60.0, gt=0)
    metric_names: MetricNames = Field(default_factory=dict)


class HeadroomConfig(_Model):
    """Calibrated headroom (scaler/policy/headroom.py): size on the median forecast x the multiple that
    covered the realised peak need in `slo.attainment` of recent windows, at the profile's full
    capacity, instead of the `quantile` forecast at `target_utilization`."""

    enabled: bool = Field(True, description="false: size on forecast.quantile at each role's target_utilization")
    prior: float = Field(2.0, ge=1, description="the headroom before any evidence (a cold start)")
    prior_weight: Duration = Field(3600.0, ge=0, description="the prior weighs as much as this many seconds of windows")
    window: Duration = Field(86400.0, gt=0, description="the headroom is learned from the windows of this long")
    min: float = Field(1.0, gt=0, description="bounds of the headroom")
    max: float = Field(64.0, gt=0)
    feedback_rate: float = Field(0.05, ge=0, description="attainment feedback (scaler/policy/attainment.py): a poll "
                                 "breaking its latency SLO raises the gain by exp(rate x attainment), one meeting it lowers "
                                 "it by exp(rate x (1 - attainment)), weighted by the poll's requests; 0 = off")
    gain_max: float = Field(8.0, ge=1, description="bound of the attainment feedback's gain on the headroom")


class ForecastConfig(_Model):
    """Forecasting of each graph's demand (see forecasting/demand.py)."""

    enabled: bool = Field(True, description="false: size on observed demand only (purely reactive)")
    model: str = Field("auto", description="forecasting model: auto | holt | seasonal-naive | prophet | planner-*")
    quantiles: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        default_factory=lambda: [0.5, 0.9], description="quantiles forecast for every series"
    )
    quantile: float = Field(0.9, gt=0, lt=1, description="the quantile decisions size on")
    horizon: Duration = Field(
        300.0, gt=0, description="the horizon shown in reasons and explain (decisions look ahead by each role's start-up time)"
    )
    warm_start: Duration = Field(14 * 86400.0, ge=0, description="history fitted at start-up (0 = start cold)")
    warm_start_step: Duration = Field(60.0, gt=0, description="resolution of the warm-start range queries")
    seed: int = Field(0, description="seed of every model, for reproducible forecasts")
    max_growth: float | None = Field(
        2.0, gt=1, description="a forecast may ask for at most this multiple of the highest observed need of "
        "the last growth_window (null = unbounded); the safety net covers real surges beyond it"
    )
    growth_window: Duration = Field(3600.0, gt=0, description="the window of that highest observed need")
    headroom: HeadroomConfig = Field(default_factory=lambda: HeadroomConfig())

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        from forecasting.registry import MODELS

        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
        return name

    @model_validator(mode="after")
    def _quantile_is_forecast(self) -> "ForecastConfig":
        if self.quantile not in self.quantiles:
            raise ValueError(f"quantile {self.quantile} is not among quantiles {self.quantiles}")
        return self


class KubernetesConfig(_Model):
    """Cluster reads: replicas and rollout state per role, and who else scales them. Read-only: KEDA
    and the HPA write replicas, pdscaler never does."""

    enabled: bool = Field(False, description="read replicas, readiness and rollouts from the Kubernetes API")
    kubeconfig: str | None = Field(
        None, description="kubeconfig file; default: the pod's service account in a cluster, else ~/.kube/config"
    )
    context: str | None = Field(None, description="kubeconfig context (default: the current one)")
    timeout: Duration = Field(5.0, gt=0, description="per API request")
    interval: Duration = Field(15.0, gt=0, description="how often replicas are read")
    ownership_interval: Duration = Field(
        60.0, gt=0, description="how often other HPAs, ScaledObjects and Dynamo's Planner are looked for"
    )
    dgd_api_version: str = Field("nvidia.com/v1alpha1", pattern=r"^nvidia\.com/v[0-9]+[a-z0-9]*$",
                                 description="API version of DynamoGraphDeployments")


class MetricsConfig(_Model):
    """What `/metrics` exports per graph (scaler/metrics.py)."""

    detail: Literal["dashboard", "full"] = Field(
        "dashboard", description="dashboard: per graph only the series the bundled dashboards query (the "
        "observed and forecast prefill/decode token rates at p50/p90, the replica-count figures; about 40 series "
        "per graph); full: every observed input, decision figure, forecast series and quantile (about 60)"
    )


class ShardingConfig(_Model):
    """Split a fleet over replicas: this one decides and answers only the graphs whose stable hash of
    namespace/graph falls on its `index` (of `shards`); the others' ScaledObjects point at their shard's
    Service, and a request for them here is NOT_FOUND naming the shard that serves it."""

    shards: int = Field(1, ge=1, description="how many shards the graphs are split over")
    index: int = Field(None, ge=0, validate_default=True, description="this replica's shard, 0 .. shards-1; unset or null: from the environment "
                       "variable PDSCALER_SHARD_INDEX (one ConfigMap for every shard, each Deployment sets its own)")

    @field_validator("index", mode="before")
    @classmethod
    def _index_from_environment(cls, value):
        if value is not None:
            return value
        import os

        env = os.environ.get("PDSCALER_SHARD_INDEX")
        if env is None:
            raise ValueError("sharding.index is null and PDSCALER_SHARD_INDEX is not set in the environment")
        if not env.strip().isdigit():
            raise ValueError(f"PDSCALER_SHARD_INDEX={env!r} is not a shard number (0, 1, ...)")
        return int(env)

    @model_validator(mode="after")
    def _index_in_range(self) -> "ShardingConfig":
        if self.index >= self.shards:
            raise ValueError(f"sharding.index {self.index} is not below sharding.shards {self.shards}")
        return self

    def shard_of(self, graph: str, namespace: str | None = None) -> int:
        """The shard of a graph: sha256 of "namespace/graph" (namespace "" when unset), modulo shards.
        The same on every replica, Python version and run; adding or removing a graph moves no other."""
        import hashlib

        key = f"{namespace or ''}/{graph}".encode()
        return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % self.shards


class ScalerConfig(_Model):
    """The whole configuration of one pdscaler process."""

    poll_interval: Duration = Field(15.0, gt=0, description="how often metrics are read and decisions recomputed")
    stale_after: Duration = Field(
        90.0, gt=0, description="an observation older than this is stale: hold, never scale down on it"
    )
    stuck_after: Duration = Field(
        300.0, gt=0, description="no poll completed for this long: the decision loop is stuck, health turns "
        "NOT_SERVING and /healthz 503 (the liveness probe restarts the pod); answers keep the last decisions"
    )
    first_answer_timeout: Duration = Field(
        20.0, gt=0, description="at start and after a restart of the decision process, gRPC health stays "
        "NOT_SERVING and /healthz 503 until every role's answer is more than the floor held for want of data "
        "(the cluster's replicas adopted, or a poll decided on data), at most this long; then SERVING with "
        "the answers there are"
    )
    source: PrometheusSourceConfig | ScrapeSourceConfig = Field(
        default_factory=PrometheusSourceConfig, discriminator="kind"
    )
    forecast: ForecastConfig = Field(default_factory=ForecastConfig)
    kubernetes: KubernetesConfig = Field(default_factory=KubernetesConfig)
    outlier_factor: float | None = Field(
        10.0, gt=1, description="an arrival rate rising more than this factor in one poll (over the last "
        "poll's value, at least one replica's worth) is taken as the last poll's value until the next poll "
        "confirms it (scaler/policy/outlier.py); null = off"
    )
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    sharding: ShardingConfig | None = Field(
        None, description="this replica's share of the graphs (null: all of them); see ShardingConfig")
    graphs: dict[Name, GraphConfig]
    _other_shards: dict[str, int] = PrivateAttr(default_factory=dict)  # graph -> its shard (sharding)

    @field_validator("graphs")
    @classmethod
    def _some_graphs(cls, graphs: dict[str, GraphConfig]) -> dict[str, GraphConfig]:
        if not graphs:
            raise ValueError("configure at least one serving graph")
        return graphs

    @model_validator(mode="after")
    def _cluster_reads_need_namespaces(self) -> "ScalerConfig":
        if self.kubernetes.enabled:
            missing = sorted(g for g, gc in self.graphs.items() if gc.namespace is None)
            if missing:
                raise ValueError(f"kubernetes.enabled needs a namespace for every graph; missing for {missing}")
        return self

    @model_validator(mode="after")
    def _scrape_targets_name_graphs(self) -> "ScalerConfig":
        if isinstance(self.source, ScrapeSourceConfig):
            unknown = sorted(set(self.source.targets) - set(self.graphs))
            if unknown:
                raise ValueError(f"source.targets names unknown graphs {unknown}; graphs are {sorted(self.graphs)}")
        return self

    @model_validator(mode="after")
    def _own_shard(self) -> "ScalerConfig":
        """With `sharding`, `graphs` keeps this shard's graphs only (the engine, the answers, /explain and
        /metrics see no other); `shard_of_other` says where each other graph is served."""
        sh = self.sharding
        if sh is None or sh.shards == 1:
            return self
        shard = {g: sh.shard_of(g, gc.namespace) for g, gc in self.graphs.items()}
        owned = {g: gc for g, gc in self.graphs.items() if shard[g] == sh.index}
        if not owned:
            raise ValueError(f"sharding: shard {sh.index} of {sh.shards} owns none of the {len(self.graphs)} "
                             f"configured graphs; use fewer shards")
        self.__dict__["graphs"] = owned  # frozen model: set once, here, before anyone reads it
        self._other_shards = {g: i for g, i in shard.items() if i != sh.index}
        return self

    def shard_of_other(self, graph: str) -> int | None:
        """The shard serving a configured graph that this shard does not (None: not configured elsewhere)."""
        return self._other_shards.get(graph)


class UnknownGraph(KeyError):
    """A graph the config does not have; the message lists those it has."""

    def __init__(self, graph: str, known: list[str]) -> None:
        super().__init__(graph)
        self.graph, self.known = graph, known

    def __str__(self) -> str:
        return f"unknown graph {self.graph!r}; configured graphs: {', '.join(self.known)}"


class ConfigError(Exception):
    """A configuration file that cannot be used; the message says where and why."""


def load_config(path: str | Path) -> ScalerConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from e
    return parse_config(text, source=str(path))


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (PyYAML would silently keep the last)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} given twice (first at line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _unwrap(tp):
    """The type under Annotated[...]."""
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _is_model(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _kind_of(model) -> str | None:
    """The `kind` literal of a member of a tagged union (the source kinds)."""
    field = model.model_fields.get("kind")
    args = typing.get_args(field.annotation) if field is not None else ()
    return args[0] if len(args) == 1 and isinstance(args[0], str) else None


def _walk(loc: tuple) -> tuple[list[str], object, list]:
    """Follow an error's location through ScalerConfig's types: the path as the file spells it (union
    tags such as `scrape` or `CapacityProfile` left out), the type reached (a model, where it is one),
    and the other members of the last union passed on the way (the kinds a key might belong to)."""
    tp, shown, siblings, i = ScalerConfig, [], [], 0
    while i < len(loc):
        tp = _unwrap(tp)
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            members = [_unwrap(m) for m in typing.get_args(tp) if m is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
            tag = str(loc[i])
            chosen = next((m for m in members if _is_model(m) and (_kind_of(m) == tag or m.__name__ == tag)), None)
            if chosen is None:
                chosen = next((m for m in members if getattr(m, "__name__", None) == tag), None)
            if chosen is None:
                break
            siblings = [m for m in members if _is_model(m) and m is not chosen]
            tp, i = chosen, i + 1
            continue
        if _is_model(tp):
            field = tp.model_fields.get(str(loc[i]))
            if field is None:
                break
            shown.append(str(loc[i]))
            tp, i = field.annotation, i + 1
        elif origin is dict:
            shown.append(str(loc[i]))
            tp, i = typing.get_args(tp)[1], i + 1
        elif origin is list:
            shown.append(str(loc[i]))
            tp, i = typing.get_args(tp)[0], i + 1
        else:
            break
    shown += [str(p) for p in loc[i:]]
    return shown, _unwrap(tp) if i == len(loc) else None, siblings


def _unknown_key(loc: tuple) -> tuple[str, str]:
    """Where an unknown key is and what to say: the closest known key (difflib), or the kind it is a
    key of (a prometheus key under kind: scrape), or the keys there are."""
    import difflib

    shown, model, siblings = _walk(loc[:-1])
    key = str(loc[-1])
    where = ".".join([*shown, key])
    if not _is_model(model):
        return where, "unknown key"
    known = list(model.model_fields)
    for other in siblings:
        if key in other.model_fields and _kind_of(other) and _kind_of(model):
            return where, (f"unknown key: {key} is a key of kind {_kind_of(other)}, not of kind {_kind_of(model)} "
                           f"(delete it, or set kind: {_kind_of(other)}); the keys of kind {_kind_of(model)}: "
                           f"{', '.join(known)}")
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return where, f"unknown key; did you mean {close[0]!r}?"
    return where, f"unknown key; the keys here: {', '.join(known)}"


def config_error_lines(e: ValidationError) -> list[str]:
    """Pydantic's errors as lines for a person: the path as the file spells it, the message, and the
    value given; an unknown key gets the closest known one instead of 'Extra inputs are not permitted'."""
    lines = []
    for err in e.errors():
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden" and loc:
            where, msg = _unknown_key(loc)
            lines.append(f"{where}: {msg}")
            continue
        where = ".".join(_walk(loc)[0]) or "(top level)"
        shown = repr(err.get("input"))
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"{where}: {err['msg']} (given: {shown})")
    return list(dict.fromkeys(lines))


def parse_config(text: str, source: str = "<config>") -> ScalerConfig:
    """The config in `text`; ConfigError naming `source` (the file), the field's path and the value.
    One error is one line (`cfg.yaml: invalid config: graphs.x.rolez: unknown key; did you mean
    'roles'?`); several are listed one a line under it."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise ConfigError(yaml_error_line(source, e)) from e
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a YAML mapping, got {type(data).__name__}")
    try:
        return ScalerConfig.model_validate(data)
    except ValidationError as e:
        lines = config_error_lines(e)
        if len(lines) == 1:
            raise ConfigError(f"{source}: invalid config: {lines[0]}") from e
        raise ConfigError(f"{source}: invalid config\n" + "\n".join(f"  {line}" for line in lines)) from e


def example_config_text() -> str:
    """The complete, commented example printed by `pdscaler config example`."""
    return resources.files("scaler").joinpath("data/config.example.yaml").read_text()
