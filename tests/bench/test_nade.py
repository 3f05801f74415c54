"""Smoke test of `genlab bench nade` with quick=True: the presets' trainers (and NADE's segment form) timed
in turns, and the fit."""

import json

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny shapes, 1 thread


def test_bench_nade_quick(tmp_path, monkeypatch):
    from genlab.bench import nade

    monkeypatch.setenv("GENLAB_BENCH_NADE_FIT", "1")
    r = nade.run(quick=True, out_dir=tmp_path / "bench")
    assert torch.get_num_threads() == 1  # the presets' threads do not leak out
    json.dumps(r)
    tp = r["throughput"]
    assert (
        tp["hidden"] == 32
        and tp["batch_rows"] == 100
        and set(tp["rows_per_s"]) == {"nade", "made", "nade (segment form)"}
    )
    for name in ("nade", "made"):
        assert tp["rows_per_s"][name] == pytest.approx(100 / (tp["ms_per_step"][name] / 1e3))
    lo, hi = tp["ratio_range"]
    assert lo <= tp["nade_over_made"] <= hi
    assert tp["fused_kernel"] == "built" and tp["fused_over_segment"] > 0
    assert [f["preset"] for f in r["fits"]] == ["nade-uci", "made-uci"]
    for f in r["fits"]:  # 180 bits: better than uniform (180 ln 2 nats) after 6 steps from the marginals
        assert f["steps"] <= 6 and 0 < f["test_nll"] < 180 * np.log(2), f
