"""Planner arithmetic against hand-computed values and DeepSeek LLM's published 7B / 67B settings."""

import json
import math

import pytest

from genlab.cli import main
from genlab.config import TrainConfig
from genlab.errors import GenlabError
from genlab.families.lm.args import LMArgs
from genlab.scaling import laws
from genlab.scaling.plan import find_shape, plan, resolve_budget
from genlab.train.flops import deepseek_M, flops_per_token
from genlab.train.optim import lr_factor


def test_deepseek_formulas_reproduce_the_reference_table():
    # shared/reference/scaling-laws.md §1.4, recomputed from the formulas
    for C, eta, B, M, D in [
        (1e20, 9.86e-4, 1.02e6, 5.25e9, 1.90e10),
        (1e22, 5.55e-4, 4.59e6, 5.87e10, 1.70e11),
        (1e24, 3.12e-4, 2.07e7, 6.57e11, 1.52e12),
    ]:
        m, d = laws.LAWS["deepseek"].split(C)
        for got, want in ((laws.eta_opt(C), eta), (laws.batch_opt_tokens(C), B), (m, M), (d, D)):
            assert got == pytest.approx(want, rel=6e-3)
        assert m * d == pytest.approx(C, rel=2e-4)  # 0.1715 * 5.8316 = 1.0001
    # by hand: 0.3118 * (1e20)^-0.125 = 0.3118 * 10^-2.5
    assert laws.eta_opt(1e20) == pytest.approx(0.3118 * 10**-2.5, rel=1e-12)
    assert laws.batch_opt_tokens(1e20) == pytest.approx(0.2920 * 10 ** (20 * 0.3271), rel=1e-12)


def test_chinchilla_frontiers_by_hand():
    G, a, b = laws.EPOCH.frontier()
    assert (round(a, 3), round(b, 3)) == (0.513, 0.487) and G == pytest.approx(0.1196, rel=2e-3)
    C = 5.76e23
    N, D = G * (C / 6) ** a, (C / 6) ** b / G
    assert N == pytest.approx(7.2e10, rel=0.02) and D == pytest.approx(1.33e12, rel=0.02)
    size, tokens = laws.LAWS["epoch"].split(C)  # the same frontier as a law in 6N
    assert size == pytest.approx(6 * N, rel=1e-9) and tokens == pytest.approx(D, rel=1e-9)
    assert round(laws.HOFFMANN.frontier()[1], 3) == 0.457
    n20 = laws.LAWS["epoch"].split(1e20)[0] / 6
    assert n20 == pytest.approx(8.5e8, rel=0.02)


def _published(n_layer, d, n_head, n_kv, ffn):
    cfg = LMArgs(d_model=d, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv, ffn_hidden=ffn)
    return flops_per_token(cfg, 102400, 4096)["M"]


@pytest.mark.parametrize(
    "name,M,lr,batch,lr_tol,batch_tol",
    [
        ("7B", _published(30, 4096, 32, 0, 11008), 4.2e-4, 2304, 0.03, 0.03),
        ("67B", _published(95, 8192, 64, 8, 22016), 3.2e-4, 4608, 0.03, 0.10),  # GQA: 8 KV heads
        ("67B as MHA", deepseek_M(95, 8192, 4096), 3.2e-4, 4608, 0.03, 0.10),
    ],
)
def test_plan_at_deepseek_budgets(name, M, lr, batch, lr_tol, batch_tol):
    p = plan(size=M, D=2e12, compare=False)
    assert p["compute"] == pytest.approx(M * 2e12)
    assert abs(p["lr"] / lr - 1) < lr_tol, (name, p["lr"])
    assert abs(p["batch_seqs"] / batch - 1) < batch_tol, (name, p["batch_seqs"])
    assert p["batch_seqs"] == round(p["batch_tokens"] / 4096)


def test_resolve_budget_combinations():
    law = laws.LAWS["deepseek"]
    assert resolve_budget(law, 1e20, 1e10, None) == (1e20, 1e10, 1e10)
    assert resolve_budget(law, 1e20, None, 4e9) == (1e20, 2.5e10, 4e9)
    assert resolve_budget(law, None, 2e12, 4e10) == (8e22, 2e12, 4e10)
    C, D, M = resolve_budget(law, None, 1.9e10, None)  # D alone: the law's C with that D_opt
    assert law.split(C)[1] == pytest.approx(1.9e10) and C == pytest.approx(1e20, rel=0.01)
    C, D, M = resolve_budget(law, None, None, 5.25e9)
    assert C == pytest.approx(1e20, rel=0.01) and M * D == pytest.approx(C)
    for bad in ((None, None, None), (1e20, 1e10, 1e10), (-1.0, None, None), (math.inf, None, None)):
        with pytest.raises(GenlabError):
            resolve_budget(law, *bad)


@pytest.mark.parametrize("steps", [1, 7, 10, 99, 1000, 211_928])
def test_breakpoints_match_genlabs_multistep_schedule(steps):
    t = TrainConfig(steps=steps, warmup_steps=0, schedule="multistep")
    (s1, f1), (s2, f2) = laws.multistep_breakpoints(steps)
    assert (f1, f2) == (0.316, 0.1)
    for s, f in ((s1, 0.316), (s2, 0.1)):
        if s < steps:
            assert lr_factor(s, t) == f and (s == 0 or lr_factor(s - 1, t) > f)


def test_plan_output_is_consistent():
    p = plan(C=1e20)
    assert abs(p["shape_size_error"]) < 0.02
    assert p["shape_flops"]["M"] * p["tokens"] == pytest.approx(1e20)
    assert p["micro_batch"] * p["grad_accum"] == p["batch_seqs_genlab"]
    assert abs(p["batch_seqs_genlab"] - p["batch_seqs"]) <= p["grad_accum"]
    assert p["steps"] == round(p["tokens"] / (p["batch_seqs_genlab"] * 4096))
    assert [s["lr_factor"] for s in p["schedule"]] == [1.0, 0.316, 0.1]
    assert p["warmup_steps"] == min(2000, max(1, p["steps"] // 10))
    assert "extrapolated" in " ".join(p["warnings"])  # 1e20 is past the lr/batch fit range
    assert set(p["compare"]) == {"deepseek", "chinchilla", "epoch"}
    assert "--set model.n_layer=" in p["train_command"]


def test_find_shape_hits_targets_and_honours_gqa():
    base = LMArgs(n_head=8, n_kv_head=2)
    cfg, fl = find_shape(4.228e10, "M", base, 102400, 4096)
    assert abs(fl["M"] / 4.228e10 - 1) < 0.01
    assert cfg.n_head // (cfg.n_kv_head or cfg.n_head) == 4 and cfg.d_model % cfg.n_head == 0
    cfg, fl = find_shape(6 * 7.2e10, "6N2", LMArgs(), 32000, 2048)
    assert abs(fl["6N2"] / (6 * 7.2e10) - 1) < 0.01


def test_cli_plan(capsys):
    assert main(["plan", "--compute", "1e21", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["compute"] == 1e21 and p["law"] == "deepseek"
    assert main(["plan", "--compute", "1e12", "--preset", "lm-tiny", "--law", "chinchilla"]) == 0
    out = capsys.readouterr().out
    assert "law          chinchilla" in out and "--preset lm-tiny" in out and "data.packing_length=128" in out
    for argv, words in (
        (["plan"], "give --compute"),
        (["plan", "--compute", "0"], "> 0"),
        (["plan", "--compute", "1e20", "--law", "kaplan"], "invalid choice"),
        (["plan", "--compute", "1e20", "--preset", "nope"], "unknown preset"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0]
