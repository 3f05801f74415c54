"""`genlab bench density`: test NLL of every density model, trained by the shared trainer.

Part 1, binarized digits (always): scikit-learn's 8x8 digits thresholded at >= 8, fixed split
1297 / 200 / 300. Each model trains from its preset (batches of 100, early stopping after 20
epochs without a lower validation NLL, one CPU thread) and is scored on the test split with the
best weights. Reported: test NLL in nats and bits per dimension, training wall-clock (evaluations and
checkpoints included), examples/s of the training steps alone, and the margins by which NADE and
MADE beat the mixture of Bernoullis (K = 10).

Part 2, the UCI binary benchmarks (only when GENLAB_UCI_DIR names a directory holding MADE-format
files adult.npz, connect4.npz, dna.npz, mushrooms.npz, nips.npz, ocr_letters.npz, rcv1.npz, web.npz):
presets nade-uci and made-uci on each file, against the NADE and MADE test NLLs as published in the
MADE paper's UCI table. A run "reaches" the paper when its test NLL is at most 1% above it.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from genlab.bench.common import machine_info, print_table

DIGITS_MODELS = [  # (name, preset, extra overrides)
    ("bernoulli", "fvsbn-digits", ["model.arch=bernoulli", "train.lr=0.05"]),
    ("mixture K=10", "fvsbn-digits", ["model.arch=mixture", "model.n_components=10", "train.lr=0.05"]),
    ("mixture K=30", "fvsbn-digits", ["model.arch=mixture", "model.n_components=30", "train.lr=0.03"]),
    ("fvsbn", "fvsbn-digits", []),
    ("nade", "nade-digits", []),
    ("made 1x256, 1 mask", "made-digits", ["model.n_layer=1", "model.n_masks=1", "model.direct_connections=false"]),
    ("made", "made-digits", []),
    ("transformer", "transformer-digits", []),
]
MIXTURE, WINNERS = "mixture K=10", ("nade", "made")
QUICK_OVERRIDES = [
    "train.steps=4",
    "train.eval_every=2",
    "train.log_every=2",
    "model.d_model=16",
    "model.n_masks=2",
    "train.early_stop_patience=1",
]

# Test NLL (nats) on the UCI sets as tabulated in the MADE paper (Germain et al. 2015, Table 2; its NADE row
# is Larochelle & Murray 2011). MADE is the better of the table's two MADE columns ("MADE", one mask, and
# "MADE mask sampling"). These are recalled values: two independent recollections agree on every cell, and a
# benchmark listing of the NADE papers confirms NADE's Connect4 11.99 and OCR-letters 27.22; the PDF itself
# could not be read from this machine. Check against arXiv 1502.03509 before publishing a comparison.
PAPER_UCI = {
    "adult": {"nade": 13.19, "made": 13.12},
    "connect4": {"nade": 11.99, "made": 11.90},
    "dna": {"nade": 84.81, "made": 79.66},
    "mushrooms": {"nade": 9.81, "made": 9.68},
    "nips": {"nade": 273.08, "made": 277.28},
    "ocr_letters": {"nade": 27.22, "made": 28.34},
    "rcv1": {"nade": 46.66, "made": 46.74},
    "web": {"nade": 28.39, "made": 28.25},
}
# Where the MADE authors published the command of a best run (github.com/mgermain/MADE, README), the
# bench follows it on top of the made-uci preset (which is their DNA run: 1 x 500 ReLU, direct
# connections, Adadelta rho 0.95 eps 1e-5, a new mask per update, batch 100, patience 30).
UCI_OVERRIDES = {
    "adult": {
        "made": [
            "model.n_masks=1",
            "model.hidden_activation=tanh",
            "train.optimizer=sgd",
            "train.lr=0.01",
            "train.schedule=constant",
        ]
    },
}
PAPER_TOLERANCE = 0.01


def train_and_score(name: str, preset: str, overrides: list[str], out: Path) -> dict:
    """Train one model through the shared trainer; score its best weights on the test split."""
    from genlab.config import resolve
    from genlab.train.rundir import load_run
    from genlab.train.trainer import prepare_training

    cfg = resolve(preset, None, overrides)
    run, trainer = prepare_training(cfg, out, progress=False, log=lambda *a: None)
    step_time = [0.0]
    step = trainer.train_step

    def timed_step():
        t0 = time.perf_counter()
        m = step()
        step_time[0] += time.perf_counter() - t0
        return m

    trainer.train_step = timed_step
    t0 = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - t0
    r, _, task, model = load_run(str(run.path))
    rep = task.eval_report(r, model, None)
    return {
        "model": name,
        "preset": preset,
        "overrides": overrides,
        "run": str(run.path),
        "params": sum(p.numel() for p in model.parameters()),
        "steps": trainer.step,
        "best_step": trainer.best["step"],
        "val_nll": trainer.best["val_loss"],
        "test_nll": rep["test_nll_nats"],
        "test_bpd": rep["test_bits_per_dim"],
        "train_s": wall,
        "examples_per_s": trainer.tokens_seen / max(step_time[0], 1e-9),
    }


def run(steps: int | None = None, quick: bool = False, out_dir: str | Path | None = None) -> dict:
    root = Path(out_dir or os.environ.get("GENLAB_BENCH_DIR") or "bench-results")
    root.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix=f"density-{time.strftime('%Y%m%d-%H%M%S')}-", dir=root))
    extra = (QUICK_OVERRIDES if quick else []) + ([f"train.steps={steps}"] if steps else [])
    threads = torch.get_num_threads()  # the presets' train.threads = 1 is process-wide; restored below
    try:
        models = [
            train_and_score(name, preset, overrides + extra, base / f"{i}-{preset}")
            for i, (name, preset, overrides) in enumerate(DIGITS_MODELS)
        ]
        uci = run_uci(base, extra)
    finally:
        torch.set_num_threads(threads)
    by_name = {m["model"]: m for m in models}
    margins = {f"{w}_minus_mixture_nats": by_name[MIXTURE]["test_nll"] - by_name[w]["test_nll"] for w in WINNERS}
    print_table(
        "density models on binarized digits (test split, best weights)",
        ["model", "params", "steps", "test NLL (nats)", "bits/dim", "train s", "examples/s"],
        [
            [
                m["model"],
                f"{m['params']:,}",
                m["steps"],
                f"{m['test_nll']:.3f}",
                f"{m['test_bpd']:.4f}",
                f"{m['train_s']:.1f}",
                f"{m['examples_per_s']:,.0f}",
            ]
            for m in models
        ],
    )
    result = {
        "benchmark": "density",
        "machine": machine_info(),
        "quick": quick,
        "runs_dir": str(base),
        "dataset": "digits (scikit-learn, binarized >= 8), 1297 / 200 / 300",
        "models": models,
        "margins": margins,
        "uci": uci,
    }
    return result


def run_uci(base: Path, extra: list[str]) -> list[dict]:
    uci_dir = os.environ.get("GENLAB_UCI_DIR")
    if not uci_dir:
        return []
    rows = []
    for name, paper in PAPER_UCI.items():
        path = Path(uci_dir) / f"{name}.npz"
        if not path.is_file():
            continue
        for model in ("nade", "made"):
            over = UCI_OVERRIDES.get(name, {}).get(model, [])
            r = train_and_score(
                f"{model} {name}", f"{model}-uci", [f"data.path={path}", *over, *extra], base / f"uci-{name}-{model}"
            )
            r.update(
                dataset=name, paper_nll=paper[model], reached=r["test_nll"] <= paper[model] * (1 + PAPER_TOLERANCE)
            )
            rows.append(r)
    if rows:
        print_table(
            "UCI binary benchmarks (MADE format) against the papers",
            ["run", "test NLL", "paper", "reached", "steps", "train s"],
            [
                [
                    r["model"],
                    f"{r['test_nll']:.2f}",
                    f"{r['paper_nll']:.2f}",
                    r["reached"],
                    r["steps"],
                    f"{r['train_s']:.0f}",
                ]
                for r in rows
            ],
        )
    return rows
