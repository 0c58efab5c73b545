"""Pydantic validation errors as lines for a person: the path of each offending field, the message,
and the value given (shared by the config and the capacity profile loaders)."""

from __future__ import annotations

import yaml
from pydantic import ValidationError


def yaml_error_line(source: str, e: yaml.YAMLError) -> str:
    """A YAML error as one line naming the file, line and column: `cfg.yaml:3:7: not valid YAML: ...`
    (PyYAML's own message names `<unicode string>` and spans several lines)."""
    mark = getattr(e, "problem_mark", None)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
    problem = getattr(e, "problem", None) or " ".join(str(e).replace("<unicode string>", source).split())
    context = getattr(e, "context", None)
    return f"{where}: not valid YAML: {problem}" + (f" ({context})" if context and context not in problem else "")


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
