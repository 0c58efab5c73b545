"""Ordinary user mistakes get one clear line on stderr and exit 2, never a traceback (issue 15, items 2-4):
ports in use, traces that are neither a file nor a bundled name, malformed traces; every command resolves
--trace alike and lists the bundled names in its --help; long commands show progress on a terminal only."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest

from scaler.cli import main
from scaler.testbench.traces import BUNDLED_TRACES, TraceError, bundled_trace, load_rate_curve, resolve_trace


@pytest.fixture
def busy_port():
    """A port with a listening socket on 127.0.0.1 (what a second `pdscaler serve` or a Prometheus holds)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture
def example(tmp_path):
    from scaler.config import example_config_text

    path = tmp_path / "pdscaler.yaml"
    path.write_text(example_config_text())
    return path


def one_line(capsys, prefix: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    assert "Traceback" not in err
    return lines[0]


def test_serve_on_a_grpc_port_in_use(example, busy_port, capsys):
    rc = main(["serve", "--config", str(example), "--host", "127.0.0.1", "--port", str(busy_port), "--http-port", "-1"])
    assert rc == 2
    line = one_line(capsys, "pdscaler serve: ")
    assert f"gRPC port {busy_port} is already in use" in line and "--port" in line


def test_serve_on_an_http_port_in_use(example, busy_port, capsys):
    rc = main(["serve", "--config", str(example), "--host", "127.0.0.1", "--port", "0",
               "--http-host", "127.0.0.1", "--http-port", str(busy_port)])
    assert rc == 2
    line = one_line(capsys, "pdscaler serve: ")
    assert f"HTTP port {busy_port} is already in use" in line and "--http-port" in line


def test_serve_started_twice_is_one_line_from_the_real_command(example, busy_port):
    """The installed entry point (a process, as a person runs it): no traceback, no gRPC core log line."""
    r = subprocess.run([sys.executable, "-m", "scaler", "serve", "--config", str(example), "--port", str(busy_port),
                        "--host", "127.0.0.1", "--http-port", "-1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"pdscaler serve: the gRPC port {busy_port} is already in use: is another pdscaler running? "
        f"Choose another port with --port"]


def test_demo_on_a_grpc_port_in_use(busy_port, capsys):
    assert main(["demo", "--grpc-port", str(busy_port), "--no-ui"]) == 2
    assert "--grpc-port" in one_line(capsys, f"pdscaler demo: the scaler's gRPC port {busy_port} is already in use")


def test_emulate_on_a_port_in_use(busy_port, capsys):
    assert main(["emulate", "--port", str(busy_port)]) == 2
    one_line(capsys, f"pdscaler emulate: the emulator's port {busy_port} is already in use")


@pytest.mark.parametrize("command", [
    ["demo", "--no-ui"], ["emulate", "--port", "0"], ["forecast-eval", "--horizon", "2m"],
    ["backtest", "--no-progress"], ["frontier", "--no-progress"],
])
def test_every_command_resolves_traces_alike(command, tmp_path, capsys):
    missing = tmp_path / "junk.txt"
    assert main([*command, "--trace", str(missing)]) == 2
    line = one_line(capsys, f"pdscaler {command[0]}: no trace file {str(missing)!r} and no bundled trace")
    assert line.endswith("bundled traces: " + ", ".join(BUNDLED_TRACES))
    assert main([*command, "--trace", "azure-cod"]) == 2
    assert "did you mean 'azure-code'?" in one_line(capsys, f"pdscaler {command[0]}: no trace file 'azure-cod'")


@pytest.mark.parametrize("command", ["emulate", "demo", "backtest", "frontier", "forecast-eval"])
def test_help_lists_the_bundled_traces(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = re.sub(r"\s+", "", capsys.readouterr().out)  # argparse wraps lines, also at hyphens
    for name in BUNDLED_TRACES:
        assert name in text


def test_demo_on_a_file_that_is_not_a_trace(tmp_path, capsys):
    junk = tmp_path / "junk.txt"
    junk.write_text("hello,world\n1,2\n")
    assert main(["demo", "--no-ui", "--trace", str(junk)]) == 2
    line = one_line(capsys, f"pdscaler demo: {junk}:1: not a trace")
    assert "fmt" not in line and "Azure CSV header" in line  # the demo has no format option to name


def test_demo_on_a_rate_curve_says_what_it_needs(capsys):
    assert main(["demo", "--no-ui", "--trace", "servegen-language"]) == 2
    assert "not a per-request trace" in one_line(capsys, "pdscaler demo: ")


def test_bundled_servegen_curves_load_and_resolve():
    assert resolve_trace("servegen-language") == bundled_trace("servegen-language")
    t, rate = load_rate_curve(resolve_trace("servegen-language"), "language/m-large")
    assert len(t) == 14 * 144 and t[1] - t[0] == 600 and 150 < rate.mean() < 250  # 14 days of 10 min, ~196 req/s
    with pytest.raises(TraceError, match="language/m-large, language/m-mid"):
        load_rate_curve(resolve_trace("servegen-language"), "nope")


def test_forecast_eval_takes_a_bundled_name_and_is_quiet_off_a_terminal(capsys, monkeypatch):
    """`forecast-eval --trace azure-code` (it used to fail with a raw [Errno 2]); no progress lines when
    stderr is not a terminal, one per model and phase when it is, or with --progress."""
    argv = ["forecast-eval", "--trace", "azure-code", "--horizon", "2m", "--models", "planner-constant",
            "--max-origins", "5"]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "planner-constant" in out.out and out.err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(argv) == 0
    assert "pdscaler forecast-eval: planner-constant: done" in capsys.readouterr().err
    assert main([*argv, "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
