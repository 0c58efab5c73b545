"""Bounds on the prefill:decode ratio: neither pool may starve the other.

If prefill/decode falls below `min_ratio`, prefill is raised; above `max_ratio`, decode is raised.
Raising (never lowering) keeps the SLO side safe; the GPU budget may trim afterwards.
"""

from __future__ import annotations

import math


def keep_ratio(prefill: int, decode: int, min_ratio: float | None, max_ratio: float | None
               ) -> tuple[int, int, str | None]:
    if decode > 0 and min_ratio is not None and prefill / decode < min_ratio:
        p = math.ceil(decode * min_ratio - 1e-9)
        return p, decode, f"prefill raised to {p} to keep prefill:decode >= {min_ratio:g}"
    if prefill > 0 and max_ratio is not None and decode > 0 and prefill / decode > max_ratio:
        d = math.ceil(prefill / max_ratio - 1e-9)
        return prefill, d, f"decode raised to {d} to keep prefill:decode <= {max_ratio:g}"
    return prefill, decode, None
