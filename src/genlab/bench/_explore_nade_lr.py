"""Which optimizer and learning rate for the nade-uci preset: validation NLL curves on synthetic:dna.

    python -m genlab.bench._explore_nade_lr [EPOCHS]     (default 40 epochs of 20 steps of 100 rows)

Each configuration trains the preset (NADE, 500 sigmoid units, batches of 100) from the same seed for
the same number of steps, with no early stopping, and prints the validation NLL (nats) after 5, 10,
20 and EPOCHS epochs, the best one and the wall time. The table in docs/benchmarks.md comes from here.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from genlab.bench.common import print_table

CONFIGS = [  # (label, overrides on top of nade-uci)
    ("sgd 5e-3 inverse (old preset)", ["train.optimizer=sgd", "train.lr=5e-3", "train.schedule=inverse"]),
    ("sgd 0.05 inverse", ["train.optimizer=sgd", "train.lr=0.05", "train.schedule=inverse"]),
    ("sgd 0.2 inverse", ["train.optimizer=sgd", "train.lr=0.2", "train.schedule=inverse"]),
    ("adagrad 0.01", ["train.optimizer=adagrad", "train.lr=0.01", "train.schedule=constant"]),
    ("adagrad 0.05", ["train.optimizer=adagrad", "train.lr=0.05", "train.schedule=constant"]),
    ("adam 1e-3", ["train.optimizer=adamw", "train.lr=1e-3", "train.schedule=constant"]),
    ("adam 3e-3", ["train.optimizer=adamw", "train.lr=3e-3", "train.schedule=constant"]),
    ("adam 1e-2", ["train.optimizer=adamw", "train.lr=1e-2", "train.schedule=constant"]),
]
MARKS = (5, 10, 20)


def curve(overrides: list[str], epochs: int, out: Path) -> dict:
    from genlab.config import resolve
    from genlab.train.trainer import prepare_training

    over = ["data.path=synthetic:dna", f"train.steps={20 * epochs}", "train.early_stop_patience=0", *overrides]
    cfg = resolve("nade-uci", None, over)
    run, trainer = prepare_training(cfg, out, progress=False, log=lambda *a: None)
    vals: dict[int, float] = {}
    evaluate = trainer.evaluate

    def record(*a, **k):
        m = evaluate(*a, **k)
        vals[trainer.step // 20] = m["val_loss"]
        return m

    trainer.evaluate = record
    t0 = time.perf_counter()
    trainer.fit()
    return {"vals": vals, "best": min(vals.values()), "wall_s": time.perf_counter() - t0}


def main(epochs: int = 40) -> None:
    root = Path(tempfile.mkdtemp(prefix="nade-lr-"))
    rows = []
    for i, (label, over) in enumerate(CONFIGS):
        r = curve(over, epochs, root / str(i))
        marks = [r["vals"].get(e, float("nan")) for e in (*MARKS, epochs)]
        rows.append([label, *(f"{v:.2f}" for v in marks), f"{r['best']:.2f}", f"{r['wall_s']:.0f}"])
        print(label, marks, r["best"], flush=True)
    print_table(
        f"nade-uci, synthetic DNA-like set: validation NLL (nats) by epoch of 20 steps, {epochs} epochs",
        ["optimizer, lr", *(f"epoch {e}" for e in (*MARKS, epochs)), "best", "wall s"],
        rows,
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
