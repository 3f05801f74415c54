"""`genlab bench nade`: NADE against MADE, training rows/s at the same hidden size on 180-bit vectors.

Data: `synthetic:dna` (families/density/data.py: 2000 training rows of 180 bits shaped like the UCI
DNA set, about a quarter of them ones). Models: the presets `nade-uci` (NADE, 500 sigmoid units) and
`made-uci` (MADE, 1 x 500 ReLU, direct connections, 32 masks), each with its own optimizer, batches
of 100 rows, built by the shared trainer. Both trainers' `train_step` (next batch, forward, backward,
optimizer step: what training does) are timed in turns, A B B A ..., so machine noise falls on both
alike; reported: each one's median rows/s and the median over rounds of the per-round ratio
NADE rows/s / MADE rows/s (the target is >= 0.5). `model.d_model` is the hidden size of both
(GENLAB_BENCH_NADE_HIDDEN, default 500). NADE runs its fused CPU kernel (genlab.ops.nade_cpu); a third
trainer, NADE with the segment form (PyTorch ops), takes its turns too, for the kernel's own speed-up.

With GENLAB_BENCH_NADE_FIT=1 it also trains both presets on the same data to early stopping (as a
user would: evaluations and checkpoints included) and reports the wall time, the steps, the best
step and the test NLL of the best weights; the target for nade-uci is under 10 minutes on 2 cores.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from genlab.bench.common import bench_thread_scope, interleaved_times, machine_info, median, print_table
from genlab.ops import cpu_ext

DATA = "synthetic:dna"
PRESETS = (("nade", "nade-uci"), ("made", "made-uci"))
# timed too, for reference: NADE with the segment form (PyTorch ops) instead of the fused CPU kernel
SEGMENT = ("nade (segment form)", "nade-uci")
QUICK = ["model.d_model=32", "model.n_masks=2"]


def _trainers(root: Path, hidden: int, quick: bool):
    from genlab.config import resolve
    from genlab.train.trainer import prepare_training

    out = []
    for name, preset in PRESETS + (SEGMENT,):
        over = [f"data.path={DATA}", f"model.d_model={hidden}", "train.threads=0"] + (QUICK if quick else [])
        cfg = resolve(preset, None, over)
        run_dir = root / ("nade-segment" if name == SEGMENT[0] else name)
        run, trainer = prepare_training(cfg, run_dir, progress=False, log=lambda *a: None)
        for m in trainer.model.modules():
            if hasattr(m, "use_fused_kernel"):
                m.use_fused_kernel = name != SEGMENT[0]
        out.append((name, preset, trainer))
    return out


def throughput(root: Path, hidden: int, steps: int, quick: bool) -> dict:
    trainers = _trainers(root, hidden, quick)
    try:
        batch = trainers[0][2].cfg.train.batch_rows
        times = interleaved_times([t.train_step for _, _, t in trainers], warmup=3, steps=steps)
    finally:
        for _, _, t in trainers:
            t.run.release()
    rows = {name: batch / median(ts) for (name, _, _), ts in zip(trainers, times)}
    ratios = [m / n for n, m in zip(*times[:2])]  # per round: NADE rows/s over MADE rows/s = MADE time / NADE time
    seg = [s / n for n, s in zip(times[0], times[2])]  # per round: segment-form time / fused time
    return {
        "hidden": hidden,
        "batch_rows": batch,
        "steps": steps,
        "rows_per_s": rows,
        "ms_per_step": {name: 1e3 * median(ts) for (name, _, _), ts in zip(trainers, times)},
        "nade_over_made": median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        "fused_over_segment": median(seg),
        "fused_kernel": cpu_ext.error() or "built",
        "params": {name: sum(p.numel() for p in t.model.parameters()) for name, _, t in trainers},
    }


def fit_to_early_stop(root: Path, quick: bool) -> list[dict]:
    from genlab.bench.density import train_and_score

    extra = [f"data.path={DATA}"] + (QUICK + ["train.steps=6", "train.eval_every=2"] if quick else [])
    return [train_and_score(name, preset, extra, root / f"fit-{name}") for name, preset in PRESETS]


def run(steps: int | None = None, quick: bool = False, out_dir: str | Path | None = None) -> dict:
    root = Path(out_dir or os.environ.get("GENLAB_BENCH_DIR") or "bench-results")
    root.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix=f"nade-{time.strftime('%Y%m%d-%H%M%S')}-", dir=root))
    hidden = int(os.environ.get("GENLAB_BENCH_NADE_HIDDEN", "0") or 0) or (32 if quick else 500)
    steps = steps or (3 if quick else 60)
    with bench_thread_scope(quick):
        threads = torch.get_num_threads()
        tp = throughput(base, hidden, steps, quick)
        fits = fit_to_early_stop(base, quick) if os.environ.get("GENLAB_BENCH_NADE_FIT") == "1" else []
        torch.set_num_threads(threads)  # the presets' train.threads would otherwise stay
    print_table(
        f"NADE vs MADE training throughput, hidden {hidden}, 180-bit rows ({DATA}), {threads} threads",
        ["model", "params", "ms / step", "rows/s"],
        [
            [n, f"{tp['params'][n]:,}", f"{tp['ms_per_step'][n]:.2f}", f"{tp['rows_per_s'][n]:,.0f}"]
            for n, _ in PRESETS + (SEGMENT,)
        ]
        + [
            ["NADE / MADE (median of rounds)", "", "", f"{tp['nade_over_made']:.3f}"],
            ["NADE fused kernel / segment form", "", "", f"{tp['fused_over_segment']:.2f}"],
        ],
    )
    if fits:
        print_table(
            f"presets trained to early stopping on {DATA}",
            ["preset", "steps", "best step", "val NLL", "test NLL", "train s"],
            [
                [
                    f["preset"],
                    f["steps"],
                    f["best_step"],
                    f"{f['val_nll']:.3f}",
                    f"{f['test_nll']:.3f}",
                    f"{f['train_s']:.0f}",
                ]
                for f in fits
            ],
        )
    return {
        "benchmark": "nade",
        "machine": machine_info(),
        "threads": threads,
        "quick": quick,
        "data": DATA,
        "throughput": tp,
        "fits": fits,
        "runs_dir": str(base),
    }
