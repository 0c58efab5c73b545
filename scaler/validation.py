"""Pydantic validation errors as lines for a person: the path of each offending field, the message,
and the value given (shared by the config and the capacity profile loaders)."""

from __future__ import annotations

from pydantic import ValidationError


def format_validation_error(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        given = err.get("input")
        shown = repr(given)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"  {where}: {err['msg']} (given: {shown})")
    return "\n".join(lines)
