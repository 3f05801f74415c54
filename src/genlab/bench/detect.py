"""`genlab bench detect`: OadTR vs the GRU baseline on the synthetic streaming benchmark.

Both presets (`oadtr-synth`, `gru-synth`) train through the real Trainer on the synthetic
benchmark's train split (genlab.families.detection.synth, fixed seed), each for its preset's number
of steps (or `--steps N` for both), from the same training seeds; a seed fixes the model's
initialisation and the order of the training frames. After training, every frame of the test
split (12 videos, about 6,000 frames) is scored offline (genlab.families.detection.stream.detect_offline, all
windows batched) and rated with frame-level mAP and mcAP (background and ambiguous frames
excluded; genlab.families.detection.metrics).

Streaming latency: the trained model's StreamingDetector gets the first frames of a test video one
at a time (after a warm-up); each push (embed one frame, ring-buffer write, one window forward,
softmax) is timed; median and 90th percentile in ms. Latency is measured with 1 torch thread: one
frame is too small a job to share.

Target: OadTR's mean mAP over the seeds > the GRU's.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from genlab.bench.common import bench_thread_scope, machine_info, print_table
from genlab.config import resolve
from genlab.families.detection.metrics import frame_map
from genlab.families.detection.stream import StreamingDetector, detect_offline
from genlab.families.lm.model import count_params
from genlab.train.trainer import prepare_training

PRESETS = ("oadtr-synth", "gru-synth")
DEFAULTS = dict(seeds=(0, 1), steps=None, latency_frames=300, latency_warmup=20, extra=())
QUICK = dict(
    DEFAULTS,
    seeds=(0,),
    steps=3,
    latency_frames=10,
    latency_warmup=2,
    extra=(
        "model.d_model=16",
        "model.n_head=2",
        "model.dec_heads=2",
        "data.history=8",
        "train.batch_rows=8",
        "train.warmup_steps=1",
    ),
)


def _latency(model, frames: np.ndarray, warmup: int) -> list[float]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        det = StreamingDetector(model)
        times = []
        for i, f in enumerate(frames):
            t0 = time.perf_counter()
            det.push(f)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        return times
    finally:
        torch.set_num_threads(threads)


def train_and_score(preset: str, seed: int, p: dict) -> dict:
    sets = [f"train.seed={seed}", "train.eval_every=1000000", "train.ckpt_every=1000000", *p["extra"]]
    if p["steps"]:
        sets.append(f"train.steps={p['steps']}")
    cfg = resolve(preset, None, sets)
    with tempfile.TemporaryDirectory() as d:
        run, trainer = prepare_training(cfg, Path(d) / "run", progress=False, log=lambda *a: None)
        t0 = time.perf_counter()
        last = trainer.fit()
        train_s = time.perf_counter() - t0
    model = trainer.model.cpu().eval()
    test = trainer.task.val_data
    t0 = time.perf_counter()
    probs = np.concatenate([detect_offline(model, test.video(v)[0]) for v in range(len(test.names))])
    offline_s = time.perf_counter() - t0
    m = frame_map(probs, test.labels, test.classes)
    frames = test.video(0)[0][: p["latency_warmup"] + p["latency_frames"]]
    lat = _latency(model, frames, p["latency_warmup"])
    return {
        "seed": seed,
        "steps": cfg.train.steps,
        "mAP": m["mAP"],
        "mcAP": m["mcAP"],
        "test_frames": m["frames"],
        "train_s": train_s,
        "final_train_loss": last.get("loss"),
        "params": count_params(model)["total"],
        "spike_skipped_steps": trainer.guard.skipped,
        "offline_frames_per_s": len(probs) / offline_s,
        "latency_ms_median": 1e3 * statistics.median(lat),
        "latency_ms_p90": 1e3 * float(np.percentile(lat, 90)),
        "per_class_AP": {k: v["AP"] for k, v in m["per_class"].items()},
    }


def run(steps: int | None = None, quick: bool = False) -> dict:
    p = dict(QUICK if quick else DEFAULTS)
    if steps is not None:
        p["steps"] = steps
    with bench_thread_scope(quick):  # $GENLAB_BENCH_THREADS, or 1 for quick
        return _run(p)


def _run(p: dict) -> dict:
    models = {}
    for preset in PRESETS:
        runs = [train_and_score(preset, s, p) for s in p["seeds"]]
        models[preset] = {
            "runs": runs,
            "params": runs[0]["params"],
            "mAP_mean": float(np.mean([r["mAP"] for r in runs])),
            "mcAP_mean": float(np.mean([r["mcAP"] for r in runs])),
            "latency_ms_median": float(np.median([r["latency_ms_median"] for r in runs])),
            "train_s_mean": float(np.mean([r["train_s"] for r in runs])),
        }
    o, g = models["oadtr-synth"], models["gru-synth"]
    res = {
        "benchmark": "detect",
        "machine": machine_info(),
        "config": p,
        "models": models,
        "targets": {"oadtr_beats_gru_map": o["mAP_mean"] > g["mAP_mean"]},
    }
    print_table(
        f"online action detection, synthetic benchmark (seeds {list(p['seeds'])})",
        [
            "preset",
            "params",
            "steps",
            "mAP",
            "mcAP",
            "per-seed mAP",
            "train s",
            "stream ms/frame (p50)",
            "offline frames/s",
        ],
        [
            [
                name,
                f"{m['params']:,}",
                m["runs"][0]["steps"],
                f"{m['mAP_mean']:.4f}",
                f"{m['mcAP_mean']:.4f}",
                " ".join(f"{r['mAP']:.3f}" for r in m["runs"]),
                f"{m['train_s_mean']:.0f}",
                f"{m['latency_ms_median']:.2f}",
                f"{np.mean([r['offline_frames_per_s'] for r in m['runs']]):,.0f}",
            ]
            for name, m in models.items()
        ],
    )
    return res
