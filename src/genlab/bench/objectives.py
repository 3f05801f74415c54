"""`genlab bench objectives`: one Transformer trained three ways on the embedded corpus (issue 5).

The presets lm-small (causal next token), mlm-small (BERT masked tokens) and infill-small (any-order),
identical but for `train.objective`, train for the same number of steps through the shared trainer.
Reported per objective: validation loss in its own sense (causal: per token; masked: per masked
token; any-order: per token, the estimate of the NLL averaged over orderings, an upper bound on the
model's NLL), bits per byte of what the loss covers, time, and a greedy infilling of a fixed
snippet by the two bidirectional models. Causal and any-order losses are on the same scale (nats per
token of the text); the masked loss is not (it predicts 15% of tokens from the other 85%).
"""

from __future__ import annotations

import tempfile
import time

from genlab.bench.common import bench_thread_scope, machine_info, print_table

PRESETS = {"causal": "lm-small", "masked": "mlm-small", "any-order": "infill-small"}
SNIPPET = 'def <mask:2>(self, key):\n    """Return the <mask:2> for key."""\n    return self.<mask:3>[key]\n'
DEFAULTS = dict(steps=400, extra=[])
QUICK = dict(
    steps=4,
    extra=[
        "data.tokenizer=byte",
        "data.packing_length=64",
        "model.d_model=32",
        "model.n_layer=1",
        "model.n_head=2",
        "model.n_kv_head=1",
        "train.batch_rows=2",
        "train.eval_every=2",
        "train.eval_batches=1",
        "train.ckpt_every=4",
        "train.warmup_steps=1",
    ],
)


def train_one(objective: str, p: dict, base: str) -> dict:
    from genlab.config import resolve
    from genlab.generate import SamplingSettings, infill, parse_infill
    from genlab.train.rundir import load_run
    from genlab.train.trainer import prepare_training

    cfg = resolve(PRESETS[objective], None, [f"train.steps={p['steps']}", *p["extra"]])
    run, trainer = prepare_training(cfg, f"{base}/{objective}", progress=False, log=lambda *a: None)
    t0 = time.perf_counter()
    last = trainer.fit()
    wall = time.perf_counter() - t0
    res = {
        "objective": objective,
        "preset": PRESETS[objective],
        "steps": last["step"],
        "train_s": wall,
        "val_loss": last.get("val_loss"),
        "val_bpb": last.get("val_bpb"),
        "tokens_per_s": last.get("tokens_per_s"),
    }
    if objective != "causal":
        _, _, task, model = load_run(str(run.path))
        ids, _ = parse_infill(SNIPPET, task.tokenizer, task.mask_id, 8)
        if task.tokenizer.bos_id is not None:
            ids = [task.tokenizer.bos_id] + ids
        res["infill"] = task.tokenizer.decode(infill(model, ids, task.mask_id, SamplingSettings(temperature=0)))
    return res


def run(steps: int | None = None, quick: bool = False) -> dict:
    p = dict(QUICK if quick else DEFAULTS)
    if steps is not None:
        p["steps"] = steps
    with bench_thread_scope(quick), tempfile.TemporaryDirectory() as d:  # $GENLAB_BENCH_THREADS, or 1 for quick
        rows = {obj: train_one(obj, p, d) for obj in PRESETS}
    print_table(
        f"objectives on the embedded corpus, {p['steps']} steps each",
        ["objective", "preset", "val loss", "covers", "bits/byte", "train s", "tokens/s"],
        [
            [
                o,
                r["preset"],
                f"{r['val_loss']:.4f}",
                "masked tokens" if o == "masked" else "every token",
                f"{r['val_bpb']:.3f}",
                f"{r['train_s']:.0f}",
                f"{r['tokens_per_s']:.0f}",
            ]
            for o, r in rows.items()
        ],
    )
    for o in ("masked", "any-order"):
        print(f"--- greedy infill, {o} ---\n{rows[o]['infill']}")
    return {"benchmark": "objectives", "machine": machine_info(), "config": p, "objectives": rows}
