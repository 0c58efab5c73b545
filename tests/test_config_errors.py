"""The config for a person (issue 15, item 6): the example shows every key and its own instructions work,
unknown keys get 'did you mean', YAML errors name the file, `config check` and `explain` read well, and
`pdscaler emulate` + `pdscaler serve --config <the example>` work together as they come."""

from __future__ import annotations

import json
import re
import typing
import urllib.request

import grpc
import pytest
import yaml

from scaler.cli import main, readable_times
from scaler.config import (
    CapacityProfile,
    ConfigError,
    PrometheusSourceConfig,
    ScalerConfig,
    ScrapeSourceConfig,
    _is_model,
    _unwrap,
    example_config_text,
    load_config,
    parse_config,
)


def _models_under(tp) -> list:
    """The config models a field's type holds (through Annotated, Optional, unions, dict, list)."""
    tp = _unwrap(tp)
    if _is_model(tp):
        return [tp]
    return [m for arg in typing.get_args(tp) for m in _models_under(arg)]


def _all_fields(model, seen=None) -> set[tuple[str, str]]:
    """(model, field) of every field reachable from `model`; a capacity profile has its own format
    (scaler/capacity_profile.py, scaler/data/profile.emulated.yaml), not the config's example."""
    seen = set() if seen is None else seen
    if model in seen or model is CapacityProfile:
        return set()
    seen.add(model)
    out = {(model.__name__, name) for name in model.model_fields}
    for field in model.model_fields.values():
        for sub in _models_under(field.annotation):
            out |= _all_fields(sub, seen)
    return out


def _shown(model, data, out: set) -> None:
    """Record the (model, field) pairs the example's `data` gives, walking it with the models."""
    if not isinstance(data, dict) or not _is_model(model):
        return
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            continue
        out.add((model.__name__, key))
        for sub in _models_under(field.annotation):
            if sub is PrometheusSourceConfig or sub is ScrapeSourceConfig:
                if isinstance(value, dict) and value.get("kind") == sub.model_fields["kind"].default:
                    _shown(sub, value, out)
                continue
            origin = typing.get_origin(_unwrap(field.annotation))
            if origin is dict and isinstance(value, dict):
                for v in value.values():
                    _shown(sub, v, out)
            elif origin is list and isinstance(value, list):
                for v in value:
                    _shown(sub, v, out)
            else:
                _shown(sub, value, out)


def scrape_variant(text: str) -> str:
    """The example switched to `kind: scrape` as its comment says: the commented `# source:` section
    replaces the whole `source:` section."""
    lines = text.splitlines()
    start = lines.index("source:")
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("  "))
    alt = lines.index("# source:")
    alt_end = next(i for i in range(alt, len(lines)) if not lines[i].startswith("#"))
    section = [ln[2:] for ln in lines[alt:alt_end]]
    return "\n".join(lines[:start] + section + lines[end:alt] + lines[alt_end:]) + "\n"


def test_the_example_shows_every_key_of_the_config():
    text = example_config_text()
    shown: set = set()
    _shown(ScalerConfig, yaml.safe_load(text), shown)
    _shown(ScalerConfig, yaml.safe_load(scrape_variant(text)), shown)  # the scrape source's keys
    # a section the example leaves null (sharding) shows its keys in its comment
    comments = "\n".join(ln.split("#", 1)[1] for ln in text.splitlines() if "#" in ln)
    walked = {model for model, _ in shown}
    missing = sorted((model, key) for model, key in _all_fields(ScalerConfig) - shown
                     if model in walked or not re.search(rf"\b{key}:", comments))
    assert not missing, f"keys missing from scaler/data/config.example.yaml: {missing}"


def test_switching_the_example_to_scrape_as_its_comment_says_works():
    config = parse_config(scrape_variant(example_config_text()), "example")
    assert isinstance(config.source, ScrapeSourceConfig)
    assert config.source.targets == {"example": ["http://127.0.0.1:8000/metrics"]}  # pdscaler emulate's default


def test_only_changing_the_kind_names_the_keys_of_the_other_kind():
    text = example_config_text().replace("  kind: prometheus ", "  kind: scrape     ", 1)
    with pytest.raises(ConfigError) as e:
        parse_config(text, "pdscaler.yaml")
    msg = str(e.value)
    assert "Extra inputs" not in msg and "source.scrape" not in msg
    assert "source.url: unknown key: url is a key of kind prometheus, not of kind scrape" in msg
    assert "source.targets: Field required" in msg


@pytest.mark.parametrize("text, line", [
    ("graphs: {g: {roles: {p: {kind: prefill, max_replicaz: 3}}}}",
     "graphs.g.roles.p.max_replicaz: unknown key; did you mean 'max_replicas'?"),
    ("pol_interval: 5s\ngraphs: {g: {roles: {p: {kind: prefill}}}}", "pol_interval: unknown key; did you mean 'poll_interval'?"),
    ("forecast: {headroom: {enabeld: true}}\ngraphs: {g: {roles: {p: {kind: prefill}}}}",
     "forecast.headroom.enabeld: unknown key; did you mean 'enabled'?"),
    ("graphs: {g: {roles: {p: {kind: prefill, zzz: 1}}}}", "graphs.g.roles.p.zzz: unknown key; the keys here: kind, "),
])
def test_an_unknown_key_gets_the_closest_known_one(text, line):
    with pytest.raises(ConfigError) as e:
        parse_config(text, "cfg.yaml")
    assert str(e.value).startswith("cfg.yaml: invalid config: " + line), str(e.value)
    assert "\n" not in str(e.value)  # one error, one line


def test_yaml_errors_name_the_file_line_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("graphs:\n  g:\n    roles: [\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert str(e.value).startswith(f"{bad}:4:1: not valid YAML: ") and "<unicode string>" not in str(e.value)
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pdscaler: {bad}:4:1: not valid YAML") and len(err.strip().splitlines()) == 1


def test_config_check_counts_in_words(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(example_config_text())
    assert main(["config", "check", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: valid (1 graph, 3 roles, source prometheus)")
    path.write_text("graphs: {a: {roles: {p: {kind: prefill}}}, b: {roles: {p: {kind: prefill}}}}\n")
    assert main(["config", "check", str(path)]) == 0
    assert "(2 graphs, 2 roles," in capsys.readouterr().out


def test_explain_times_are_iso_utc_with_their_age():
    text = "graph g at t=1700000005.0 (data from t=1700000000.0)\n  prefill (prefill): 2 replicas - t=3.5 s"
    out = readable_times(text, now=1_700_000_010.0)
    assert out.splitlines()[0] == "graph g at 2023-11-14T22:13:25Z, 5 s ago (data from 2023-11-14T22:13:20Z, 10 s ago)"
    assert out.splitlines()[1].endswith("t=3.5 s")  # not an epoch time


@pytest.mark.slow
def test_the_local_loop_emulate_and_serve_the_example(tmp_path):
    """`pdscaler emulate` and `pdscaler serve --config <the example> --scrape-url <its /metrics>`, both as
    they come (graph example in namespace dynamo): GetMetrics answers for every role of the example, and
    the scaler's first poll read the emulator's series."""
    from scaler.rpc import externalscaler_pb2 as pb
    from scaler.rpc import externalscaler_pb2_grpc as pb_grpc
    from scaler.testbench.processes import emulate_process, serve_process, wait_until

    config = tmp_path / "pdscaler.yaml"
    config.write_text(example_config_text())
    with emulate_process() as emu:
        assert "for dynamo/example at" in emu.output()
        with serve_process(config, args=["--scrape-url", f"{emu.url}/metrics"]) as scaler:
            with grpc.insecure_channel(scaler.grpc_address) as channel:
                stub = pb_grpc.ExternalScalerStub(channel)
                for role in ("prefill", "decode", "warm"):
                    ref = pb.ScaledObjectRef(name=f"example-{role}", namespace="dynamo",
                                             scalerMetadata={"graph": "example", "role": role})
                    r = stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref, metricName=f"pdscaler-example-{role}"),
                                        timeout=10)
                    assert r.metricValues[0].metricName == f"pdscaler-example-{role}"
                    assert r.metricValues[0].metricValue >= (1 if role != "warm" else 0)

            def polled():
                with urllib.request.urlopen(f"{scaler.http_url}/explain?graph=example&format=json", timeout=5) as r:
                    d = json.loads(r.read())
                return d if d.get("data_at") is not None else None

            d = wait_until(polled, 30, "the scaler's first poll of the emulator", proc=scaler)
            inputs = d["roles"]["decode"]["inputs"]
            assert inputs["kv_block_size"] == 16 and inputs["kv_total_blocks"] > 0  # read from the emulator


def test_config_check_reads_the_profile_files(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(example_config_text().replace("    profile: null ", f"    profile: {tmp_path / 'nope.yaml'} ", 1))
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"pdscaler: {path}: graphs.example.profile: cannot read capacity profile {tmp_path / 'nope.yaml'}: "
                   f"No such file or directory"]


def test_config_check_names_a_shards_graphs(capsys, monkeypatch):
    from pathlib import Path

    sharded = Path(__file__).resolve().parents[1] / "manifests" / "overlays" / "sharded" / "config.yaml"
    seen = []
    for index in ("0", "1"):
        monkeypatch.setenv("PDSCALER_SHARD_INDEX", index)
        assert main(["config", "check", str(sharded)]) == 0
        line = capsys.readouterr().out.splitlines()[1]
        assert line.startswith(f"shard {index} of 2 ")
        seen += line.split("its graphs ")[1].split(", ")
    assert sorted(seen) == sorted(yaml.safe_load(sharded.read_text())["graphs"])  # each graph on one shard
