"""The README's embedding example runs and prints what its comments say."""

import contextlib
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
