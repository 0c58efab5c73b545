"""Compare two `pdscaler backtest --json` results, timing fields aside: are the decisions the same?

    python -m scaler.testbench.sim.compare before.json after.json

Exits 0 and prints "identical" when every figure but the timings (wall-clock seconds, milliseconds
per Engine call, warm-start seconds) is equal; else prints each difference (JSON path, before,
after) and exits 1. For refactors that must not move behaviour.
"""

from __future__ import annotations

import json
import sys
from typing import Any

TIMING_KEYS = ("wall_s", "engine_ms_per_call", "warm_start_s", "search_wall_s")


def _strip(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if k not in TIMING_KEYS}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Each place where `a` and `b` differ, timing fields aside."""
    a, b = _strip(a), _strip(b)
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in {'after' if k in b else 'before'}")
            else:
                out += differences(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (u, v) in enumerate(zip(a, b)) for d in differences(u, v, f"{path}[{i}]")]
    return [] if a == b else [f"{path or '/'}: {a!r} -> {b!r}"]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m scaler.testbench.sim.compare BEFORE.json AFTER.json", file=sys.stderr)
        return 2
    try:
        before, after = (json.load(open(p, encoding="utf-8")) for p in args)
    except (OSError, json.JSONDecodeError) as e:
        print(f"compare: {e}", file=sys.stderr)
        return 2
    diff = differences(before, after)
    print("identical" if not diff else "\n".join(diff))
    return 0 if not diff else 1


if __name__ == "__main__":
    sys.exit(main())
