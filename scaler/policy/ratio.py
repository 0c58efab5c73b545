"""Bounds on the prefill:decode ratio: neither pool may starve the other.

If prefill/decode falls below `min_ratio`, prefill is raised; above `max_ratio`, decode is raised.
Raising (never lowering) keeps the SLO side safe; the GPU budget may trim afterwards.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from scaler.policy.context import Target
from scaler.policy.rule import Rule

if TYPE_CHECKING:
    from scaler.config import GraphConfig


def keep_ratio(prefill: int, decode: int, min_ratio: float | None, max_ratio: float | None
               ) -> tuple[int, int, str | None]:
    if decode > 0 and min_ratio is not None and prefill / decode < min_ratio:
        p = math.ceil(decode * min_ratio - 1e-9)
        return p, decode, f"prefill raised to {p} to keep prefill:decode >= {min_ratio:g}"
    if prefill > 0 and max_ratio is not None and decode > 0 and prefill / decode > max_ratio:
        d = math.ceil(prefill / max_ratio - 1e-9)
        return prefill, d, f"decode raised to {d} to keep prefill:decode <= {max_ratio:g}"
    return prefill, decode, None


def apply_ratio(graph: "GraphConfig", targets: dict[str, Target]) -> None:
    """The ratio between the graph's one prefill and one decode role, when bounded (roles held for
    want of data are left as they are)."""
    ratio = graph.prefill_decode_ratio
    live = {r: t for r, t in targets.items() if not t.held}
    pre = [t for t in live.values() if t.kind == "prefill"]
    dec = [t for t in live.values() if t.kind == "decode"]
    if len(pre) == 1 and len(dec) == 1 and (ratio.min or ratio.max):
        p, d = pre[0], dec[0]
        np_, nd, note = keep_ratio(p.value, d.value, ratio.min, ratio.max)
        if note:
            p.bind(np_, Rule.RATIO, note)
            d.bind(nd, Rule.RATIO, note)
