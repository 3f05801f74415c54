"""genlab bench logging: what train.log=jsonl,tensorboard adds to a training step.

For each preset (lm-tiny: dense, 2 x 128; deepseek-tiny: MLA + MoE, whose records carry per-layer
expert loads, written as histograms) and each train.log_every (1: a record every step, the worst
case; 10: the default), two trainers train the same model on the same data, one with
train.log=jsonl and one with jsonl,tensorboard. A step is what the training loop does per step:
Trainer.train_step, then Trainer._log (progress, the metrics record, the loggers). The two
trainers step in turns (bench.common.interleaved_times: A B, B A, ...), so machine noise falls on
both alike; the overhead is the median over rounds of (tensorboard step / same round's jsonl step)
- 1. Evaluation and checkpoints are out of the timed steps (their flush is per eval/checkpoint).

A second, steadier figure: the TensorBoard backend's own time per record (its `log` on the
records the run wrote, repeated), over the jsonl trainer's median step time, per step
(log_every 1) and amortised over log_every steps.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from genlab.bench.common import bench_thread_scope, interleaved_times, machine_info, median, print_table

PRESETS = ("lm-tiny", "deepseek-tiny")
LOG_EVERY = (1, 10)


def _trainer(preset: str, log: str, log_every: int, out: Path, quick: bool):
    from genlab.config import resolve
    from genlab.progress import TrainProgress
    from genlab.train.loggers import Loggers
    from genlab.train.trainer import prepare_training

    sets = [
        f"train.log={log}",
        f"train.log_every={log_every}",
        "train.steps=1000000",
        "train.eval_every=1000000",
        "train.ckpt_every=1000000",
        "train.spike_window=0",
    ]
    if quick:
        sets += ["train.batch_rows=2"]
    cfg = resolve(preset, None, sets)
    _, tr = prepare_training(cfg, out, progress=False, log=lambda *a: None)
    tr.loggers = Loggers.open(tr.log_names, tr.run)
    tr._interval = [0, 0, time.perf_counter()]
    progress = TrainProgress(cfg.train.steps, 0, enabled=False)

    def step():
        tr._log(tr.train_step(), progress)

    return tr, step


def _one(preset: str, log_every: int, steps: int, quick: bool) -> dict:
    from genlab.train.loggers import TensorBoardBackend

    with tempfile.TemporaryDirectory() as d:
        plain, step_plain = _trainer(preset, "jsonl", log_every, Path(d) / "jsonl", quick)
        tb, step_tb = _trainer(preset, "jsonl,tensorboard", log_every, Path(d) / "tb", quick)
        try:
            t_plain, t_tb = interleaved_times([step_plain, step_tb], warmup=2, steps=steps)
            ratio = median([b / a for a, b in zip(t_plain, t_tb)]) - 1
            # the TensorBoard backend alone, on the records this run wrote (none: a short log_every=10 run)
            records = tb.run.metrics()
            backend = next(b for b in tb.loggers.backends if isinstance(b, TensorBoardBackend))
            per_record = None
            if records:
                reps = max(1, 2000 // len(records))
                t0 = time.perf_counter()
                for i in range(reps):
                    for r in records:
                        backend.log(r["step"] + (i + 1) * 10**6, r)
                per_record = (time.perf_counter() - t0) / (reps * len(records))
            backend.flush()
        finally:
            for tr in (plain, tb):
                tr.loggers.close()
                tr.run.release()
    step_s = median(t_plain)
    return {
        "preset": preset,
        "log_every": log_every,
        "steps": steps,
        "step_s_jsonl": step_s,
        "step_s_tensorboard": median(t_tb),
        "overhead_paired": ratio,
        "tb_log_s_per_record": per_record,
        "record_keys": len(records[-1]) if records else None,
    }


def run(steps: int | None = None, quick: bool = False) -> dict:
    steps = steps or (6 if quick else 60)
    results = []
    with bench_thread_scope(quick):
        for preset in PRESETS:
            for every in LOG_EVERY:
                r = _one(preset, every, steps, quick)
                if r["tb_log_s_per_record"] is None:  # the same preset's log_every=1 records
                    r["tb_log_s_per_record"] = results[-1]["tb_log_s_per_record"]
                    r["record_keys"] = results[-1]["record_keys"]
                r["overhead_direct"] = r["tb_log_s_per_record"] / every / r["step_s_jsonl"]
                results.append(r)
    rows = [
        [
            r["preset"],
            r["log_every"],
            f"{r['step_s_jsonl'] * 1e3:.1f}",
            f"{r['step_s_tensorboard'] * 1e3:.1f}",
            f"{r['overhead_paired']:+.2%}",
            f"{r['tb_log_s_per_record'] * 1e6:.0f}",
            f"{r['overhead_direct']:+.3%}",
        ]
        for r in results
    ]
    print_table(
        f"train.log=jsonl,tensorboard vs jsonl: {steps} interleaved steps each",
        [
            "preset",
            "log_every",
            "jsonl ms/step",
            "+tensorboard ms/step",
            "overhead (paired median)",
            "TB µs/record",
            "overhead (direct)",
        ],
        rows,
    )
    return {"machine": machine_info(), "results": results}
