"""The README's embedding example runs and prints what its comments say."""

import contextlib
import pytest
import io
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_embedding_example_runs_as_documented(tmp_path, monkeypatch):
    text = README.read_text()
    section = text[text.index("## Embedding API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    expected = [m.group(1).strip() for line in code.splitlines() if line.startswith("print(")
                for m in [re.search(r"#\s*(.*)$", line)] if m]
    example = subprocess.run([sys.executable, "-m", "scaler", "config", "example"], capture_output=True, text=True)
    (tmp_path / "pdscaler.yaml").write_text(example.stdout)
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    printed = out.getvalue().splitlines()
    for want in expected:
        if want.startswith("every input"):
            continue  # explain(): a multi-line account, checked below
        assert want in printed, (want, printed)
    assert any("prefill (prefill): 11 replicas - forecast" in line for line in printed)


def test_quick_start_shows_the_two_commands():
    text = README.read_text()
    quick = text[text.index("## Quick start"):text.index("## What the demo shows")]
    assert "make demo" in quick and "make test" in quick


# Every ```sh / ```bash block of the README runs as written, in a scratch directory holding the repository's
# files, unless the line before it says why not: `<!-- not run: <reason> -->` (a cluster, a long-running
# server, minutes of work, files it would rewrite).
BLOCK = re.compile(r"(?:<!--\s*not run:(?P<reason>[^>]*)-->\n)?```(?:sh|bash)\n(?P<code>.*?)```", re.S)


def command_blocks() -> list[tuple[int, str | None, str]]:
    text = README.read_text()
    return [(text[:m.start("code")].count("\n") + 1, (m.group("reason") or "").strip() or None, m.group("code"))
            for m in BLOCK.finditer(text)]


def test_every_command_block_runs_or_says_why_not():
    blocks = command_blocks()
    assert sum(reason is None for _, reason, _ in blocks) >= 8
    for line, reason, code in blocks:
        if reason is not None:
            assert len(reason) > 10, f"README.md:{line}: say why the block does not run"


def test_the_commands_the_readme_names_exist():
    from scaler.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    named = {m.group(1) for _, _, code in command_blocks() for m in re.finditer(r"(?m)(?:^|[|&;]\s*)pdscaler ([a-z-]+)", code)}
    assert named and named <= set(sub.choices), named - set(sub.choices)
    assert "traces/servegen.csv" not in README.read_text()  # a file never shipped


@pytest.mark.slow
def test_the_readme_command_blocks_run_as_written(tmp_path):
    import os

    repo = README.parent
    for entry in repo.iterdir():
        if not entry.name.startswith("."):
            (tmp_path / entry.name).symlink_to(entry)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for line, reason, code in command_blocks():
        if reason is not None:
            continue
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=180)
        assert r.returncode == 0, f"README.md:{line}: exit {r.returncode}\n{code}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
