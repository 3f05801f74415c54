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
    for row in r["results"]:  # each target says what the measured speed-up says
        assert r["targets"][f"numpy_speedup_ge_20x_k{row['k']}"] == (row["speedup_numpy"] >= 20)
        assert row["speedup_numpy"] == pytest.approx(row["deque_s"] / row["numpy_s"])


def test_bench_detect_quick():
    import math

    r = detect.run(quick=True)
    json.dumps(r)
    for name in ("oadtr-synth", "gru-synth"):
        m = r["models"][name]
        assert 0 < m["mAP_mean"] <= 1 and 0 < m["mcAP_mean"] <= 1 and m["latency_ms_median"] > 0
        run = m["runs"][0]
        assert run["steps"] == 3 and run["test_frames"] > 5000
        assert math.isfinite(run["final_train_loss"]) and run["final_train_loss"] > 0
        # mAP is the mean of the per-class APs (8 actions, background excluded), each a probability
        ap = run["per_class_AP"]
        assert len(ap) == 8 and all(0 <= v <= 1 for v in ap.values())
        assert run["mAP"] == pytest.approx(sum(ap.values()) / len(ap))
        assert m["mAP_mean"] == pytest.approx(sum(x["mAP"] for x in m["runs"]) / len(m["runs"]))
    o, g = r["models"]["oadtr-synth"], r["models"]["gru-synth"]
    assert r["targets"]["oadtr_beats_gru_map"] == (o["mAP_mean"] > g["mAP_mean"])
    assert o["params"] > g["params"] > 0  # two different models were trained and scored
