"""The product never imports the test bench, and the forecasting models never import `scaler`.

Reads every module's imports (module level and inside functions) from its source, so an import that
runs only on some path is caught as well. The product is `scaler/` outside `scaler/testbench/` and
`forecasting/`; the bench is `scaler/testbench/`; only `forecasting/evaluation/` (offline tooling)
may import `scaler`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = "scaler.testbench"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, module: str | None = None) -> set[str]:
    """Absolute names of every module `path` (the module `module`, by default its name under the
    repository) imports, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = (module or _module_name(path)).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from scaler import testbench`
    return out


def _modules(top: str) -> list[Path]:
    return sorted(p for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts)


def _is(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


PRODUCT = [p for p in _modules("scaler") if not _is(_module_name(p), BENCH)]
MODELS = [p for p in _modules("forecasting") if not _is(_module_name(p), "forecasting.evaluation")]


@pytest.mark.parametrize("path", PRODUCT, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_product_never_imports_the_test_bench(path: Path) -> None:
    bad = sorted(n for n in imports_of(path) if _is(n, BENCH) or _is(n, "forecasting.evaluation"))
    assert not bad, f"{path.relative_to(ROOT)} (product) imports the test bench: {', '.join(bad)}"


@pytest.mark.parametrize("path", MODELS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_forecasting_models_never_import_scaler(path: Path) -> None:
    bad = sorted(n for n in imports_of(path) if _is(n, "scaler"))
    assert not bad, f"{path.relative_to(ROOT)} imports scaler: {', '.join(bad)}"


def test_no_import_cycle_between_packages_modules() -> None:
    """No cycle among the product's and the models' modules (module-level imports and lazy ones)."""
    paths = PRODUCT + MODELS
    names = {_module_name(p): p for p in paths}
    graph = {n: {m for m in imports_of(p) if m in names and m != n} for n, p in names.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycle = stack[stack.index(m):] + [m]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    """The reader resolves relative and lazy imports (so the checks above could fail)."""
    mod = tmp_path / "probe.py"
    mod.write_text("def f():\n    from ..testbench import sim\n    from . import bounds\n")
    names = imports_of(mod, "scaler.policy.probe")
    assert "scaler.testbench.sim" in names and "scaler.policy.bounds" in names
