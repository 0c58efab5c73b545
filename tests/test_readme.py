"""The README: its embedding example prints what its comments say, its command blocks run as written
(or say why not), the quick start shows the two commands."""

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert any("prefill (prefill): 13 replicas - forecast" in line for line in printed)


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
    """Each runnable block in a scratch directory of its own holding the repository's files (no block
    uses another's output), two at a time."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    repo = README.parent
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    def run(block):
        line, _, code = block
        work = tmp_path / f"block-{line}"
        work.mkdir()
        for entry in repo.iterdir():
            if not entry.name.startswith("."):
                (work / entry.name).symlink_to(entry)
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=work, env=env, capture_output=True,
                           text=True, timeout=180)
        return line, code, r

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, [b for b in command_blocks() if b[1] is None]))
    for line, code, r in results:
        assert r.returncode == 0, f"README.md:{line}: exit {r.returncode}\n{code}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
