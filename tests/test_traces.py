"""Trace loading and rate scaling (scaler.testbench.traces)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from scaler.testbench.traces import (
    BUNDLED_TRACES,
    TraceRequest,
    bundled_trace,
    load_rate_curve,
    load_trace,
    scale_rate,
)

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_azure_timestamps_keep_seven_decimals_and_are_relative_to_the_first_request(tmp_path):
    # Out of order on purpose; 100 ns apart across a second boundary: datetime (microseconds) would
    # collapse .9999999 and .0000001 into 1 us apart.
    p = write(tmp_path, "t.csv", AZURE_HEADER
              + "2023-11-16 18:17:04.0000001,20,2\n"
              + "2023-11-16 18:17:03.9999999,10,1\n"
              + "2023-11-16 18:18:03.9999999,30,3\n")
    reqs = load_trace(p)
    assert [r.isl for r in reqs] == [10, 20, 30]
    assert reqs[0] == TraceRequest(0.0, 10, 1)
    assert reqs[1].t == pytest.approx(2e-7, abs=1e-12)
    assert reqs[2].t == pytest.approx(60.0, abs=1e-12)


def test_mooncake_jsonl_is_inferred_and_converted_from_ms(tmp_path):
    lines = [
        {"timestamp": 1500, "input_length": 100, "output_length": 5, "hash_ids": [1, 2]},
        {"timestamp": 500, "input_length": 200, "output_length": 6, "hash_ids": []},
    ]
    p = write(tmp_path, "m.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    assert load_trace(p) == [TraceRequest(0.0, 200, 6), TraceRequest(1.0, 100, 5)]
    assert load_trace(p, "mooncake") == load_trace(p)


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("a.csv", AZURE_HEADER + "2023-11-16 18:17:03.1,10,1\n2023-11-16 18:17:04.1,ten,1\n", ":3"),
        ("b.csv", AZURE_HEADER + "2023-11-16 18:17:03.1,10\n", ":2"),
        ("c.csv", AZURE_HEADER + "2023-11-16 18:17:03.1,10,1\nnot a time,1,1\n", ":3"),
        ("d.csv", AZURE_HEADER + "2023-11-16 18:17:03.1,-5,1\n", ":2"),
        ("e.jsonl", '{"timestamp": 0, "input_length": 1, "output_length": 1}\n{"timestamp": 1}\n', ":2"),
        ("f.jsonl", '{"timestamp": 0, "input_length": 1, "output_length": 1}\n{oops\n', ":2"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, name, text, where):
    p = write(tmp_path, name, text)
    with pytest.raises(ValueError) as e:
        load_trace(p)
    assert f"{p}{where}" in str(e.value)


def test_unknown_content_and_unknown_format_are_rejected(tmp_path):
    p = write(tmp_path, "x.csv", "a,b,c\n1,2,3\n")
    with pytest.raises(ValueError, match="cannot infer"):
        load_trace(p)
    with pytest.raises(ValueError, match="unknown trace format"):
        load_trace(p, "parquet")


@pytest.mark.parametrize(("name", "rows", "mean_isl", "mean_osl"),
                         [("azure-code", 8819, 2048, 28), ("azure-conv", 19366, 1155, 211)])
def test_bundled_traces_load(name, rows, mean_isl, mean_osl):
    reqs = load_trace(bundled_trace(name))
    t = np.array([r.t for r in reqs])
    assert len(reqs) == rows
    assert t[0] == 0.0 and np.all(np.diff(t) >= 0)
    assert 55 * 60 < t[-1] < 60 * 60
    assert np.mean([r.isl for r in reqs]) == pytest.approx(mean_isl, rel=0.01)
    assert np.mean([r.osl for r in reqs]) == pytest.approx(mean_osl, rel=0.01)


def test_bundled_trace_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError) as e:
        bundled_trace("azure-nope")
    for name in BUNDLED_TRACES:
        assert name in str(e.value)


def test_rate_curve_series_selection(tmp_path):
    p = write(tmp_path, "r.csv", "category_model,t_s,total_rate_rps,active_clients\n"
              "language/m-mid,600,2.5,3\nlanguage/m-large,0,1.0,1\nlanguage/m-mid,0,2.0,2\n"
              "language/m-large,600,0,0\n")
    with pytest.raises(ValueError) as e:
        load_rate_curve(p)
    assert "language/m-large" in str(e.value) and "language/m-mid" in str(e.value)
    with pytest.raises(ValueError, match="available"):
        load_rate_curve(p, "language/xl")
    t, rate = load_rate_curve(p, "language/m-mid")
    assert t.tolist() == [0.0, 600.0] and rate.tolist() == [2.0, 2.5]
    single = write(tmp_path, "s.csv", "category_model,t_s,total_rate_rps,active_clients\nx,0,1.5,1\n")
    t, rate = load_rate_curve(single)
    assert rate.tolist() == [1.5]


def test_scale_rate_integer_factor_copies_every_request():
    reqs = [TraceRequest(float(i), i, 1) for i in range(100)]
    out = scale_rate(reqs, 3)
    assert len(out) == 300
    assert Counter(out) == Counter({r: 3 for r in reqs})
    assert [r.t for r in out] == sorted(r.t for r in out)


def test_scale_rate_fraction_is_random_but_deterministic_and_keeps_the_shape():
    reqs = load_trace(bundled_trace("azure-code"))
    a, b, c = scale_rate(reqs, 2.5, seed=1), scale_rate(reqs, 2.5, seed=1), scale_rate(reqs, 2.5, seed=2)
    assert a == b and a != c
    assert len(a) == pytest.approx(2.5 * len(reqs), rel=0.02)
    half = scale_rate(reqs, 0.5)
    assert len(half) == pytest.approx(0.5 * len(reqs), rel=0.05)
    # Per-5-minute arrival counts keep their shape (bursty trace): scaled counts ~ 2.5x the original.
    bins = np.arange(0, 3600 + 300, 300)
    orig = np.histogram([r.t for r in reqs], bins)[0]
    scaled = np.histogram([r.t for r in a], bins)[0]
    busy = orig > 100
    assert np.allclose(scaled[busy] / orig[busy], 2.5, rtol=0.1)
    assert scale_rate(reqs, 0) == []
    with pytest.raises(ValueError):
        scale_rate(reqs, -1)
