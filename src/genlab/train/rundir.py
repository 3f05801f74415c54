"""The run directory: the unit users handle after training.

RUN/config.toml      resolved config          RUN/metrics.jsonl  one JSON object per logged step
RUN/tokenizer.json   (language models)        RUN/run.json       status: running | finished | interrupted | failed
RUN/checkpoints/     see checkpoint.py        RUN/*.png          plots
RUN/.lock            the PID of the process training into RUN (runlock.py), while it runs

A run dir is created only after the config and data have been checked, so bad input never
leaves a half-made run behind. One process at a time trains into a run: `create` (a new run) and
`open_for_resume` take RUN/.lock (rank 0 alone under torchrun); `release` gives it up.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from genlab.config import RunConfig, from_toml_file, to_toml
from genlab.errors import GenlabError
from genlab.train import checkpoint, runlock
from genlab.train.lora import merge_lora

CONFIG = "config.toml"
METRICS = "metrics.jsonl"
STATUS = "run.json"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _rank0() -> bool:
    """Rank 0 of a torchrun job, or a single process (read before the process group exists)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def _empty(p: Path) -> bool:
    """Nothing in p but possibly a lock file (another rank's, or one left by a dead process)."""
    return all(c.name == runlock.LOCK_FILE for c in p.iterdir())


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.checkpoint_used: Path | None = None  # set by load_run
        self._lock: runlock.RunLock | None = None

    @classmethod
    def plan(cls, cfg: RunConfig, out: str | Path | None) -> RunDir:
        """Choose the path of a new run; refuse one that already holds something."""
        if out is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            out = Path("runs") / f"{cfg.preset or cfg.model.arch}-{stamp}"
        p = Path(out)
        if p.exists() and (not p.is_dir() or not _empty(p)):
            cls(p).check_free()
            raise GenlabError(
                f"{p} already exists and is not empty; pass --resume to continue it or choose another --out"
            )
        return cls(p)

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        p = Path(path)
        if not p.is_dir():
            raise GenlabError(f"run directory {str(p)!r} does not exist")
        if not (p / CONFIG).is_file():
            raise GenlabError(f"{p} is not a genlab run directory (no {CONFIG})")
        return cls(p)

    @classmethod
    def open_for_resume(cls, path: str | Path | None, lock: bool = True) -> RunDir:
        """The run to continue, locked (lock=False: only opened, e.g. by the torchrun launcher)."""
        if path is None:
            raise GenlabError("--resume needs --out RUN_DIR naming the run to continue")
        run = cls.open(path)
        if lock:
            run.lock()
        return run

    def create(self, cfg: RunConfig, task) -> None:
        """Make the new run: lock it first, then write config, task artifacts and empty metrics."""
        made = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise GenlabError(f"{self.path}: cannot create the run directory ({e.strerror or e})") from None
        try:
            self.lock()
            if not _empty(self.path):  # another run started and finished here since `plan`
                raise GenlabError(
                    f"{self.path} already exists and is not empty; pass --resume to continue it or choose another --out"
                )
            _atomic_write(self.path / CONFIG, to_toml(cfg))
            task.save_artifacts(self.path)
            (self.path / METRICS).write_text("")
        except BaseException:
            self.release()
            if made and self.path.is_dir() and not any(self.path.iterdir()):
                self.path.rmdir()  # no half-made run dir
            raise

    # ------------------------------------------------------------------ ownership (RUN/.lock)
    def lock(self) -> None:
        """Take RUN/.lock for this process (rank 0 only under torchrun), or raise naming the holder."""
        if self._lock is None and _rank0():
            self._lock = runlock.RunLock.acquire(self.path)

    def release(self) -> None:
        """Give up RUN/.lock (at the end of the run, however it ends). Idempotent."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def check_free(self) -> None:
        """Raise the in-use error if another process holds this run (without taking it)."""
        pid = None if self._lock is not None else runlock.holder(self.path)
        if pid is not None:
            raise runlock.in_use_error(self.path, pid)

    def write_config(self, cfg: RunConfig) -> None:
        """config.toml, atomically (e.g. a resume with --set)."""
        _atomic_write(self.path / CONFIG, to_toml(cfg))

    def config(self) -> RunConfig:
        return from_toml_file(self.path / CONFIG)

    def set_status(self, status: str, step: int) -> None:
        _atomic_write(
            self.path / STATUS,
            json.dumps({"status": status, "step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n",
        )

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


class QuietRunDir:
    """What ranks other than 0 hold: reads pass through, writes do nothing (rank 0 writes the run)."""

    def __init__(self, run):
        self._run = run
        self.path = run.path

    def __getattr__(self, name):
        return getattr(self._run, name)

    def create(self, *a, **k):
        pass

    def set_status(self, *a, **k):
        pass

    def append_metrics(self, *a, **k):
        pass

    def truncate_metrics(self, *a, **k):
        pass


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
    merge_lora(model)  # a LoRA run (train.lora_rank) is served with its adapters folded in: a plain model
    model.to(device).eval()
    return run, cfg, task, model
