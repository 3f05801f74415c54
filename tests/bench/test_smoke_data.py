"""Smoke tests of the data benchmarks: `genlab bench packing` and `genlab bench rnn` with quick=True."""

import json

import numpy as np
import pytest
import torch

from genlab.bench import packing, rnn


def test_bench_packing_quick():
    threads = torch.get_num_threads()
    r = packing.run(quick=True)
    assert torch.get_num_threads() == threads  # the thread setting is restored
    json.dumps(r)  # JSON-able
    for key in (
        "benchmark",
        "machine",
        "config",
        "corpus",
        "modes",
        "ratio_real_tokens_per_s",
        "targets",
        "best_fit_decreasing",
        "embedded_corpus",
    ):
        assert key in r
    assert {"torch", "date"} <= set(r["machine"])
    pk, pd = r["modes"]["packed"], r["modes"]["padded"]
    for m in (pk, pd):
        assert m["steps"] == r["config"]["steps"]
        assert m["real_tokens_per_s"] > 0 and 0 < m["real_fraction"] <= 1
        assert m["real_tokens"] <= m["capacity_tokens"]
        assert np.isfinite(m["final_loss"])
    assert pk["real_fraction"] >= pd["real_fraction"]
    assert pk["real_fraction"] >= 0.95  # best-fit-decreasing over a buffer fills rows almost exactly
    assert pd["real_fraction"] < 0.7  # the skewed corpus leaves padded rows mostly empty
    # the ratio is packed over padded real tokens per second (a value, not a speed claim)
    assert r["ratio_real_tokens_per_s"] == pytest.approx(pk["real_tokens_per_s"] / pd["real_tokens_per_s"], rel=0.01)
    t = r["targets"]
    assert t["packed_real_fraction_met"] == (pk["real_fraction"] >= t["packed_real_fraction_min"])
    assert t["ratio_met"] == (r["ratio_real_tokens_per_s"] >= t["ratio_min"])
    b = r["best_fit_decreasing"]
    assert b["n_chunks"] >= b["n_docs"] and 0.95 <= b["one_buffer_fill"] <= 1
    e = r["embedded_corpus"]
    assert e["packed"]["real_fraction"] > e["padded"]["real_fraction"]
    assert e["packed"]["rows"] < e["padded"]["rows"]  # the same tokens in fewer rows


def test_skewed_corpus_deterministic_and_skewed():
    p = dict(packing.DEFAULTS, n_docs=2000)
    a, b = packing.skewed_corpus(p), packing.skewed_corpus(p)
    assert len(a) == len(b) == 2000 and all(np.array_equal(x, y) for x, y in zip(a, b))
    lengths = np.array([len(x) for x in a])
    assert lengths.min() >= p["min_len"] and lengths.max() <= p["cap_factor"] * p["L"]
    assert np.median(lengths) < p["L"] / 2 < lengths.max()  # most short, some long
    assert all(x.min() >= 1 and x.max() < p["vocab"] for x in a)


def test_match_width_formula_and_tolerance():
    from genlab.families import build_lm
    from genlab.families.lm.args import LMArgs
    from genlab.families.lm.model import count_params

    target = 3_344_384
    for arch in ("lstm", "gru"):
        w = rnn.match_width(arch, target, 2, 256)
        assert abs(rnn.rnn_param_count(arch, w, 2, 256) / target - 1) < 0.05
        m = build_lm(LMArgs(arch=arch, d_model=24, n_layer=2), 256)
        assert count_params(m)["total"] == rnn.rnn_param_count(arch, 24, 2, 256)


def test_bench_rnn_quick(tmp_path):
    r = rnn.run(quick=True, out_dir=tmp_path)
    json.dumps(r)
    for key in ("benchmark", "machine", "config", "models", "plot"):
        assert key in r
    names = [m["model"] for m in r["models"]]
    assert names == ["transformer", "lstm", "gru"]
    for m in r["models"]:
        for key in ("params", "tokens_per_s", "steps", "val_loss", "val_bpb", "curve"):
            assert key in m
        assert abs(m["params_rel_diff"]) <= 0.05
        assert m["steps"] >= 1 and m["tokens_per_s"] > 0
        assert np.isfinite(m["val_loss"]) and m["val_loss"] < np.log(256)  # byte tokens: better than uniform
        # byte tokens: bits per byte is the loss in bits
        assert abs(m["val_bpb"] - m["val_loss"] / np.log(2)) < 1e-3
        assert len(m["curve"]) == r["config"]["slices"]
        assert m["curve"][-1][1] == m["steps"] and m["curve"][-1][2] == pytest.approx(m["val_loss"])
    assert (tmp_path / "rnn_vs_transformer-quick.png").is_file()


def test_bench_rnn_step_cap(tmp_path):
    r = rnn.run(steps=2, quick=True, plot=False, seconds=5.0)
    assert [m["steps"] for m in r["models"]] == [2, 2, 2]
    assert r["plot"] is None


def test_bench_objectives_quick():
    from genlab.bench import objectives

    r = objectives.run(quick=True)
    json.dumps(r)
    rows = r["objectives"]
    assert set(rows) == {"causal", "masked", "any-order"}
    for o, row in rows.items():
        assert row["steps"] == r["config"]["steps"] and np.isfinite(row["val_loss"]) and row["val_loss"] > 0
        assert row["val_loss"] < np.log(256), o  # byte tokens: 4 steps already beat uniform
        assert row["val_bpb"] == pytest.approx(row["val_loss"] / np.log(2), rel=1e-4), o
    for o in ("masked", "any-order"):  # the snippet's text outside the holes survives the infilling
        assert rows[o]["infill"].startswith("def ") and rows[o]["infill"].rstrip().endswith("[key]")
