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
    for key in ("machine", "shape", "optimizer", "flops_per_token", "peak", "equivalence", "results",
                "ratio_genlab_vs_hf", "target_ratio", "target_met", "ratio_paired_median", "ratio_cpu_time"):
        assert key in r, key
    assert {"cpu", "torch", "date", "threads"} <= set(r["machine"])
    assert set(r["results"]) == {"genlab", "hf", "genlab_packed"}
    for res in r["results"].values():
        for key in ("median_step_s", "tokens_per_s", "gflops", "gflops_causal", "mfu", "loss_first", "loss_last"):
            assert math.isfinite(res[key]) and res[key] > 0, key
    assert len(r["results"]["genlab"]["step_times_s"]) == r["timed_steps"]
    assert r["peak"]["peak_gflops"] >= r["peak"]["weighted_gflops"] > 0
    # the two models compute the same function from the same weights, and train alike
    assert r["equivalence"]["ok"]
    assert r["equivalence"]["loss_first_diff"] < 1e-4
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
    three balancing modes run through the trainer and report MaxVio."""
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
    assert st["s_per_step_genlab"] > 0 and st["speedup_vs_default"] > 0
    assert set(r["balance"]) == {"none", "aux", "aux_free"}
    for m in r["balance"].values():
        assert m["maxvio_last20"] >= 0 and m["val_loss"] > 0


def test_bench_attention_quick_times_and_memory_from_separate_processes():
    import json

    from genlab.bench import attention

    r = attention.run(quick=True)
    json.dumps(r)
    assert {(x["backend"], x["n"]) for x in r["results"]} == {(b, n) for b in ("naive", "flash", "sdpa")
                                                              for n in (256, 512)}
    for x in r["results"]:
        assert x["fwd_bwd_s"] >= x["fwd_s"] > 0 and x["peak_fwd_bwd_mib"] >= 0


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
    blk = r["moe_block_saved_mib"]
    assert 0 < blk["selective"] < 0.8 * blk["none"]
