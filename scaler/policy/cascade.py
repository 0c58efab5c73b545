"""No cascade: no new scale-up for the same queue while replicas asked for earlier are still starting.

A replica takes minutes to start; until it reports ready the load it was meant for is still queued,
and a naive rule would ask for yet more replicas for the same queue. While desired > ready, a role's
target may not rise above the replicas already asked for, EXCEPT as far as
- the demand still arriving or forecast needs (the need without the backlog: it does not pile up
  behind the starting replicas, and holding it let the need grow unserved for a whole start-up,
  measured on Azure conv);
- the reactive safety net's step (`Target.emergency`);
- the queue's need spread over a start-up rather than `backlog_drain` (prefill): a replica asked for
  now drains nothing before it is up, so it is sized for the queue still there then. Releasing the
  whole queue / 30 s instead asked for 107 prefill replicas on m-mid where 16 were starting and the
  oracle ran 14; holding all of it left a queue behind cold starts (BENCHMARKS "Decisions, round 6").
"Asked for" is what the scale subresource says (desired_replicas, read from the cluster) when known,
else the engine's own last target.
"""

from __future__ import annotations

import math

from scaler.policy.context import RoleContext, Target
from scaler.policy.rule import Rule


def hold_while_starting(target: int, desired: int | None, ready: int | None,
                        unqueued: int = 0) -> tuple[int, str | None]:
    """`unqueued`: the replicas the arriving and forecast demand need without the backlog, or the safety
    net's step (never held)."""
    if desired is None or ready is None or ready >= desired or target <= max(desired, unqueued):
        return target, None
    held = max(desired, unqueued)
    note = f"{desired - ready} replicas still starting: holding at {held} until they are ready"
    if unqueued > desired:
        note += f" (the demand without the queue, or the safety net's step, needs {unqueued})"
    return held, note


class NoCascade:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def apply(self, ctx: RoleContext, t: Target) -> None:
        if not self.enabled:
            return
        # Against the replicas the scale subresource asks for when the cluster is read: the engine's own
        # last target may never have been applied (the HPA's tolerance swallows a +1 at >= 10
        # replicas), and holding at it would wait forever for replicas nobody is starting.
        desired = ctx.role_signals.get("desired_replicas")
        desired = int(desired) if desired is not None else ctx.current
        ready = ctx.ready
        f = t.figures
        arriving = f.get("arriving_replicas", 0.0)
        unqueued = max(arriving, f.get("predictive_replicas", 0.0), float(t.emergency or 0))
        if ctx.kind == "prefill" and "reactive_replicas" in f:
            # The queue drained over a start-up (the rise lead): a replica asked for now drains none sooner.
            drain = ctx.config.prefill.backlog_drain
            queue = max(0.0, f["reactive_replicas"] - arriving)
            unqueued = max(unqueued, arriving + queue * drain / max(drain, ctx.lead_s))
        v, note = hold_while_starting(t.value, desired, int(ready) if ready is not None else None,
                                      math.ceil(unqueued - 1e-9))
        if note:
            t.bind(v, Rule.NO_CASCADE, note)
