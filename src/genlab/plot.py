"""Plots of a run's metrics.jsonl: loss (train and validation) and learning rate against step."""

from __future__ import annotations

from pathlib import Path

from genlab.errors import GenlabError


def plot_run(run) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = run.metrics()
    if not rows:
        raise GenlabError(f"{run.path}: metrics.jsonl has no records yet; nothing to plot")
    kept = [
        r for r in rows if r.get("loss") is not None and not r.get("skipped")
    ]  # a skipped loss spike would dwarf the curve
    step = [r["step"] for r in kept]
    loss = [r["loss"] for r in kept]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    lr = [(r["step"], r["lr"]) for r in rows if "lr" in r]

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(step, loss, label="train loss", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", lw=1.5, ms=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(f"{run.path.name}: loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    loss_png = run.path / "loss.png"
    fig.savefig(loss_png)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3), dpi=110)
    ax.plot(*zip(*lr), lw=1.2, color="tab:green")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{run.path.name}: learning rate")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    lr_png = run.path / "lr.png"
    fig.savefig(lr_png)
    plt.close(fig)
    return [loss_png, lr_png]
