"""PNG figures of `genlab fit`, after DeepSeek LLM's Figures 2-4 (and a Chinchilla parity plot).

hparam_grid.png    per budget: the lr x batch grid coloured by loss, near-optimal points ringed (Fig. 2)
hparam_laws.png    eta_opt and B_opt against C: near-optimal points, fitted line, 95% band (Fig. 3)
isoflop.png        loss against M per budget with the parabola and its minimum (Fig. 4a)
allocation.png     M_opt and D_opt against C with fitted lines and 95% bands (Fig. 4b, 4c)
chinchilla.png     observed against fitted loss for the parametric form
Dashed grey lines are DeepSeek LLM's published laws, for comparison.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from genlab.scaling import laws
from genlab.scaling.fit import by_budget, near_optimal


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _no_minor_labels(ax):
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())


def _span(values, pad: float = 0.5):
    lo, hi = math.log10(min(values)), math.log10(max(values))
    return np.logspace(lo - pad, hi + pad, 50)


def _law_panel(ax, C_pts, y_pts, fit: dict, C_all, ylabel: str, ref=None, ref_label="", pts_label=""):
    xs = _span(C_all)
    ax.scatter(C_pts, y_pts, s=14, color="tab:blue", alpha=0.6, label=pts_label)
    ax.plot(xs, fit["k"] * xs ** fit["e"], color="tab:red", lw=1.6, label=f"fit: {fit['k']:.3g} C^{fit['e']:.4f}")
    if "e_ci" in fit and all(map(math.isfinite, fit["e_ci"])):
        # band: the lines through the centre of the data with the exponent's 95% interval
        c0 = math.exp(np.mean(np.log(C_all)))
        y0 = fit["k"] * c0 ** fit["e"]
        lo = np.minimum(*(y0 * (xs / c0) ** e for e in fit["e_ci"]))
        hi = np.maximum(*(y0 * (xs / c0) ** e for e in fit["e_ci"]))
        ax.fill_between(
            xs,
            lo,
            hi,
            color="tab:red",
            alpha=0.12,
            label=f"exponent 95% CI [{fit['e_ci'][0]:.3f}, {fit['e_ci'][1]:.3f}]",
        )
    if ref is not None:
        ax.plot(xs, ref(xs), "--", color="grey", lw=1, label=ref_label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _no_minor_labels(ax)
    ax.set_xlabel("compute budget C (FLOPs)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)


def write_plots(rows: list[dict], res: dict, out: Path) -> list[Path]:
    plt = _plt()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    grid = [r for r in rows if r["lr_batch"]]
    iso = [r for r in rows if r["isoflop"]]

    if grid:
        groups = by_budget(grid)
        near = {id(r) for r in near_optimal(grid)}
        fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.6), dpi=110, squeeze=False)
        for ax, (C, g) in zip(axes[0], groups.items()):
            sc = ax.scatter(
                [r["batch_tokens"] for r in g],
                [r["lr"] for r in g],
                c=[r["val_loss"] for r in g],
                cmap="viridis_r",
                s=60,
            )
            ring = [r for r in g if id(r) in near]
            ax.scatter(
                [r["batch_tokens"] for r in ring],
                [r["lr"] for r in ring],
                s=150,
                facecolors="none",
                edgecolors="tab:red",
                lw=1.5,
                label="within 0.25% of the best",
            )
            ax.set_xscale("log")
            ax.set_yscale("log")
            _no_minor_labels(ax)
            ax.set_title(f"C = {C:.3g}")
            ax.set_xlabel("batch size (tokens)")
            ax.set_ylabel("learning rate")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
            fig.colorbar(sc, ax=ax, label="validation loss")
        fig.tight_layout()
        written.append(out / "hparam_grid.png")
        fig.savefig(written[-1])
        plt.close(fig)

    h = res.get("hparams", {})
    if "lr" in h:
        pts = h["near_optimal"]
        C_all = [r["budget"] for r in grid]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
        _law_panel(
            a1,
            [p["budget"] for p in pts],
            [p["lr"] for p in pts],
            h["lr"],
            C_all,
            "optimal learning rate",
            laws.eta_opt,
            "DeepSeek LLM: 0.3118 C^-0.125",
            "near-optimal points",
        )
        _law_panel(
            a2,
            [p["budget"] for p in pts],
            [p["batch_tokens"] for p in pts],
            h["batch"],
            C_all,
            "optimal batch size (tokens)",
            laws.batch_opt_tokens,
            "DeepSeek LLM: 0.2920 C^0.3271",
            "near-optimal points",
        )
        fig.tight_layout()
        written.append(out / "hparam_laws.png")
        fig.savefig(written[-1])
        plt.close(fig)

    s = res.get("isoflop", {})
    if "M" in s:
        fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=110)
        colors = plt.cm.viridis(np.linspace(0, 0.9, len(s["budgets"])))
        groups = by_budget(iso)
        for color, C, m_opt, ok in zip(colors, s["budgets"], s["M_opt"], s["from_parabola"]):
            g = groups[C]
            lm = np.log10([r["M"] for r in g])
            loss = [r["val_loss"] for r in g]
            ax.scatter(10**lm, loss, color=color, s=22, label=f"C = {C:.3g}")
            if len(set(lm.tolist())) >= 3:
                c = np.polyfit(lm, loss, 2)
                xs = np.linspace(lm.min(), lm.max(), 60)
                ax.plot(10**xs, np.polyval(c, xs), color=color, lw=1.2)
                y_opt = np.polyval(c, math.log10(m_opt)) if ok else min(loss)
            else:
                y_opt = min(loss)
            ax.plot([m_opt], [y_opt], "*", color=color, ms=12, mec="k", mew=0.6)
        ax.set_xscale("log")
        ax.set_xlabel("model scale M (non-embedding FLOPs/token)")
        ax.set_ylabel("validation loss (nats/token)")
        ax.set_title("IsoFLOP profiles (stars: minima)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(out / "isoflop.png")
        fig.savefig(written[-1])
        plt.close(fig)

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
        ds = laws.LAWS["deepseek"]
        _law_panel(
            a1,
            s["budgets"],
            s["M_opt"],
            s["M"],
            s["budgets"],
            "optimal model scale M_opt (FLOPs/token)",
            lambda c: ds.split(c)[0],
            "DeepSeek LLM: 0.1715 C^0.5243",
            "IsoFLOP minima",
        )
        _law_panel(
            a2,
            s["budgets"],
            s["D_opt"],
            s["D"],
            s["budgets"],
            "optimal data D_opt (tokens)",
            lambda c: ds.split(c)[1],
            "DeepSeek LLM: 5.8316 C^0.4757",
            "IsoFLOP minima",
        )
        fig.tight_layout()
        written.append(out / "allocation.png")
        fig.savefig(written[-1])
        plt.close(fig)

    ch = res.get("chinchilla", {})
    if "alpha" in ch:
        pts = iso + [r for r in near_optimal(grid) if not r["isoflop"]] if grid else iso
        obs = np.array([r["val_loss"] for r in pts])
        N, D = np.array([r["N2"] for r in pts]), np.array([r["tokens"] for r in pts])
        pred = (
            ch["E"]
            + np.exp(np.log(ch["A"]) - ch["alpha"] * np.log(N))
            + np.exp(np.log(ch["B"]) - ch["beta"] * np.log(D))
        )
        fig, ax = plt.subplots(figsize=(5, 4.6), dpi=110)
        sc = ax.scatter(pred, obs, c=np.log10([r["budget"] for r in pts]), cmap="viridis", s=24)
        lo, hi = min(obs.min(), pred.min()), max(obs.max(), pred.max())
        ax.plot([lo, hi], [lo, hi], "--", color="grey", lw=1)
        ax.set_xlabel("fitted L(N, D)")
        ax.set_ylabel("observed validation loss")
        ax.set_title(f"E + A/N^{ch['alpha']:.3f} + B/D^{ch['beta']:.3f}", fontsize=9)
        fig.colorbar(sc, ax=ax, label="log10 C")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(out / "chinchilla.png")
        fig.savefig(written[-1])
        plt.close(fig)
    return written
