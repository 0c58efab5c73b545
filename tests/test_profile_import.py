"""`pdscaler profile import` and `profile:` pointing at Dynamo's pre-deployment profiler output
(scaler/dynamo_profile.py, scaler/profile_import.py): the figures are checked against computations from
the sample's raw arrays."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from scaler import cli
from scaler.capacity import DecodeDemand, PrefillDemand, decode_need, prefill_need
from scaler.capacity_profile import ProfileError, load_profile
from scaler.capacity_profile import import_dynamo_profile as import_profile
from scaler.config import DecodeCapacity, PrefillCapacity, load_config
from scaler.dynamo_profile import parse_gpus

SAMPLE = Path(__file__).parent / "data" / "dynamo-profile-sample"
PREFILL_NPZ = "selected_prefill_interpolation/raw_data.npz"
DECODE_NPZ = "selected_decode_interpolation/raw_data.npz"


def raw(kind: str) -> dict[str, np.ndarray]:
    with np.load(SAMPLE / (PREFILL_NPZ if kind == "prefill" else DECODE_NPZ)) as z:
        return {k: z[k] for k in z.files}


def only(tmp_path: Path, kind: str) -> Path:
    """A copy of the sample holding only its JSON files, or only its NPZ files."""
    d = tmp_path / kind
    if kind == "json":
        d.mkdir()
        for f in ("prefill_raw_data.json", "decode_raw_data.json"):
            shutil.copy(SAMPLE / f, d / f)
    else:
        for f in (PREFILL_NPZ, DECODE_NPZ):
            (d / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(SAMPLE / f, d / f)
    return d


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_json_and_npz_give_the_same_profile(tmp_path):
    from_json = import_profile(only(tmp_path, "json"), 0.5, 0.03)
    from_npz = import_profile(only(tmp_path, "npz"), 0.5, 0.03)
    assert from_json.profile == from_npz.profile
    both = import_profile(SAMPLE, 0.5, 0.03)  # both present: the NPZ, as Dynamo's Planner reads them
    assert both.profile == from_npz.profile and PREFILL_NPZ in both.notes[0] and DECODE_NPZ in both.notes[1]


@pytest.mark.parametrize("ttft_s", [0.5, 0.2])
def test_prefill_is_the_profiled_throughput_per_gpu_times_the_gpus(ttft_s):
    r = raw("prefill")
    got = import_profile(SAMPLE, ttft_s, 0.03, prefill_gpus=2)
    pts = got.profile.prefill.tokens_per_s
    assert [p.isl for p in pts] == list(r["prefill_isl"])
    assert [p.tokens_per_s for p in pts] == pytest.approx(list(2 * r["prefill_thpt_per_gpu"]))
    assert got.profile.prefill.gpus_per_replica == 2 and got.profile.prefill.ttft_target_s == ttft_s
    # The ISLs whose profiled TTFT misses the target are named in one warning (computed from the arrays).
    late = r["prefill_isl"][r["prefill_ttft"] > ttft_s * 1000]
    assert late.size  # the sample has some at both targets
    (w,) = [w for w in got.warnings if w.startswith("prefill: the profiled TTFT")]
    assert f"ISL {', '.join(f'{x:g}' for x in late)} even" in w


def brute_force_decode(r: dict[str, np.ndarray], itl_ms: float) -> dict[float, float]:
    """Per context: the throughput at the highest KV usage (on a 0.00001 grid of the measured range) where
    the ITL, linear between measured points, is within the target."""
    out = {}
    for c in np.unique(r["y_context_length"]):
        at = r["y_context_length"] == c
        kv, itl, thpt = r["x_kv_usage"][at], r["z_itl"][at], r["z_thpt_per_gpu"][at]
        o = np.argsort(kv)
        grid = np.linspace(kv[o][0], kv[o][-1], 100_001)
        ok = grid[np.interp(grid, kv[o], itl[o]) <= itl_ms]
        assert ok.size, "the targets below are chosen so that every context meets them"
        out[float(c)] = float(np.interp(ok.max(), kv[o], thpt[o]))
    return out


@pytest.mark.parametrize("itl_s", [0.03, 0.02])
def test_decode_is_the_throughput_at_the_highest_kv_usage_within_the_itl_target(itl_s):
    r = raw("decode")
    got = import_profile(SAMPLE, 0.5, itl_s, decode_gpus=2).profile.decode
    expected = brute_force_decode(r, itl_s * 1000)
    assert {p.context: p.tokens_per_s for p in got.tokens_per_s} == pytest.approx(
        {c: 2 * t for c, t in expected.items()}, rel=1e-4)
    assert got.kv_tokens == r["max_kv_tokens"][0] and got.gpus_per_replica == 2 and got.itl_target_s == itl_s
    # A tighter target never buys more throughput.
    looser = import_profile(SAMPLE, 0.5, itl_s * 1.5, decode_gpus=2).profile.decode
    assert all(a.tokens_per_s <= b.tokens_per_s for a, b in zip(got.tokens_per_s, looser.tokens_per_s))


def test_decode_figures_are_close_to_what_dynamos_planner_computes():
    """The Planner grids the points 100 x 100 (cubic, nearest where cubic has no value) over KV usage 0-1
    and context 0-max, and scans KV usage downwards for the first ITL within the target."""
    si = pytest.importorskip("scipy.interpolate")
    r = raw("decode")
    pts = (r["x_kv_usage"], r["y_context_length"])
    xi, yi = np.linspace(0, 1, 100), np.linspace(0, r["y_context_length"].max(), 100)
    grid = np.meshgrid(xi, yi)

    def surface(z):
        s = si.griddata(pts, z, tuple(grid), method="cubic")
        s[np.isnan(s)] = si.griddata(pts, z, tuple(grid), method="nearest")[np.isnan(s)]
        return s

    itl, thpt = surface(r["z_itl"]), surface(r["z_thpt_per_gpu"])
    ours = import_profile(SAMPLE, 0.5, 0.03).profile.decode
    for p in ours.tokens_per_s:
        iy = int(np.clip(np.round(p.context / (yi[1] - yi[0])), 0, 99))
        ix = next((i for i in range(99, -1, -1) if itl[iy, i] <= 30.0), 0)
        assert p.tokens_per_s == pytest.approx(thpt[iy, ix], rel=0.03), p.context


def test_cli_writes_the_profile_and_the_config_can_point_at_the_profiler_output(tmp_path, capsys):
    """`profile import --config` uses the graph's SLOs and GPUs; a config whose profile is the profiler
    directory loads the same profile and sizes the same replicas as one whose profile is the import."""
    def config(profile: Path) -> Path:
        f = tmp_path / f"config-{profile.name}.yaml"
        f.write_text(yaml.safe_dump({"graphs": {"g": {
            "slo": {"ttft_s": 0.4, "itl_s": 0.025}, "profile": str(profile),
            "roles": {"p": {"kind": "prefill", "gpus_per_replica": 2}, "d": {"kind": "decode"}}}}}))
        return f

    out = tmp_path / "imported.yaml"
    rc, stdout, err = run(["profile", "import", str(SAMPLE), "--config", str(config(SAMPLE)), "--graph", "g",
                           "--out", str(out)], capsys)
    assert rc == 0 and stdout == "" and f"wrote {out}" in err
    imported = load_profile(out)
    assert imported.prefill.ttft_target_s == 0.4 and imported.decode.itl_target_s == 0.025
    assert imported.prefill.gpus_per_replica == 2 and imported.decode.gpus_per_replica == 1
    assert imported == import_profile(SAMPLE, 0.4, 0.025, prefill_gpus=2).profile

    direct = load_config(config(SAMPLE)).graphs["g"].capacity_profile()
    via_yaml = load_config(config(out)).graphs["g"].capacity_profile()
    assert direct == via_yaml
    for isl, ctx in ((300, 700), (3000, 5000), (20000, 30000)):
        p = [prefill_need(PrefillDemand(250_000, 40_000, isl), prof.prefill, PrefillCapacity()).replicas
             for prof in (direct, via_yaml)]
        d = [decode_need(DecodeDemand(900_000, 60_000, ctx), prof.decode, DecodeCapacity()).replicas
             for prof in (direct, via_yaml)]
        assert p[0] == p[1] and d[0] == d[1]
    # Without --out the YAML goes to stdout, the summary and warnings to stderr.
    rc, stdout, err = run(["profile", "import", str(SAMPLE / "prefill_raw_data.json")], capsys)
    assert rc == 0 and load_profile_text(tmp_path, stdout) == import_profile(SAMPLE, 0.5, 0.03).profile
    assert "1 assumed" in err


def load_profile_text(tmp_path: Path, text: str):
    f = tmp_path / "stdout.yaml"
    f.write_text(text)
    return load_profile(f)


def test_gpus_per_replica_from_the_profiler_output_or_the_flags(tmp_path):
    d = only(tmp_path, "npz")
    (d / "selected_decode_interpolation" / "config.yaml").write_text(yaml.safe_dump({"spec": {"services": {
        "Frontend": {"componentType": "frontend"},
        "VllmDecodeWorker": {"componentType": "worker", "extraPodSpec": {"mainContainer": {
            "args": ["python3 -m dynamo.vllm --model m --tensor-parallel-size 2 --data-parallel-size 2"]}}}}}}))
    got = import_profile(d, 0.5, 0.03)
    assert got.profile.decode.gpus_per_replica == 4 and got.profile.prefill.gpus_per_replica == 1
    assert any("prefill" in w and "1 assumed" in w for w in got.warnings)
    assert not any(w.startswith("decode") and "assumed" in w for w in got.warnings)
    # The planner's own figures (config_with_planner.yaml) come first; flags come before both.
    (d / "config_with_planner.yaml").write_text(yaml.safe_dump_all([{"kind": "ConfigMap"}, {"spec": {"services": {
        "Planner": {"extraPodSpec": {"mainContainer": {"args": [
            "--prefill-engine-num-gpu=2", "--decode-engine-num-gpu=8"]}}}}}}]))
    got = import_profile(d, 0.5, 0.03)
    assert (got.profile.prefill.gpus_per_replica, got.profile.decode.gpus_per_replica) == (2, 8)
    assert not any("assumed" in w for w in got.warnings)
    assert import_profile(d, 0.5, 0.03, decode_gpus=1).profile.decode.gpus_per_replica == 1
    assert parse_gpus("tp=2,pp=2") == 4 and parse_gpus("3") == 3
    with pytest.raises(ValueError, match="tp=2,pp=1,dp=1"):
        parse_gpus("tp=2,tp=2")


def _edit_json(d: Path, name: str, change) -> Path:
    f = d / name
    data = json.loads(f.read_text())
    change(data)
    f.write_text(json.dumps(data))
    return f


def _edit_npz(d: Path, name: str, change) -> Path:
    f = d / name
    with np.load(f) as z:
        data = {k: z[k] for k in z.files}
    change(data)
    np.savez(f, **data)
    return f


def _set(key: str, i: int, value: float):
    def change(d):
        d[key][i] = value
    return change


PJ, DJ = "prefill_raw_data.json", "decode_raw_data.json"
MALFORMED = {
    # name: (format, file, change, the problem the message states)
    "missing array": ("json", PJ, lambda d: d.pop("prefill_ttft"), "missing array 'prefill_ttft'"),
    "wrong shape": ("npz", DECODE_NPZ, lambda d: d.update(z_itl=d["z_itl"].reshape(6, 8)),
                    "'z_itl' must be a 1-D array"),
    "lengths differ": ("json", DJ, lambda d: d["z_thpt_per_gpu"].pop(), "lengths differ"),
    "NaN": ("npz", PREFILL_NPZ, _set("prefill_thpt_per_gpu", 3, np.nan), "'prefill_thpt_per_gpu'[3] is nan"),
    "negative": ("json", DJ, _set("z_thpt_per_gpu", 5, -1.0), "'z_thpt_per_gpu'[5] is -1"),
    "ISL not increasing": ("json", PJ, _set("prefill_isl", 4, 900.0),
                           "'prefill_isl' must increase strictly, but [4] = 900 follows 1024"),
    "TTFT in seconds": ("npz", PREFILL_NPZ, lambda d: d.update(prefill_ttft=d["prefill_ttft"] / 1000),
                        "looks like seconds"),
    "KV usage in percent": ("json", DJ, lambda d: d.update(x_kv_usage=[x * 100 for x in d["x_kv_usage"]]),
                            "a percentage?"),
    "no KV capacity": ("npz", DECODE_NPZ, lambda d: d.pop("max_kv_tokens"), "missing 'max_kv_tokens'"),
    "two points at one KV usage": ("json", DJ, _set("x_kv_usage", 1, 0.05),
                                   "two points at x_kv_usage 0.05 for y_context_length 512"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_profiler_output_is_rejected_in_one_line_naming_the_file(case, tmp_path, capsys):
    fmt, name, change, problem = MALFORMED[case]
    d = only(tmp_path, fmt)
    f = (_edit_json if fmt == "json" else _edit_npz)(d, name, change)
    rc, stdout, err = run(["profile", "import", str(d)], capsys)
    assert rc == 2 and stdout == ""
    assert err.count("\n") == 1 and err.startswith(f"pdscaler profile import: {f}: ") and problem in err, err
    with pytest.raises(ProfileError, match="^" + str(f).replace("\\", "\\\\")):
        load_profile(d)  # the same check when a config's profile points there


def test_unreadable_inputs_are_one_line_too(tmp_path, capsys):
    d = only(tmp_path, "json")
    (d / "decode_raw_data.json").write_text("{not json")
    rc, _, err = run(["profile", "import", str(d)], capsys)
    assert rc == 2 and err.count("\n") == 1 and "decode_raw_data.json: not valid JSON: line 1" in err
    (d / "decode_raw_data.json").unlink()
    rc, _, err = run(["profile", "import", str(d)], capsys)
    assert rc == 2 and err.count("\n") == 1 and "no decode data" in err
    rc, _, err = run(["profile", "import", str(tmp_path / "absent")], capsys)
    assert rc == 2 and "absent: no such file or directory" in err
    npz = only(tmp_path, "npz")
    (npz / PREFILL_NPZ).write_bytes(b"not a zip")
    rc, _, err = run(["profile", "import", str(npz / PREFILL_NPZ)], capsys)
    assert rc == 2 and err.count("\n") == 1 and f"{npz / PREFILL_NPZ}: not a readable NPZ file" in err
    # Targets no profiled point meets, and a bare number that means seconds.
    rc, _, err = run(["profile", "import", str(SAMPLE), "--ttft", "10ms"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "no profiled ISL meets the TTFT target 0.01 s" in err
    with pytest.raises(SystemExit) as e:
        cli.main(["profile", "import", str(SAMPLE), "--itl", "30"])
    assert e.value.code == 2 and "30 means 30 seconds; give a unit (e.g. 30ms)" in capsys.readouterr().err


def test_backtest_runs_with_a_config_whose_profile_is_the_profiler_output(tmp_path, capsys):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"graphs": {"g": {"profile": str(SAMPLE), "roles": {
        "prefill": {"kind": "prefill"}, "decode": {"kind": "decode"}}}}}))
    rc, out, _ = run(["backtest", "--config", str(cfg), "--trace", "azure-code", "--duration", "10m",
                      "--policies", "pdscaler", "--no-progress"], capsys)
    assert rc == 0
    row = next(line for line in out.splitlines() if line.startswith("pdscaler"))
    assert "%" in row
    # A profile: naming a malformed profiler output: one line, exit 2, before anything is simulated.
    bad = only(tmp_path, "json")
    f = _edit_json(bad, "decode_raw_data.json", lambda d: d.pop("z_itl"))
    cfg.write_text(cfg.read_text().replace(str(SAMPLE), str(bad)))
    rc, out, err = run(["backtest", "--config", str(cfg), "--trace", "azure-code", "--policies", "pdscaler",
                        "--no-progress"], capsys)
    assert rc == 2 and out == "" and err == f"pdscaler backtest: {f}: missing array 'z_itl' " \
        "(the file has: max_kv_tokens, x_kv_usage, y_context_length, z_thpt_per_gpu)\n"
