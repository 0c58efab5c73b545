"""No cascade: no new scale-up for the same queue while replicas asked for earlier are still starting.

A replica takes minutes to start; until it reports ready the load it was meant for is still queued,
and a naive rule would ask for yet more replicas for the same queue. While desired > ready, a role's
target may not rise above the replicas already asked for, EXCEPT as far as the demand still arriving
or forecast needs (the need without the backlog: it does not pile up behind the starting replicas,
and holding it let the need grow unserved for a whole start-up, measured on Azure conv). The reactive
safety net may override. "Asked for" is what the scale subresource says (desired_replicas, read from
the cluster) when known, else the engine's own last target.
"""

from __future__ import annotations

import math

from scaler.policy.context import RoleContext, Target
from scaler.policy.rule import Rule


def hold_while_starting(target: int, desired: int | None, ready: int | None,
                        unqueued: int = 0) -> tuple[int, str | None]:
    """`unqueued`: the replicas the arriving and forecast demand need without the backlog (never held)."""
    if desired is None or ready is None or ready >= desired or target <= max(desired, unqueued):
        return target, None
    held = max(desired, unqueued)
    note = f"{desired - ready} replicas still starting: holding at {held} until they are ready"
    if unqueued > desired:
        note += f" (the demand without the queue needs {unqueued})"
    return held, note


class NoCascade:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def apply(self, ctx: RoleContext, t: Target) -> None:
        if not self.enabled or t.emergency:
            return
        # Against the replicas the scale subresource asks for when the cluster is read: the engine's own
        # last target may never have been applied (the HPA's tolerance swallows a +1 at >= 10
        # replicas), and holding at it would wait forever for replicas nobody is starting.
        desired = ctx.role_signals.get("desired_replicas")
        desired = int(desired) if desired is not None else ctx.current
        ready = ctx.ready
        unqueued = max(t.figures.get("arriving_replicas", 0.0), t.figures.get("predictive_replicas", 0.0))
        v, note = hold_while_starting(t.value, desired, int(ready) if ready is not None else None,
                                      math.ceil(unqueued - 1e-9))
        if note:
            t.bind(v, Rule.NO_CASCADE, note)
