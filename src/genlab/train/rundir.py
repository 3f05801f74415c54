"""The run directory: the unit users handle after training.

RUN/config.toml      resolved config          RUN/metrics.jsonl  one JSON object per logged step
RUN/tokenizer.json   (language models)        RUN/run.json       status: running | finished | interrupted
RUN/checkpoints/     see checkpoint.py        RUN/*.png          plots

A run dir is created only after the config and data have been checked, so bad input never
leaves a half-made run behind.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from genlab.config import RunConfig, from_toml_file, to_toml
from genlab.errors import GenlabError
from genlab.train import checkpoint

CONFIG = "config.toml"
METRICS = "metrics.jsonl"
STATUS = "run.json"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.checkpoint_used: Path | None = None  # set by load_run

    @classmethod
    def plan(cls, cfg: RunConfig, out: str | Path | None) -> "RunDir":
        """Choose the path of a new run; refuse one that already holds something."""
        if out is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            out = Path("runs") / f"{cfg.preset or cfg.model.arch}-{stamp}"
        p = Path(out)
        if p.exists() and (not p.is_dir() or any(p.iterdir())):
            raise GenlabError(f"{p} already exists and is not empty; pass --resume to continue it "
                              "or choose another --out")
        return cls(p)

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        p = Path(path)
        if not p.is_dir():
            raise GenlabError(f"run directory {str(p)!r} does not exist")
        if not (p / CONFIG).is_file():
            raise GenlabError(f"{p} is not a genlab run directory (no {CONFIG})")
        return cls(p)

    @classmethod
    def open_for_resume(cls, path: str | Path | None) -> "RunDir":
        if path is None:
            raise GenlabError("--resume needs --out RUN_DIR naming the run to continue")
        return cls.open(path)

    def create(self, cfg: RunConfig, task) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.path / CONFIG, to_toml(cfg))
        task.save_artifacts(self.path)
        (self.path / METRICS).write_text("")

    def config(self) -> RunConfig:
        return from_toml_file(self.path / CONFIG)

    def set_status(self, status: str, step: int) -> None:
        _atomic_write(self.path / STATUS, json.dumps({"status": status, "step": step,
                                                      "time": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")

    def status(self) -> dict:
        try:
            return json.loads((self.path / STATUS).read_text())
        except (OSError, ValueError):
            return {"status": "unknown"}

    def append_metrics(self, record: dict) -> None:
        """One JSON line; a non-finite number (the loss of a skipped non-finite step) is written as
        null, so the file stays strict JSON for any reader."""
        def finite(v):
            return None if isinstance(v, float) and not math.isfinite(v) else v

        with open(self.path / METRICS, "a") as f:
            f.write(json.dumps({k: finite(v) for k, v in record.items()}, allow_nan=False) + "\n")

    def metrics(self) -> list[dict]:
        out = []
        p = self.path / METRICS
        if p.is_file():
            for line in p.read_text().splitlines():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # a line cut short by a kill mid-write
        return out

    def truncate_metrics(self, step: int) -> None:
        """On resume: keep only records up to the checkpoint's step."""
        kept = [r for r in self.metrics() if r.get("step", 0) <= step]
        _atomic_write(self.path / METRICS, "".join(json.dumps(r) + "\n" for r in kept))


BEST_DIR = "best"  # RUN/best/checkpoints/step_N: the weights with the lowest val_loss (early stopping)


def load_run(path: str | Path, device: str = "cpu"):
    """(run dir, config, task, model) for sample / eval / export / serving: the model holds the weights
    of the best checkpoint (early stopping, RUN/best/) or else the newest intact one, in eval mode on
    `device`; run.checkpoint_used names the checkpoint."""
    run = RunDir.open(path)
    cfg = run.config()
    task = cfg.family.make_task(cfg)
    task.load_for_inference(run.path)
    model = task.build_model()
    ckpt = checkpoint.latest_valid(run.path / BEST_DIR) or checkpoint.latest_valid(run.path)
    run.checkpoint_used = ckpt
    if ckpt is None:
        raise GenlabError(f"{run.path}: no complete checkpoint (has the run saved one yet?)")
    checkpoint.load(ckpt, model, with_state=False)
    model.to(device).eval()
    return run, cfg, task, model
