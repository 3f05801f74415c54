"""Smoke test of `genlab bench train --quick`: tiny shapes, a few seconds."""

import math

import pytest


def test_bench_train_quick():
    pytest.importorskip("transformers")
    import torch

    from genlab.bench import train

    threads = torch.get_num_threads()
    r = train.run(quick=True)
    assert torch.get_num_threads() == threads  # restored
    for key in (
        "machine",
        "shape",
        "optimizer",
        "flops_per_token",
        "peak",
        "equivalence",
        "results",
        "ratio_genlab_vs_hf",
        "target_ratio",
        "target_met",
        "ratio_paired_median",
        "ratio_cpu_time",
    ):
        assert key in r, key
    assert {"cpu", "torch", "date", "threads"} <= set(r["machine"])
    assert set(r["results"]) == {"genlab", "hf", "genlab_packed", "hf_packed_flat", "hf_packed_rows"}
    for res in r["results"].values():
        for key in ("median_step_s", "tokens_per_s", "gflops", "gflops_causal", "mfu", "loss_first", "loss_last"):
            assert math.isfinite(res[key]) and res[key] > 0, key
    assert len(r["results"]["genlab"]["step_times_s"]) == r["timed_steps"]
    for name, res in r["results"].items():  # every model trained: its loss went down over the timed steps
        assert res["loss_last"] < res["loss_first"], name
    for key in ("ratio_genlab_vs_hf", "ratio_paired_median", "ratio_cpu_time"):  # values, not speed claims
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["target_met"] == (r["ratio_genlab_vs_hf"] >= r["target_ratio"])
    assert r["ratio_genlab_vs_hf"] == pytest.approx(
        r["results"]["genlab"]["tokens_per_s"] / r["results"]["hf"]["tokens_per_s"]
    )
    assert r["peak"]["peak_gflops"] >= r["peak"]["weighted_gflops"] > 0
    # the two models compute the same function from the same weights, and train alike
    assert r["equivalence"]["ok"]
    assert r["equivalence"]["loss_first_diff"] < 1e-4 and r["equivalence"]["loss_last_diff"] < 1e-3
    assert r["equivalence"]["max_abs_logit_diff"] <= r["equivalence"]["tolerance"] < r["equivalence"]["max_abs_logit"]
    # Hugging Face's padding-free path sees the same packed documents: same first loss as genlab's packed model
    assert r["equivalence"]["packed_loss_first_diff"] < 1e-4
    assert r["results"]["genlab_packed"]["n_sequences"] > r["shape"]["rows"]  # several documents per row
    for key in ("packed_vs_fixed", "packed_vs_hf_packed", "packed_vs_hf_packed_flat"):
        assert all(math.isfinite(v) and v > 0 for v in r["ratios"][key].values()), key
    assert r["flops_per_token"]["train_causal"] < r["flops_per_token"]["train"]


def test_bench_common_helpers(capsys):
    from genlab.bench.common import interleaved_times, machine_info, median, print_table, timeit_steps

    calls = []
    assert len(timeit_steps(lambda: calls.append(1), warmup=2, steps=3)) == 3 and len(calls) == 5
    t = interleaved_times([lambda: None, lambda: None], warmup=1, steps=4)
    assert [len(x) for x in t] == [4, 4]
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert "cpu" in machine_info()
    print_table("title", ["a", "b"], [["x", 1.5]])
    assert "title" in capsys.readouterr().out


def test_bench_moe_quick():
    """`genlab bench moe --quick`: the HF comparison is fair (same loss from the same weights) and the
    three balancing modes run through the trainer, really differ, and report MaxVio."""
    import json

    import torch

    from genlab.bench import moe

    threads = torch.get_num_threads()
    try:
        r = moe.run(quick=True)
    finally:
        torch.set_num_threads(threads)
    json.dumps(r)
    st = r["step_time"]["threads_1"]
    assert abs(st["loss_genlab"] - st["loss_hf"]) < 1e-4
    assert math.isfinite(st["loss_genlab"]) and st["loss_genlab"] > 0
    for key in ("s_per_step_genlab", "speedup_vs_default", "speedup_vs_grouped_mm"):
        assert math.isfinite(st[key]) and st[key] > 0, key
    bal = r["balance"]
    assert set(bal) == {"none", "aux", "aux_free"}
    # 16 experts, top-2: MaxVio = max load / mean load - 1 lies in (0, 16 / 2 - 1]; 0 would be a perfectly even
    # split of every batch (no real router does that), above 7 is not a load
    for mode, m in bal.items():
        assert 0 < m["maxvio_last20"] <= 7 + 1e-9, (mode, m)
        assert 0 < m["val_loss"] < math.log(256), (mode, m)  # byte tokens: better than uniform after 20 steps
        assert m["trajectory"] and all(0 < v <= 7 + 1e-3 for v in m["trajectory"]), (mode, m)
    # the balancing mode reaches the model: same seed and data, so equal losses would mean it was ignored
    assert bal["aux"]["val_loss"] != bal["none"]["val_loss"]
    assert bal["aux_free"]["val_loss"] != bal["none"]["val_loss"]


@pytest.mark.slow
def test_bench_attention_quick_times_and_memory_from_separate_processes():
    import json

    from genlab.bench import attention

    r = attention.run(quick=True)
    json.dumps(r)
    assert {(x["backend"], x["n"]) for x in r["results"]} == {
        (b, n) for b in ("naive", "flash", "sdpa") for n in (256, 512)
    }
    for x in r["results"]:
        assert "error" not in x, x
        assert x["fwd_bwd_s"] >= x["fwd_s"] > 0
        # the backward holds the gradients of q, k and v (3/4 of q, k, v, o): a peak below that is no measurement
        assert x["peak_fwd_bwd_mib"] >= 0.75 * x["qkvo_mib"] > 0, x
        assert x["peak_fwd_bwd_mib"] >= x["peak_fwd_mib"] >= 0, x
    by = {(x["backend"], x["n"]): x for x in r["results"]}
    # naive attention materialises the (H, N, N) scores (4 MiB at N = 512): its forward peak is above the
    # flash backend's tiles, and grows with N
    assert by["naive", 512]["peak_fwd_mib"] > by["flash", 512]["peak_fwd_mib"] + 2
    assert by["naive", 512]["peak_fwd_mib"] > by["naive", 256]["peak_fwd_mib"] + 2


@pytest.mark.slow
def test_bench_checkpoint_quick():
    """`genlab bench checkpoint --quick`: every policy measured (memory and interleaved time), full
    keeps the least, and the per-block accounting shows selective keeping less than none."""
    from genlab.bench import checkpoint

    r = checkpoint.run(quick=True)
    res = r["results"]
    assert set(res) == {"none", "full", "every:2", "selective"}
    for p, v in res.items():
        assert "error" not in v, (p, v)
        assert v["step_s"] > 0 and v["held_mib"] > 0 and len(v["step_times_s"]) == 2
    assert res["full"]["held_mib"] < res["every:2"]["held_mib"] < res["none"]["held_mib"]
    assert res["none"]["saved"] == 0 < res["selective"]["saved"] < res["every:2"]["saved"] < res["full"]["saved"] < 1
    blk = r["moe_block_saved_mib"]
    assert 0 < blk["selective"] < 0.8 * blk["none"]
