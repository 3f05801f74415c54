"""`genlab bench nanogpt --quick`: both loops train, the report has its figures."""

import math

import pytest


@pytest.mark.slow
def test_bench_nanogpt_quick():
    import torch

    from genlab.bench import nanogpt

    threads = torch.get_num_threads()
    r = nanogpt.run(quick=True)
    assert torch.get_num_threads() == threads
    for key in ("genlab_step_s", "minigpt_step_s", "ratio_genlab_time_over_minigpt", "loss_genlab_last"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["target_met"] == (r["genlab_step_s"] <= r["minigpt_step_s"])
    assert len(r["step_times_s"]["genlab"]) == r["timed_steps"]


def test_minigpt_is_causal():
    import torch

    from genlab.bench.nanogpt import MiniGPT

    torch.manual_seed(0)
    m = MiniGPT(1, 16, 2, 8, 32)
    x = torch.randint(0, 32, (1, 8))
    y = x.clone()
    y[0, 5:] = (y[0, 5:] + 1) % 32  # later tokens changed: the loss terms of positions 0..3 stay
    with torch.no_grad():
        h1 = m.head(m.ln_f(m.blocks[0](m.tok(x) + m.pos(torch.arange(8)))))
        h2 = m.head(m.ln_f(m.blocks[0](m.tok(y) + m.pos(torch.arange(8)))))
    torch.testing.assert_close(h1[0, :5], h2[0, :5])
