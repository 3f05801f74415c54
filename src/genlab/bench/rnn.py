"""`genlab bench rnn`: Transformer vs LSTM vs GRU at (about) equal parameter count.

Data: the embedded corpus, byte tokens (vocab 256, so bits per byte = loss / ln 2), packed rows
of L = 256 tokens, 8 rows per step; every model reads the same batches in the same order.

Models: the Transformer is fixed (d 256, 4 layers, 4 heads, SwiGLU, untied embeddings); each
RNN (2 layers) gets the hidden width, a multiple of 8, whose parameter count is closest to the
Transformer's (reported with the relative difference; within ~5%).

Training: AdamW from genlab.train.optim.build_optimizer (decay on matrices only), the same peak
lr for all, linear warmup then constant, grad-norm clip 1.0. Each model trains for the same
wall-clock budget (default 60 s). The three models run round-robin in time slices so that
load from other work on the shared CPU hits all of them alike; the clock of a model runs only
while it trains (evaluation is not counted). After every slice each model is evaluated on the
first `eval_batches` batches of the validation split (LMTask.evaluate), which gives the
loss-vs-wall-clock curve; the last point is the reported validation loss.

Threads: torch's setting, or $GENLAB_BENCH_THREADS (quick mode: 1). On a CPU shared with other
work, one thread is often faster than two (OpenMP threads wait on each other).
Note (torch 2.13, CPU): nn.GRU's backward over a PackedSequence is several times slower than
nn.LSTM's at equal size, so the GRU gets far fewer steps in the same time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from genlab.bench.common import bench_threads, machine_info, print_table
from genlab.config import RunConfig, TrainConfig
from genlab.families import build_lm
from genlab.families.lm.args import LMArgs
from genlab.families.lm.model import count_params
from genlab.families.lm.task import LMTask
from genlab.train.optim import build_optimizer, lr_factor, set_lr

DEFAULTS = dict(
    L=256,
    rows=8,
    d_model=256,
    n_layer=4,
    n_head=4,
    rnn_layers=2,
    seconds=60.0,
    slices=5,
    eval_batches=6,
    width_multiple=8,
    lr=2e-3,
    warmup=10,
    seed=0,
)
QUICK = dict(
    DEFAULTS,
    L=64,
    rows=2,
    d_model=32,
    n_layer=1,
    n_head=2,
    rnn_layers=1,
    seconds=0.6,
    slices=2,
    eval_batches=1,
    warmup=2,
    width_multiple=1,
)

ARCHS = ("transformer", "lstm", "gru")
PLOT_NAME = {False: "rnn_vs_transformer.png", True: "rnn_vs_transformer-quick.png"}  # quick never clobbers


def rnn_param_count(arch: str, width: int, n_layer: int, vocab: int) -> int:
    """Parameters of genlab's RNNLM (untied): embedding + recurrent layers + LayerNorm + head."""
    gates = 4 if arch == "lstm" else 3
    per_layer = gates * width * (width + width) + 2 * gates * width  # W_ih, W_hh, b_ih, b_hh (input = width)
    return 2 * vocab * width + n_layer * per_layer + 2 * width


def match_width(arch: str, target: int, n_layer: int, vocab: int, multiple: int = 8) -> int:
    best = min(
        range(multiple, 8192 + 1, multiple), key=lambda w: abs(rnn_param_count(arch, w, n_layer, vocab) - target)
    )
    return best


def _out_dir(out_dir) -> Path:
    return Path(out_dir or os.environ.get("GENLAB_BENCH_DIR") or "bench-results")


def _plot(curves: dict, path: Path, title: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name, pts in curves.items():
        ax.plot([p[0] for p in pts], [p[2] for p in pts], "o-", label=name, lw=1.5, ms=4)
    ax.set_xlabel("training wall-clock (s)")
    ax.set_ylabel("validation loss (nats / byte)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def run(
    steps: int | None = None,
    quick: bool = False,
    seconds: float | None = None,
    out_dir: str | Path | None = None,
    plot: bool = True,
) -> dict:
    """`steps`, if given, caps the training steps of each model (the time budget still applies)."""
    p = dict(QUICK if quick else DEFAULTS)
    if seconds is not None:
        p["seconds"] = float(seconds)
    threads_before = torch.get_num_threads()
    threads = bench_threads(quick)
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(p, steps, quick, out_dir, plot)
    finally:
        torch.set_num_threads(threads_before)


def _run(p: dict, max_steps: int | None, quick: bool, out_dir, plot: bool) -> dict:
    cfg = RunConfig()
    cfg.data.tokenizer = "byte"
    cfg.data.packing_length = p["L"]
    cfg.train.batch_rows = p["rows"]
    cfg.train.seed = p["seed"]
    task = LMTask(cfg)
    task.prepare(None)
    vocab = task.tokenizer.vocab_size
    tcfg = TrainConfig(lr=p["lr"], warmup_steps=p["warmup"], schedule="constant", grad_clip=1.0, weight_decay=0.1)

    # models at matched parameter counts
    mcfgs = {"transformer": LMArgs(arch="transformer", d_model=p["d_model"], n_layer=p["n_layer"], n_head=p["n_head"])}
    torch.manual_seed(p["seed"])
    models = {"transformer": build_lm(mcfgs["transformer"], vocab, p["L"])}
    target = count_params(models["transformer"])["total"]
    for arch in ("lstm", "gru"):
        w = match_width(arch, target, p["rnn_layers"], vocab, multiple=p["width_multiple"])
        mcfgs[arch] = LMArgs(arch=arch, d_model=w, n_layer=p["rnn_layers"])
        torch.manual_seed(p["seed"])
        models[arch] = build_lm(mcfgs[arch], vocab, p["L"])
    params = {a: count_params(m)["total"] for a, m in models.items()}
    for a in ("lstm", "gru"):
        assert params[a] == rnn_param_count(a, mcfgs[a].d_model, p["rnn_layers"], vocab), "param formula drift"
    opts = {a: build_optimizer(m, tcfg) for a, m in models.items()}
    st = {
        a: {
            "state": task.initial_state(),
            "step": 0,
            "train_s": 0.0,
            "tokens": 0,
            "eval_s": 0.0,
            "curve": [],
            "last_loss": float("nan"),
        }
        for a in models
    }

    def evaluate(a):
        t0 = time.perf_counter()
        ev = task.evaluate(models[a], max_batches=p["eval_batches"])
        s = st[a]
        s["eval_s"] += time.perf_counter() - t0
        s["curve"].append([round(s["train_s"], 3), s["step"], ev["val_loss"], ev["val_bpb"]])
        return ev

    slice_s = p["seconds"] / p["slices"]
    for k in range(1, p["slices"] + 1):
        for a in ARCHS:  # round-robin: every model gets slice k before any gets slice k + 1
            s, model, opt = st[a], models[a], opts[a]
            model.train()
            while s["train_s"] < k * slice_s and (max_steps is None or s["step"] < max_steps):
                t0 = time.perf_counter()
                lazy, s["state"] = task.next_batch(s["state"])
                batch = lazy.to("cpu")
                set_lr(opt, tcfg.lr * lr_factor(s["step"], tcfg))
                loss_sum, n = task.loss(model, batch)
                (loss_sum / max(1, n)).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                s["last_loss"] = float(loss_sum.detach()) / max(1, n)
                s["train_s"] += time.perf_counter() - t0
                s["step"] += 1
                s["tokens"] += batch.n_real
            evaluate(a)

    rows_out = []
    for a in ARCHS:
        s, m = st[a], mcfgs[a]
        last = s["curve"][-1]
        rows_out.append(
            {
                "model": a,
                "d_model": m.d_model,
                "n_layer": m.n_layer,
                "params": params[a],
                "params_rel_diff": round(params[a] / params["transformer"] - 1, 4),
                "steps": s["step"],
                "train_s": round(s["train_s"], 2),
                "tokens": s["tokens"],
                "tokens_per_s": round(s["tokens"] / max(1e-9, s["train_s"]), 1),
                "train_loss_last": round(s["last_loss"], 4),
                "val_loss": round(last[2], 4),
                "val_bpb": round(last[3], 4),
                "eval_s": round(s["eval_s"], 2),
                "curve": [[c[0], c[1], round(c[2], 4), round(c[3], 4)] for c in s["curve"]],
            }
        )

    plot_path = None
    if plot:
        plot_path = _plot(
            {r["model"]: r["curve"] for r in rows_out},
            _out_dir(out_dir) / PLOT_NAME[quick],
            f"equal wall-clock ({p['seconds']:g} s each), ~{params['transformer'] / 1e6:.2f}M params",
        )
    result = {
        "benchmark": "rnn",
        "quick": quick,
        "machine": machine_info(),
        "config": {
            "corpus": "embedded",
            "tokenizer": "byte",
            "vocab": vocab,
            "L": p["L"],
            "batch_rows": p["rows"],
            "seconds_per_model": p["seconds"],
            "slices": p["slices"],
            "max_steps": max_steps,
            "eval_batches": p["eval_batches"],
            "eval_tokens": _eval_tokens(task, p["eval_batches"]),
            "lr": tcfg.lr,
            "warmup_steps": tcfg.warmup_steps,
            "schedule": "constant after warmup",
            "optimizer": "AdamW(0.9, 0.95), wd 0.1 on matrices",
            "grad_clip": tcfg.grad_clip,
            "threads": torch.get_num_threads(),
            "dtype": "float32",
            "train_tokens": task.train_data.n_tokens,
            "val_tokens_total": task.val_data.n_tokens,
        },
        "models": rows_out,
        "curve_columns": ["train_s", "step", "val_loss", "val_bpb"],
        "plot": plot_path,
    }
    _report(result)
    return result


def _eval_tokens(task: LMTask, max_batches: int) -> int:
    n = 0
    for i, b in enumerate(task.val_data.iter_epoch()):
        if i >= max_batches:
            break
        n += b.n_targets
    return n


def _report(r: dict) -> None:
    c = r["config"]
    rows = [
        [
            m["model"],
            f"{m['d_model']} x {m['n_layer']}",
            f"{m['params']:,} ({100 * m['params_rel_diff']:+.1f}%)",
            f"{m['tokens_per_s']:,.0f}",
            str(m["steps"]),
            f"{m['train_s']:.1f}",
            f"{m['val_loss']:.4f}",
            f"{m['val_bpb']:.4f}",
        ]
        for m in r["models"]
    ]
    print_table(
        f"Transformer vs LSTM vs GRU: embedded corpus, bytes, {c['batch_rows']} rows x L={c['L']}, "
        f"{c['seconds_per_model']:g} s of training each",
        ["model", "width x layers", "params", "tokens/s", "steps", "train s", "val loss (nats)", "bits/byte"],
        rows,
    )
    if r["plot"]:
        print(f"plot: {r['plot']}")
