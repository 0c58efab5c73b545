"""Configuration: the example is complete and valid; bad files fail with the field path and value."""

import subprocess
import sys

import pytest

from scaler.config import ConfigError, parse_config, parse_duration
from scaler.testbench.processes import ProcessFailed, serve_process


def test_example_config_is_valid_and_names_graph_example(example_config):
    assert list(example_config.graphs) == ["example"]
    assert set(example_config.graphs["example"].roles) == {"prefill", "decode", "warm"}
    assert example_config.source.kind == "prometheus"


def test_durations():
    assert parse_duration("90s") == 90 and parse_duration("5m") == 300 and parse_duration(2) == 2
    assert parse_duration("250ms") == 0.25
    with pytest.raises(ValueError):
        parse_duration("soon")


@pytest.mark.parametrize(
    "text, where, given",
    [
        ("graphs: {g: {roles: {prefill: {kind: prefill, max_replicas: 0}}}}", "graphs.g.roles.prefill.max_replicas", "0"),
        ("graphs: {g: {roles: {p: {kind: prefil}}}}", "graphs.g.roles.p.kind", "'prefil'"),
        ("poll_interval: soon\ngraphs: {g: {roles: {p: {kind: prefill}}}}", "poll_interval", "'soon'"),
        ("graphs: {g: {roles: {p: {kind: prefill, min_replicas: 5, max_replicas: 2}}}}", "graphs.g.roles.p", "min_replicas (5) > max_replicas (2)"),
        ("graphs: {G_bad: {roles: {p: {kind: prefill}}}}", "graphs.G_bad", "G_bad"),
        ("source: {kind: prometheus, metric_names: {ttfb: x}}\ngraphs: {g: {roles: {p: {kind: prefill}}}}", "source.metric_names", "ttfb"),
        ("graphs: {}", "graphs", "{}"),
    ],
)
def test_invalid_config_names_the_field_and_value(text, where, given):
    with pytest.raises(ConfigError) as e:
        parse_config(text, source="cfg.yaml")
    msg = str(e.value)
    assert msg.startswith("cfg.yaml: invalid config")
    assert where in msg and given in msg, msg


def test_not_yaml_and_not_a_mapping():
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config("a: [", source="x")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        parse_config("- 1", source="x")


def test_cli_rejects_invalid_config_with_nonzero_exit(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("graphs: {g: {roles: {p: {kind: prefill, max_replicas: -1}}}}\n")
    with pytest.raises(ProcessFailed) as r:
        serve_process(bad).start()
    assert r.value.returncode == 2
    assert "graphs.g.roles.p.max_replicas" in r.value.output and "-1" in r.value.output


def test_cli_config_example_round_trips(tmp_path):
    r = subprocess.run([sys.executable, "-m", "scaler", "config", "example"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    f = tmp_path / "ex.yaml"
    f.write_text(r.stdout)
    r = subprocess.run([sys.executable, "-m", "scaler", "config", "check", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "valid" in r.stdout


def test_a_key_given_twice_is_an_error_not_a_silent_override():
    from scaler.config import ConfigError, parse_config

    text = "graphs:\n  g:\n    roles:\n      p: {kind: prefill}\n    mode: active\n    mode: advisory\n"
    with pytest.raises(ConfigError, match=r"key 'mode' given twice \(first at line 5\)"):
        parse_config(text)


def test_settings_a_capacity_profile_overrides_are_reported(tmp_path):
    from importlib import resources

    from scaler.cli import main

    profile = tmp_path / "p.yaml"
    profile.write_text(resources.files("scaler").joinpath("data/profile.emulated.yaml").read_text())
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
source: {{kind: prometheus}}
graphs:
  g:
    profile: {profile}
    roles:
      prefill: {{kind: prefill, prefill: {{tokens_per_s: 5000}}}}
      decode: {{kind: decode, decode: {{target_utilization: 0.9}}}}
""")
    from scaler.config import load_config

    lines = load_config(cfg).graphs["g"].ignored_settings("g")
    assert lines == ["graphs.g.roles.prefill.prefill.tokens_per_s is ignored: the graph's capacity profile "
                     "gives the per-replica figures"]
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["config", "check", str(cfg)]) == 0
    assert "warning: graphs.g.roles.prefill.prefill.tokens_per_s is ignored" in out.getvalue()
