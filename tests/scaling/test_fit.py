"""Fitting recovers known exponents (within 1%) from noisy synthetic data drawn from known laws;
the batched L-BFGS agrees with torch.optim.LBFGS; bad result files are one-line errors."""

import csv
import json

import numpy as np
import pytest
import torch

from genlab.cli import main
from genlab.errors import GenlabError
from genlab.scaling.fit import (
    chinchilla_objective,
    fit_all,
    fit_chinchilla,
    fit_hparams,
    fit_isoflop,
    isoflop_minimum,
    power_law,
    read_results,
)
from genlab.scaling.laws import EPOCH, ChinchillaForm
from genlab.scaling.lbfgs import batched_lbfgs
from genlab.scaling.sweep import COLUMNS

LAW = ChinchillaForm(E=1.8, A=400.0, B=2000.0, alpha=0.34, beta=0.28)  # in M (FLOPs/token) and D
A_TRUE = LAW.beta / (LAW.alpha + LAW.beta)  # M_opt ~ C^a under C = M * D


def test_power_law_recovers_exponent():
    rng = np.random.default_rng(0)
    x = np.logspace(17, 21, 40)
    y = 0.3118 * x**-0.125 * np.exp(rng.normal(0, 0.01, x.size))
    k, e = power_law(x, y)
    assert abs(e / -0.125 - 1) < 0.01 and abs(k / 0.3118 - 1) < 0.1


def test_near_optimal_band_recovers_lr_and_batch_laws():
    # loss surface: a bowl in (log10 lr, log10 batch) around DeepSeek's law, on one fixed grid
    rng = np.random.default_rng(0)
    lr_grid, b_grid = np.linspace(-4.5, -1.5, 61), np.linspace(4, 8, 81)
    rows = []
    for C in np.logspace(17, 21, 5):
        e0, b0 = np.log10(0.3118 * C**-0.125), np.log10(0.2920 * C**0.3271)
        L0 = 2 + 1e3 / C**0.05
        for x in lr_grid:
            for y in b_grid:
                L = L0 * (1 + 0.01 * ((x - e0) ** 2 + (y - b0) ** 2)) * (1 + rng.normal(0, 2e-5))
                rows.append({"budget": C, "lr": 10**x, "batch_tokens": 10**y, "val_loss": L})
    h = fit_hparams(rows)
    assert abs(h["lr"]["e"] / -0.1250 - 1) < 0.01
    assert abs(h["batch"]["e"] / 0.3271 - 1) < 0.01


def _isoflop_rows(rng, noise=1e-4, budgets=np.logspace(17, 21, 5), width=0.45):
    rows = []
    G = (LAW.alpha * LAW.A / (LAW.beta * LAW.B)) ** (1 / (LAW.alpha + LAW.beta))
    for C in budgets:
        centre = np.log10(G * C**A_TRUE) + rng.uniform(-0.1, 0.1)  # grids not centred on the optimum
        for lm in centre + np.linspace(-width, width, 9):
            M = 10**lm
            D = C / M
            rows.append(
                {
                    "budget": C,
                    "M": M,
                    "N1": M / 6,
                    "N2": M / 6,
                    "tokens": D,
                    "lr": 1e-3,
                    "batch_tokens": 1e6,
                    "lr_batch": 0,
                    "isoflop": 1,
                    "val_loss": LAW.loss(M, D) * np.exp(rng.normal(0, noise)),
                }
            )
    return rows


def test_isoflop_recovers_allocation_exponents():
    for seed in range(3):
        s = fit_isoflop(_isoflop_rows(np.random.default_rng(seed)))
        assert all(s["from_parabola"])
        assert abs(s["M"]["e"] / A_TRUE - 1) < 0.01
        assert abs(s["D"]["e"] / (1 - A_TRUE) - 1) < 0.01
        assert s["M"]["e"] + s["D"]["e"] == pytest.approx(1.0, abs=1e-9)  # D_opt = C / M_opt


def test_isoflop_minimum_vertex_and_fallback():
    x = np.array([0.0, 1.0, 2.0, 3.0])
    assert isoflop_minimum(x, (x - 1.3) ** 2 + 2)[0] == pytest.approx(1.3)
    assert isoflop_minimum(x, -x) == (3.0, False)  # monotone: no interior minimum
    assert isoflop_minimum(x[:2], [2.0, 1.0]) == (1.0, False)


def test_chinchilla_fit_recovers_exponents():
    rng = np.random.default_rng(0)
    N, D, L = [], [], []
    for C in np.logspace(18, 22, 5):
        for n in np.logspace(7, 10, 9):
            N.append(n)
            D.append(C / (6 * n))
            L.append(EPOCH.loss(n, C / (6 * n)) * np.exp(rng.normal(0, 1e-3)))
    out, _ = fit_chinchilla(N, D, L, top_k=32)
    assert abs(out["alpha"][0] / EPOCH.alpha - 1) < 0.01
    assert abs(out["beta"][0] / EPOCH.beta - 1) < 0.01
    assert abs(out["E"][0] / EPOCH.E - 1) < 0.01


def _torch_lbfgs(fn, x0):
    """The reference: torch.optim.LBFGS on one problem."""
    p = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [p], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-16, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = fn(p[None])[0]
        loss.backward()
        return loss

    opt.step(closure)
    return p.detach()


def test_batched_lbfgs_matches_torch_lbfgs():
    # Rosenbrock from several starts: one minimum at (1, 1)
    def rosen(x):
        return (1 - x[:, 0]) ** 2 + 100 * (x[:, 1] - x[:, 0] ** 2) ** 2

    starts = torch.tensor([[-1.2, 1.0], [2.0, -1.0], [0.0, 3.0]], dtype=torch.float64)
    x, f = batched_lbfgs(rosen, starts)
    for i in range(3):
        assert torch.allclose(x[i], _torch_lbfgs(rosen, starts[i]), atol=1e-6)
    assert float(f.max()) < 1e-12
    # the Chinchilla objective, started near its optimum (where it is well conditioned)
    rng = np.random.default_rng(1)
    n, d = np.logspace(7, 10, 12), np.logspace(12, 9, 12)
    logs = [
        torch.tensor(np.log(v), dtype=torch.float64) for v in (n, d, EPOCH.loss(n, d) * np.exp(rng.normal(0, 1e-3, 12)))
    ]
    w = torch.ones(2, 12, dtype=torch.float64)
    truth = [np.log(EPOCH.A), np.log(EPOCH.B), np.log(EPOCH.E), EPOCH.alpha, EPOCH.beta]
    starts = torch.tensor([truth, [t * 1.05 for t in truth]], dtype=torch.float64)
    x, f = batched_lbfgs(lambda p: chinchilla_objective(p, *logs, w[: len(p)].expand(len(p), -1)), starts)
    obj = lambda p: chinchilla_objective(p, *logs, w[:1])  # noqa: E731
    for i in range(2):
        ref = _torch_lbfgs(obj, starts[i])
        assert float(f[i]) <= float(obj(ref[None])[0]) * (1 + 1e-9)  # at least as low as the reference
        polished = _torch_lbfgs(obj, x[i])  # and the reference cannot improve on it
        assert float(obj(polished[None])[0]) >= float(f[i]) * (1 - 1e-6)
        assert torch.allclose(x[i, 3:], polished[3:], atol=1e-4)
    assert torch.allclose(x[0], x[1], atol=1e-4)  # both starts find the same minimum


def _write_csv(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for i, r in enumerate(rows):
            full = {k: 1 for k in COLUMNS}
            full.update(point=f"p{i}", compute=r["budget"], **r)
            w.writerow({k: full[k] for k in COLUMNS})


def _grid_rows(rng, budgets=(1e17, 1e18, 1e19)):
    """lr x batch points whose optimum follows 0.01 * (C/1e17)^-0.1; the model at each budget is
    LAW's compute-optimal one, so the near-optimal points also lie on LAW."""
    rows = []
    G = (LAW.alpha * LAW.A / (LAW.beta * LAW.B)) ** (1 / (LAW.alpha + LAW.beta))
    for C in budgets:
        M = G * C**A_TRUE
        e0 = np.log10(0.01 * (C / 1e17) ** -0.1)
        for x in e0 + np.array([-0.6, -0.3, 0.0, 0.3, 0.6]) + 0.05:
            for y in (3.0, 3.3, 3.6):
                bowl = 1 + 0.02 * (x - e0) ** 2 + 0.02 * (y - 3.3) ** 2
                rows.append(
                    {
                        "budget": C,
                        "M": M,
                        "N1": M / 6,
                        "N2": M / 6,
                        "tokens": C / M,
                        "lr": 10**x,
                        "batch_tokens": 10**y,
                        "lr_batch": 1,
                        "isoflop": 0,
                        "val_loss": LAW.loss(M, C / M) * bowl * (1 + rng.normal(0, 1e-4)),
                    }
                )
    return rows


@pytest.fixture
def few_starts(monkeypatch):
    """The Chinchilla fit from 8 grid starts instead of 64: these tests check the plumbing."""
    import genlab.scaling.fit as fit

    monkeypatch.setattr(fit, "CHINCHILLA_STARTS", 8)


def test_fit_all_intervals_contain_the_truth(few_starts):
    rng = np.random.default_rng(3)
    res = fit_all(_isoflop_rows(rng, noise=3e-3) + _grid_rows(rng), n_boot=40)
    lo, hi = res["isoflop"]["M"]["e_ci"]
    assert lo < A_TRUE < hi and hi - lo < 0.2
    assert res["hparams"]["lr"]["e_ci"][0] < res["hparams"]["lr"]["e"] < res["hparams"]["lr"]["e_ci"][1]
    ch = res["chinchilla"]
    assert "alpha_ci" in ch and ch["bootstrap"] > 0
    assert abs(ch["alpha"] / LAW.alpha - 1) < 0.1 and abs(ch["beta"] / LAW.beta - 1) < 0.1  # N2 = M / 6 here


def test_cli_fit_writes_json_and_plots(tmp_path, capsys, few_starts):
    rng = np.random.default_rng(4)
    p = tmp_path / "results.csv"
    _write_csv(p, _isoflop_rows(rng, budgets=[1e17, 1e18, 1e19]) + _grid_rows(rng))
    assert main(["fit", str(p), "--bootstrap", "10"]) == 0
    out = capsys.readouterr().out
    assert "eta_opt" in out and "M_opt" in out and "alpha" in out
    res = json.loads((tmp_path / "fit" / "fit.json").read_text())
    names = sorted(x.rsplit("/", 1)[-1] for x in res["plots"])
    assert names == ["allocation.png", "chinchilla.png", "hparam_grid.png", "hparam_laws.png", "isoflop.png"]
    for n in names:
        assert (tmp_path / "fit" / n).read_bytes()[:4] == b"\x89PNG"


def test_bad_results_files(tmp_path, capsys):
    cases = {
        "missing.csv": None,
        "cols.csv": "a,b\n1,2\n",
        "empty.csv": ",".join(COLUMNS) + "\n",
        "text.csv": ",".join(COLUMNS) + "\n" + ",".join(["x"] * len(COLUMNS)) + "\n",
        "neg.csv": ",".join(COLUMNS) + "\n" + ",".join(["p"] + ["-1"] * (len(COLUMNS) - 1)) + "\n",
    }
    words = {
        "missing.csv": "does not exist",
        "cols.csv": "lacks the column",
        "empty.csv": "no result rows",
        "text.csv": "must be a number",
        "neg.csv": "positive",
    }
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(GenlabError, match=words[name]):
            read_results(path)
        assert main(["fit", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words[name] in err[0]
    assert not (tmp_path / "fit").exists()
    # one budget only: nothing can be fitted
    p = tmp_path / "one.csv"
    _write_csv(p, _grid_rows(np.random.default_rng(0), budgets=[1e17]))
    assert main(["fit", str(p)]) == 2 and "nothing to fit" in capsys.readouterr().err


def test_diverged_points_are_left_out(tmp_path):
    rows = _grid_rows(np.random.default_rng(0), budgets=[1e17, 1e18])
    rows[0]["val_loss"] = float("nan")  # genlab sweep writes nan for a point whose loss guard gave up
    p = tmp_path / "r.csv"
    _write_csv(p, rows)
    got = read_results(p)
    assert len(got) == len(rows) - 1 and all(np.isfinite(r["val_loss"]) for r in got)
