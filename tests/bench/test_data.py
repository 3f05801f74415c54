"""Smoke test of `genlab bench data` (quick: a few MB) and of its corpus generator."""

import json
import math

import pytest

from genlab.bench import data


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_corpus_generator_seeded_distinct_and_reused(tmp_path):
    a = data.make_corpus(0.2, seed=3, out_dir=tmp_path / "a")
    b = data.make_corpus(0.2, seed=3, out_dir=tmp_path / "b")
    assert not a["reused"] and a["text_bytes"] >= 200_000
    lines = open(a["path"], encoding="utf-8").read().splitlines()
    assert lines == open(b["path"], encoding="utf-8").read().splitlines()  # seeded
    texts = [json.loads(x)["text"] for x in lines]
    assert len(texts) == a["documents"] and sum(len(t.encode()) for t in texts) == a["text_bytes"]
    assert len(set(texts)) >= 0.99 * len(texts)  # varied, not copies of the embedded documents
    again = data.make_corpus(0.2, seed=3, out_dir=tmp_path / "a")
    assert again["reused"] and again["path"] == a["path"]
    other = data.make_corpus(0.2, seed=4, out_dir=tmp_path / "a")
    assert open(other["path"], encoding="utf-8").readline() != lines[0] + "\n"


@pytest.mark.slow
def test_bench_data_quick(tmp_path, monkeypatch):
    monkeypatch.setenv("GENLAB_BENCH_DIR", str(tmp_path))
    r = data.run(quick=True)
    json.dumps(r)
    assert {
        "benchmark",
        "machine",
        "config",
        "corpora",
        "prepare_throughput",
        "data_dirs",
        "training",
        "targets",
    } <= set(r)
    assert r["corpora"]["big"]["text_bytes"] > r["corpora"]["small"]["text_bytes"] > 0
    tp = r["prepare_throughput"]
    # the same documents, the same tokenizer, BOS per document: every pipeline counts the same tokens
    assert tp["tokens_equal"] and len({t for ts in tp["tokens"].values() for t in ts}) == 1
    n_tokens = tp["tokens"]["genlab"][0]
    assert n_tokens > tp["documents"] > 0
    for name in ("genlab", "datasets", "encode_batch"):
        assert len(tp["runs"][name]) == r["config"]["rounds"]
        assert _finite_positive(tp[name]["mb_per_s"]) and _finite_positive(tp[name]["median_s"])
        assert _finite_positive(tp[name]["cpu_s"])  # the pools' workers are reaped, so counted
        assert tp[name]["mb_per_s"] == pytest.approx(tp["text_mb"] / tp[name]["median_s"])
    assert tp["ratio_genlab_datasets"] == pytest.approx(tp["genlab"]["mb_per_s"] / tp["datasets"]["mb_per_s"])
    assert all(x["cache_bytes"] > 0 for x in tp["runs"]["datasets"])  # its Arrow cache was written
    for k, d in r["data_dirs"].items():
        assert d["text_bytes"] == r["corpora"][k]["text_bytes"] and d["tokens"] > d["documents"] > 0
        assert (tmp_path / "data" / f"datadir-{r['config'][k + '_mb']:g}MB-s0" / "manifest.json").is_file()
    assert r["data_dirs"]["small"]["tokens"] == n_tokens  # throughput ran on the small corpus
    tr = r["training"]
    for k in ("big", "small"):
        assert len(tr["runs"][k]) == r["config"]["train_runs"]
        for x in tr["runs"][k]:
            assert x["steps"] == r["config"]["train_steps"] and x["samples"] > 0
            assert math.isfinite(x["loss_first"]) and math.isfinite(x["loss_last"])
            assert 0 < x["first_step_s"] < x["wall_s"]
            assert 0 < x["rss_anon_mb"] <= x["vm_hwm_mb"]  # anonymous memory is part of the resident peak
    h = tr["harness"]
    assert h["steps"] == r["config"]["probe_steps"]
    assert _finite_positive(h["step_s_median"]) and _finite_positive(h["data_s_median"])
    assert 0 < h["data_share_median"] < 1 and h["data_s_median"] < h["step_s_median"]
    assert _finite_positive(tr["import_s"]) and _finite_positive(h["setup_s"])
    t = r["targets"]
    assert t["rss_anon_excess_mb"] == pytest.approx(tr["big"]["rss_anon_mb"] - tr["small"]["rss_anon_mb"])
    assert t["prepare_ratio_met"] == (tp["ratio_genlab_datasets"] >= t["prepare_ratio_min"])
    assert t["first_step_met"] == (tr["big"]["first_step_s"] < t["first_step_max_s"])
    assert t["data_share_met"] == (h["data_share_median"] < t["data_share_max"])
    # nothing of the throughput rounds or the training runs is left in the bench directory
    assert not (tmp_path / "data" / "tput-genlab").exists() and not (tmp_path / "data" / "tput-hf-cache").exists()
    assert not list((tmp_path / "data").glob("run-*"))
