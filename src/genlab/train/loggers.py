"""Live logging: one interface the trainer calls, one backend per name in `train.log`.

    jsonl        RUN/metrics.jsonl through RunDir.append_metrics (always on; the file is unchanged)
    tensorboard  RUN/tensorboard/ (torch.utils.tensorboard.SummaryWriter; needs the tensorboard package)
    wandb        Weights & Biases, offline unless WANDB_MODE says otherwise, files in RUN/wandb/

The trainer hands over the metrics.jsonl record of each log/eval step (`log`) and, at eval steps,
a few sample images (`log_images`). Backends other than jsonl turn the record into: a scalar per
number (the tag is the metrics.jsonl key: loss, lr, grad_norm, tokens_per_s, mfu, val_loss, maxvio/...),
a histogram per list of numbers (MoE `load/<layer>`: bucket i holds expert i's tokens), nothing for
strings. Only rank 0 logs (other ranks get no-op backends). Each backend is flushed at every
evaluation and checkpoint and closed when training ends, however it ends.

Resume: training restarts from the checkpoint's step, so records after it are written again.
metrics.jsonl is cut back to the checkpoint (RunDir.truncate_metrics); TensorBoard gets a new event
file whose writer carries purge_step = checkpoint step + 1, which makes TensorBoard's reader drop the
older files' events at and after that step (no duplicate steps); W&B keeps one run id per run dir
(RUN/wandb/genlab-run-id) and resumes it; W&B does not rewind (it takes only increasing steps per
run), so it may keep the first pass of rewound steps.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np

from genlab.errors import GenlabError
from genlab.train import distributed

TB_DIR, WANDB_DIR = "tensorboard", "wandb"
_DIRS = {"tensorboard": TB_DIR, "wandb": WANDB_DIR}


def tile(images: np.ndarray, pad: int = 1, min_cell: int = 32) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) uint8 -> one near-square grid image (H', W'[, C]) uint8 with gray
    `pad`-pixel gutters, each pixel repeated so that a cell is at least `min_cell` pixels wide."""
    images = np.asarray(images, dtype=np.uint8)
    n, h, w = images.shape[:3]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, *images.shape[3:]), 128, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = img
    k = max(1, math.ceil(min_cell / max(h, w)))
    return grid.repeat(k, axis=0).repeat(k, axis=1)


def _split(record: dict) -> tuple[dict[str, float], dict[str, list]]:
    """A metrics record -> (scalars, histograms); strings (skip_reason) and the step are left out."""
    scalars, hists = {}, {}
    for k, v in record.items():
        if k == "step" or v is None or isinstance(v, str):
            continue
        if isinstance(v, (list, tuple)):
            if v and all(isinstance(x, (int, float)) for x in v):
                hists[k] = list(v)
        elif isinstance(v, (bool, int, float)):
            scalars[k] = float(v)
    return scalars, hists


class Backend:
    """One destination. `log` gets the whole metrics record; `images` {tag: (H, W[, C]) uint8}."""

    def log(self, step: int, record: dict) -> None:
        pass

    def images(self, step: int, images: dict[str, np.ndarray]) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlBackend(Backend):
    def __init__(self, run):
        self.run = run

    def log(self, step: int, record: dict) -> None:
        self.run.append_metrics(record)


class TensorBoardBackend(Backend):
    """SummaryWriter into RUN/tensorboard/. A record is ONE event: a Summary holding every scalar and
    histogram (add_scalar per key costs ~10x more: an event, a proto and a queue entry each)."""

    def __init__(self, log_dir: Path, purge_step: int | None):
        from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary
        from torch.utils.tensorboard import SummaryWriter

        self.Summary, self.HistogramProto = Summary, HistogramProto
        self.w = SummaryWriter(str(log_dir), purge_step=purge_step, max_queue=1000, flush_secs=60)

    def _histogram(self, counts: list) -> object:
        """Bucket i (upper limit i + 0.5) holds expert i's load: TensorBoard draws loads by expert."""
        c = np.asarray(counts, dtype=np.float64)
        idx = np.arange(len(c), dtype=np.float64)
        return self.HistogramProto(
            min=0.0,
            max=float(len(c) - 1),
            num=float(c.sum()),
            sum=float((idx * c).sum()),
            sum_squares=float((idx * idx * c).sum()),
            bucket_limit=(idx + 0.5).tolist(),
            bucket=c.tolist(),
        )

    def log(self, step: int, record: dict) -> None:
        scalars, hists = _split(record)
        V = self.Summary.Value
        values = [V(tag=k, simple_value=v) for k, v in scalars.items()]
        values += [V(tag=k, histo=self._histogram(c)) for k, c in hists.items()]
        self.w._get_file_writer().add_summary(self.Summary(value=values), step)

    def images(self, step: int, images: dict[str, np.ndarray]) -> None:
        for k, img in images.items():
            self.w.add_image(k, img, step, dataformats="HW" if img.ndim == 2 else "HWC")

    def flush(self) -> None:
        self.w.flush()

    def close(self) -> None:
        self.w.close()


def _import_wandb():
    try:
        import wandb
    except ImportError:
        raise GenlabError(
            "train.log names wandb but the wandb package is not installed; pip install 'genlab[wandb]'"
        ) from None
    return wandb


class WandbBackend(Backend):
    def __init__(self, run, config: dict, resume: bool):
        wandb = _import_wandb()
        self.wandb = wandb
        d = run.path / WANDB_DIR
        d.mkdir(parents=True, exist_ok=True)
        id_file = d / "genlab-run-id"
        if resume and id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            run_id = hashlib.sha1(f"{run.path.resolve()}:{os.getpid()}:{os.urandom(4).hex()}".encode()).hexdigest()[:12]
            id_file.write_text(run_id + "\n")
        path = run.path.resolve()
        self.r = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or path.parent.name or "genlab",
            name=path.name,
            id=run_id,
            resume="allow",
            dir=str(run.path),
            config=config,
            mode=None if os.environ.get("WANDB_MODE") else "offline",
        )

    def log(self, step: int, record: dict) -> None:
        scalars, hists = _split(record)
        data: dict = dict(scalars)
        for k, counts in hists.items():
            edges = np.arange(len(counts) + 1, dtype=np.float64) - 0.5  # one bin per expert
            data[k] = self.wandb.Histogram(np_histogram=(np.asarray(counts, dtype=np.float64), edges))
        self.r.log(data, step=step)

    def images(self, step: int, images: dict[str, np.ndarray]) -> None:
        self.r.log({k: self.wandb.Image(v) for k, v in images.items()}, step=step)

    def close(self) -> None:
        self.r.finish()


def check(names: tuple[str, ...], run_path: Path) -> None:
    """Before anything is written: the backends are installed and their directories can be made.
    One-line GenlabErrors."""
    if "tensorboard" in names:
        try:
            import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
        except ImportError:
            raise GenlabError(
                "train.log names tensorboard but the tensorboard package is not installed; "
                "pip install 'genlab[tensorboard]'"
            ) from None
    if "wandb" in names:
        _import_wandb()
    for name in names:
        if name not in _DIRS:
            continue
        d = Path(run_path) / _DIRS[name]
        if d.exists() and not d.is_dir():
            raise GenlabError(f"{d}: the {name} log dir is a file; remove it or leave {name} out of train.log")
        probe = d if d.is_dir() else Path(run_path)
        if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
            raise GenlabError(f"{probe}: the {name} log dir cannot be written (permission denied)")


class Loggers:
    """The backends of a run; the trainer calls these methods only."""

    def __init__(self, names: tuple[str, ...], backends: list[Backend]):
        self.names, self.backends = names, backends
        # every rank asks for the images (a sharded model samples on all ranks); rank 0 logs them
        self.wants_images = any(n in ("tensorboard", "wandb") for n in names)

    @classmethod
    def open(cls, names: tuple[str, ...], run, resume_step: int | None = None, config: dict | None = None) -> Loggers:
        """Open the backends into `run` (rank 0; other ranks write nothing). resume_step: the
        checkpoint's step when resuming (TensorBoard purges later events), None for a new run."""
        backends: list[Backend] = [JsonlBackend(run)]
        if distributed.is_main():
            try:
                if "tensorboard" in names:
                    tb = run.path / TB_DIR
                    tb.mkdir(parents=True, exist_ok=True)
                    backends.append(TensorBoardBackend(tb, None if resume_step is None else resume_step + 1))
                if "wandb" in names:
                    backends.append(WandbBackend(run, config or {}, resume_step is not None))
            except OSError as e:
                for b in backends:
                    b.close()
                raise GenlabError(f"{run.path}: cannot open the log dir ({e.strerror or e})") from None
        return cls(names, backends)

    def log(self, step: int, record: dict) -> None:
        for b in self.backends:
            b.log(step, record)

    def log_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        if images:
            for b in self.backends:
                b.images(step, images)

    def flush(self) -> None:
        for b in self.backends:
            b.flush()

    def close(self) -> None:
        for b in self.backends:
            b.close()
        self.backends = []
