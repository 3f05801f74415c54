"""Smoke test of `genlab bench posttrain --quick`: a tiny base, then SFT, LoRA, DPO and the packed / padded
comparison, each a few steps; the figures are consistent with what was run."""

import pytest


@pytest.mark.slow
def test_bench_posttrain_quick():
    from genlab.bench import posttrain

    r = posttrain.run(quick=True)
    assert r["sft"]["trainable"] > r["lora"]["trainable"] > 0
    assert r["lora"]["share"] == r["lora"]["trainable"] / r["sft"]["trainable"]
    assert abs(r["dpo"]["val_reward_margin_before"]) < 1e-4  # the policy starts at the reference
    tp = r["throughput"]
    assert tp["packed"]["real_fraction"] > tp["padded"]["real_fraction"]
    assert tp["speedup"] == tp["packed"]["real_tokens_per_s"] / tp["padded"]["real_tokens_per_s"]
