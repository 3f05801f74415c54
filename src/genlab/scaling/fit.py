"""`genlab fit`: scaling laws from a sweep's results.csv, each with bootstrap confidence intervals.

1. Hyper-parameters (DeepSeek LLM §3.1): per budget, the lr x batch points whose loss is within
   0.25% of that budget's minimum are near-optimal; eta_opt = k C^e and B_opt = k C^e are
   least-squares lines in log-log space through all near-optimal points.
2. IsoFLOP (DeepSeek LLM §3.2, Chinchilla approach 2): per budget, a parabola of loss against
   log10 M; its vertex is M_opt (the lowest point when the vertex falls outside the sampled
   sizes), D_opt = C / M_opt; then M_opt = k C^a and D_opt = k C^b.
3. Chinchilla approach 3: L(N, D) = E + A/N^alpha + B/D^beta with N = N2 (parameters that
   multiply, incl. the head), Huber (delta 1e-3) on log loss, L-BFGS from Hoffmann's grid of
   starts.
Bootstrap: points are resampled with replacement within each budget and everything is refitted;
the intervals are the 2.5 and 97.5 percentiles.
"""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import numpy as np
import torch

from genlab.errors import GenlabError
from genlab.scaling.laws import NEAR_OPTIMAL
from genlab.scaling.lbfgs import batched_lbfgs

NUMERIC = ("budget", "M", "N1", "N2", "lr", "batch_tokens", "tokens", "val_loss", "lr_batch", "isoflop")
HUBER_DELTA = 1e-3
CHINCHILLA_STARTS = 64  # L-BFGS runs from the 64 best of Hoffmann's 4500 grid points (all: ~10x slower)
CHINCHILLA_BOOT = 200  # resamples for the Chinchilla intervals (each fitted from 4 starts)


# ----------------------------------------------------------------------------------- input
def read_results(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise GenlabError(f"results file {str(p)!r} does not exist (genlab sweep writes SWEEP/results.csv)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise GenlabError(f"{p} is not UTF-8 text; expected the CSV written by genlab sweep") from None
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in NUMERIC if c not in (reader.fieldnames or [])]
    if missing:
        raise GenlabError(f"{p} lacks the column(s) {', '.join(missing)}; expected the CSV written by genlab sweep")
    rows = []
    for i, r in enumerate(reader, 2):
        try:
            row = {k: float(r[k]) for k in NUMERIC}
        except (TypeError, ValueError):
            raise GenlabError(f"{p}:{i}: every one of {', '.join(NUMERIC)} must be a number") from None
        if math.isnan(row["val_loss"]):
            continue  # a point that diverged (genlab sweep writes nan): not a measurement
        if not all(math.isfinite(v) for v in row.values()) or min(row[k] for k in NUMERIC[:8]) <= 0:
            raise GenlabError(f"{p}:{i}: budget, sizes, lr, batch, tokens and val_loss must be positive and finite")
        rows.append({**r, **row})
    if not rows:
        raise GenlabError(f"{p} has no result rows yet; run (or finish) genlab sweep first")
    return rows


# ----------------------------------------------------------------------------------- fits
def power_law(x, y) -> tuple[float, float]:
    """(k, e) of the least-squares line log y = log k + e log x."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    if len(set(lx.tolist())) < 2:
        raise ValueError("a power law needs at least two distinct x")
    e, logk = np.polyfit(lx, ly, 1)
    return float(math.exp(logk)), float(e)


def by_budget(rows: list[dict]) -> dict[float, list[dict]]:
    """Sweep result rows grouped by their FLOP budget, budgets ascending."""
    out: dict[float, list[dict]] = {}
    for r in rows:
        out.setdefault(r["budget"], []).append(r)
    return dict(sorted(out.items()))


def near_optimal(rows: list[dict], band: float = NEAR_OPTIMAL) -> list[dict]:
    """Per budget, every point within `band` (relative) of that budget's lowest loss."""
    out = []
    for group in by_budget(rows).values():
        best = min(r["val_loss"] for r in group)
        out += [r for r in group if r["val_loss"] <= best * (1 + band)]
    return out


def fit_hparams(rows: list[dict]) -> dict:
    near = near_optimal(rows)
    C = [r["budget"] for r in near]
    k_lr, e_lr = power_law(C, [r["lr"] for r in near])
    k_b, e_b = power_law(C, [r["batch_tokens"] for r in near])
    return {"lr": {"k": k_lr, "e": e_lr}, "batch": {"k": k_b, "e": e_b}, "n_near": len(near)}


def grid_edge_notes(rows: list[dict]) -> list[str]:
    """Budgets whose best lr x batch point sits on the edge of its grid: the true optimum may lie
    outside, and the fitted law then only follows where the grid was centred."""
    notes = []
    for C, group in by_budget(rows).items():
        best = min(group, key=lambda r: r["val_loss"])
        for key, name in (("lr", "learning rate"), ("batch_tokens", "batch size")):
            values = sorted({r[key] for r in group})
            if len(values) > 1 and best[key] in (values[0], values[-1]):
                notes.append(
                    f"C = {C:.3g}: the best {name} ({best[key]:.4g}) is at the edge of the grid; "
                    f"widen the sweep's factors there"
                )
    return notes


def isoflop_minimum(log_m, loss) -> tuple[float, bool]:
    """log10 M at the minimum of a parabola through (log10 M, loss); False when the raw lowest
    point had to be used (fewer than 3 sizes, a parabola opening downwards, or a vertex outside
    the sampled sizes)."""
    log_m, loss = np.asarray(log_m, float), np.asarray(loss, float)
    if len(set(log_m.tolist())) >= 3:
        c2, c1, _ = np.polyfit(log_m, loss, 2)
        if c2 > 0:
            v = -c1 / (2 * c2)
            if log_m.min() <= v <= log_m.max():
                return float(v), True
    return float(log_m[np.argmin(loss)]), False


def fit_isoflop(rows: list[dict]) -> dict:
    budgets, m_opt, parabola = [], [], []
    for C, group in by_budget(rows).items():
        v, ok = isoflop_minimum([math.log10(r["M"]) for r in group], [r["val_loss"] for r in group])
        budgets.append(C)
        m_opt.append(10**v)
        parabola.append(ok)
    d_opt = [C / m for C, m in zip(budgets, m_opt)]
    k_m, a = power_law(budgets, m_opt)
    k_d, b = power_law(budgets, d_opt)
    return {
        "budgets": budgets,
        "M_opt": m_opt,
        "D_opt": d_opt,
        "from_parabola": parabola,
        "M": {"k": k_m, "e": a},
        "D": {"k": k_d, "e": b},
    }


# ----------------------------------------------------------------------------------- Chinchilla
def _huber(r: torch.Tensor, delta: float) -> torch.Tensor:
    a = r.abs()
    return torch.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def chinchilla_objective(
    params: torch.Tensor,
    logN: torch.Tensor,
    logD: torch.Tensor,
    logL: torch.Tensor,
    weights: torch.Tensor,
    delta: float = HUBER_DELTA,
) -> torch.Tensor:
    """params (S, 5) = (a, b, e, alpha, beta), weights (S, n) -> (S,) summed Huber loss of
    LSE(a - alpha log N, b - beta log D, e) - log L  (A = e^a, B = e^b, E = e^e)."""
    a, b, e, alpha, beta = (p[:, None] for p in params.unbind(1))  # each (S, 1)
    t1, t2 = a - alpha * logN, b - beta * logD  # (S, n)
    t3 = e.expand_as(t1)
    m = torch.maximum(torch.maximum(t1, t2), t3)  # a 3-term logsumexp by hand: torch's reduction
    lse = m + ((t1 - m).exp() + (t2 - m).exp() + (t3 - m).exp()).log()  # over a dim of 3 is ~10x slower
    return (weights * _huber(lse - logL, delta)).sum(1)


def hoffmann_grid() -> torch.Tensor:
    """alpha, beta in {0, .5, .., 2}; e in {-1, -.5, .., 1}; a, b in {0, 5, .., 25}: (4500, 5)."""
    ab = [0.0, 0.5, 1.0, 1.5, 2.0]
    es = [-1.0, -0.5, 0.0, 0.5, 1.0]
    ls = [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]
    return torch.tensor(
        [(a, b, e, al, be) for a, b, e, al, be in itertools.product(ls, ls, es, ab, ab)], dtype=torch.float64
    )


def _logs(*cols) -> list[torch.Tensor]:
    return [torch.tensor(np.log(np.asarray(v, float)), dtype=torch.float64) for v in cols]


def best_starts(starts: torch.Tensor, logN, logD, logL, k: int) -> torch.Tensor:
    """The k starts with the lowest objective on the (unweighted) data."""
    with torch.no_grad():
        f0 = chinchilla_objective(starts, logN, logD, logL, torch.ones(len(starts), len(logN), dtype=torch.float64))
    return starts[torch.argsort(f0)[:k]]


def fit_chinchilla(
    N, D, L, weights: np.ndarray | None = None, starts: torch.Tensor | None = None, top_k: int = 0
) -> tuple[dict, torch.Tensor]:
    """Best fit over `starts` (default: Hoffmann's grid). `weights` (R, n) fits R resamples at
    once (each row = how often each point was drawn). top_k > 0 keeps only the k best starts
    by their initial objective. Returns ({E, A, B, alpha, beta} per resample, raw params (R, 5))."""
    logN, logD, logL = _logs(N, D, L)
    n = len(logN)
    W = torch.ones(1, n, dtype=torch.float64) if weights is None else torch.tensor(weights, dtype=torch.float64)
    R = W.shape[0]
    starts = hoffmann_grid() if starts is None else starts
    if top_k:
        starts = best_starts(starts, logN, logD, logL, top_k)
    K = len(starts)
    x0 = starts.repeat(R, 1)  # (R*K, 5): every start for every resample
    Wx = W.repeat_interleave(K, dim=0)  # (R*K, n)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors this small only pay for thread synchronisation
    try:
        x, f = batched_lbfgs(lambda p: chinchilla_objective(p, logN, logD, logL, Wx), x0)
    finally:
        torch.set_num_threads(threads)
    f = torch.where(torch.isfinite(f), f, torch.full_like(f, float("inf")))
    best = x.view(R, K, 5)[torch.arange(R), f.view(R, K).argmin(1)]  # (R, 5)
    a, b, e, alpha, beta = best.unbind(1)
    out = {
        "A": a.exp().numpy(),
        "B": b.exp().numpy(),
        "E": e.exp().numpy(),
        "alpha": alpha.numpy(),
        "beta": beta.numpy(),
    }
    return out, best


# ----------------------------------------------------------------------------------- bootstrap
def _ci(values) -> list[float]:
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    if len(v) == 0:
        return [float("nan"), float("nan")]
    return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]


def _resample(rows: list[dict], rng: np.random.Generator) -> list[dict]:
    out = []
    for group in by_budget(rows).values():
        out += [group[i] for i in rng.integers(0, len(group), len(group))]
    return out


def _boot(fn, rows, n_boot, rng) -> tuple[list, int]:
    """fn on n_boot resamples; resamples it cannot fit (e.g. too few distinct sizes) are skipped."""
    out, skipped = [], 0
    for _ in range(n_boot):
        try:
            out.append(fn(_resample(rows, rng)))
        except (ValueError, np.linalg.LinAlgError):
            skipped += 1
    return out, skipped


def fit_all(rows: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """Every fit the rows allow; a section the rows cannot support says why."""
    rng = np.random.default_rng(seed)
    res: dict = {"n_rows": len(rows), "bootstrap": n_boot}
    grid = [r for r in rows if r["lr_batch"]]
    iso = [r for r in rows if r["isoflop"]]
    if len({r["budget"] for r in grid}) >= 2:
        h = fit_hparams(grid)
        boots, skipped = _boot(fit_hparams, grid, n_boot, rng)
        for key in ("lr", "batch"):
            h[key]["k_ci"] = _ci([b[key]["k"] for b in boots])
            h[key]["e_ci"] = _ci([b[key]["e"] for b in boots])
        h["near_optimal"] = [
            {"budget": r["budget"], "lr": r["lr"], "batch_tokens": r["batch_tokens"], "val_loss": r["val_loss"]}
            for r in near_optimal(grid)
        ]
        h["boot_skipped"] = skipped
        res["hparams"] = h
    else:
        res["hparams"] = {"skipped": "needs lr x batch points at two or more budgets"}
    iso_budgets = by_budget(iso)
    if len(iso_budgets) >= 2 and all(len({r["M"] for r in g}) >= 2 for g in iso_budgets.values()):
        s = fit_isoflop(iso)
        boots, skipped = _boot(fit_isoflop, iso, n_boot, rng)
        for key in ("M", "D"):
            s[key]["k_ci"] = _ci([b[key]["k"] for b in boots])
            s[key]["e_ci"] = _ci([b[key]["e"] for b in boots])
        s["boot_skipped"] = skipped
        res["isoflop"] = s
    else:
        res["isoflop"] = {"skipped": "needs IsoFLOP points of two or more sizes at two or more budgets"}
    pts = iso + [r for r in near_optimal(grid) if not r["isoflop"]] if grid else iso
    if len({r["N2"] for r in pts}) >= 3 and len({r["tokens"] for r in pts}) >= 3 and len(pts) >= 6:
        res["chinchilla"] = _chinchilla_section(pts, n_boot, rng)
    else:
        res["chinchilla"] = {"skipped": "needs six or more points with three or more sizes and token counts"}
    res["notes"] = grid_edge_notes(grid)
    ch = res["chinchilla"]
    if "alpha" in ch and not (0 < ch["alpha"] < 3 and 0 < ch["beta"] < 3):
        res["notes"].append(
            f"the Chinchilla fit is degenerate (alpha {ch['alpha']:.3g}, beta {ch['beta']:.3g}); "
            "the points do not span enough sizes and token counts to pin it down"
        )
    if all("skipped" in res[k] for k in ("hparams", "isoflop", "chinchilla")):
        raise GenlabError(
            "nothing to fit: the results need lr x batch or IsoFLOP points at two or more budgets "
            "(see genlab sweep --help)"
        )
    return res


def _chinchilla_section(pts: list[dict], n_boot: int, rng: np.random.Generator) -> dict:
    N, D, L = ([r[k] for r in pts] for k in ("N2", "tokens", "val_loss"))
    full, best = fit_chinchilla(N, D, L, top_k=CHINCHILLA_STARTS)
    ch = {k: float(v[0]) for k, v in full.items()}
    s = ch["alpha"] + ch["beta"]
    ch["a"], ch["b"] = ch["beta"] / s, ch["alpha"] / s  # N_opt ~ C^a, D_opt ~ C^b under C = 6ND
    n_boot = min(n_boot, CHINCHILLA_BOOT)
    ch["bootstrap"] = n_boot
    if n_boot:
        # resample within budgets, as counts per point: every resample is fitted in one batch
        index = {id(r): i for i, r in enumerate(pts)}
        W = np.zeros((n_boot, len(pts)))
        for j in range(n_boot):
            for group in by_budget(pts).values():
                for i in rng.integers(0, len(group), len(group)):
                    W[j, index[id(group[i])]] += 1
        # starts: the full-data optimum and the 3 best grid points (by the full data's objective)
        starts = torch.cat([best, best_starts(hoffmann_grid(), *_logs(N, D, L), 3)])
        boot, _ = fit_chinchilla(N, D, L, weights=W, starts=starts)
        for k in ("E", "A", "B", "alpha", "beta"):
            ch[f"{k}_ci"] = _ci(boot[k])
        ch["a_ci"] = _ci(boot["beta"] / (boot["alpha"] + boot["beta"]))
        ch["b_ci"] = _ci(boot["alpha"] / (boot["alpha"] + boot["beta"]))
    ch["n_points"] = len(pts)
    ch["size"] = "N2"
    return ch


def _fmt_law(name: str, fit: dict) -> str:
    ci = fit.get("e_ci")
    ci_s = f"  exponent 95% CI [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""
    return f"{name:<9} = {fit['k']:.4g} * C^{fit['e']:.4f}{ci_s}"


def format_fit(res: dict) -> str:
    lines = [f"{res['n_rows']} points, {res['bootstrap']} bootstrap resamples"]
    h, s, ch = res["hparams"], res["isoflop"], res["chinchilla"]
    if "skipped" in h:
        lines.append(f"lr/batch laws: skipped ({h['skipped']})")
    else:
        lines += [
            f"near-optimal (within 0.25% of each budget's best): {h['n_near']} points",
            _fmt_law("eta_opt", h["lr"]),
            _fmt_law("B_opt", h["batch"]) + "  (tokens)",
            "  DeepSeek LLM: eta_opt = 0.3118 * C^-0.1250, B_opt = 0.2920 * C^0.3271",
        ]
    if "skipped" in s:
        lines.append(f"IsoFLOP laws: skipped ({s['skipped']})")
    else:
        for C, m, d, ok in zip(s["budgets"], s["M_opt"], s["D_opt"], s["from_parabola"]):
            how = "parabola vertex" if ok else "lowest point (no interior parabola minimum)"
            lines.append(f"  C = {C:.3g}: M_opt {m:.4g}, D_opt {d:.4g}  ({how})")
        lines += [
            _fmt_law("M_opt", s["M"]),
            _fmt_law("D_opt", s["D"]),
            "  DeepSeek LLM: M_opt = 0.1715 * C^0.5243, D_opt = 5.8316 * C^0.4757",
        ]
    if "skipped" in ch:
        lines.append(f"Chinchilla form: skipped ({ch['skipped']})")
    else:

        def ci(k):
            return f" [{ch[k + '_ci'][0]:.4g}, {ch[k + '_ci'][1]:.4g}]" if k + "_ci" in ch else ""

        lines += [
            f"L(N, D) = E + A/N^alpha + B/D^beta over {ch['n_points']} points (N = N2):",
            f"  E {ch['E']:.4g}{ci('E')}, A {ch['A']:.4g}{ci('A')}, B {ch['B']:.4g}{ci('B')}",
            f"  alpha {ch['alpha']:.4f}{ci('alpha')}, beta {ch['beta']:.4f}{ci('beta')}",
            f"  frontier (C = 6ND): N_opt ~ C^{ch['a']:.4f}{ci('a')}, D_opt ~ C^{ch['b']:.4f}{ci('b')}",
        ]
    lines += [f"note: {n}" for n in res.get("notes", [])]
    return "\n".join(lines)
