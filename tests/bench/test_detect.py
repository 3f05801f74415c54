"""Smoke tests of `genlab bench detect` and `genlab bench window_max` with quick=True."""

import json

import pytest

from genlab.bench import detect, window_max

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny shapes, 1 thread


def test_bench_window_max_quick():
    r = window_max.run(quick=True)
    json.dumps(r)
    assert [row["k"] for row in r["results"]] == [3, 100, 1000]
    for row in r["results"]:
        assert row["outputs_equal"] and row["deque_s"] > 0 and row["numpy_s"] > 0 and row["speedup_numpy"] > 0
    assert set(r["targets"]) == {"numpy_speedup_ge_20x_k3", "numpy_speedup_ge_20x_k100", "numpy_speedup_ge_20x_k1000"}


def test_bench_detect_quick():
    r = detect.run(quick=True)
    json.dumps(r)
    for name in ("oadtr-synth", "gru-synth"):
        m = r["models"][name]
        assert 0 < m["mAP_mean"] <= 1 and 0 < m["mcAP_mean"] <= 1 and m["latency_ms_median"] > 0
        assert m["runs"][0]["steps"] == 3 and m["runs"][0]["test_frames"] > 5000
    assert isinstance(r["targets"]["oadtr_beats_gru_map"], bool)
