"""Density estimation task: binary vectors -> a density model -> exact negative log-likelihood.

Batches are `train.batch_rows` examples drawn without replacement from a fresh permutation of the
training split every epoch (seeded by train.seed and the epoch). The loss is the summed NLL of the
batch and its count is the number of examples, so the trainer's `loss`/`val_loss` is NLL per example
in nats (the papers' unit) and its "tokens" are examples. Early stopping on validation NLL is the
trainer's generic `train.early_stop_patience`.

Artifacts: RUN/density.json records D and where the data came from, so sample/eval need no data.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genlab.config import RunConfig
from genlab.errors import GenlabError
from genlab.families.density.data import BinaryData, image_shape, load_binary, load_eval_rows
from genlab.families.density.model import build_density
from genlab.train.loggers import tile
from genlab.train.task import Task

ARTIFACT = "density.json"
EVAL_CHUNK = 1000  # examples per evaluation batch


@dataclass
class DensityBatch:
    x: torch.Tensor  # (B, D) float32 of 0/1
    index: int  # how many training batches came before this one (MADE: mask = index mod n_masks)

    @property
    def n_targets(self) -> int:
        return self.x.shape[0]

    def to(self, device) -> DensityBatch:
        return self if str(device) == "cpu" else DensityBatch(self.x.to(device), self.index)


def nll_summary(nll_sum: float, n: int, n_dims: int, prefix: str) -> dict:
    nats = nll_sum / n
    return {f"{prefix}_loss": nats, f"{prefix}_bpd": nats / (n_dims * math.log(2)), f"{prefix}_examples": n}


@dataclass(frozen=True)
class DensitySampleOptions:
    """`genlab sample` for density runs."""

    num: int = 64
    seed: int = 0
    out: str | None = None  # .png grid (image-shaped data) or .npy; default RUN/samples.png or .npy


class DensityTask(Task):
    name = "density"

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.data: BinaryData | None = None
        self.n_dims: int | None = None
        self._train: torch.Tensor | None = None
        self._valid: torch.Tensor | None = None
        self._perm_epoch, self._perm = -1, None

    # ------------------------------------------------------------------ data
    def prepare(self, run_dir: Path | None, fresh: bool = True) -> None:
        d = self.cfg.data
        self.data = load_binary(d.path, d.val_fraction, d.test_fraction)
        if not fresh and run_dir is not None:
            saved = self._read_artifact(Path(run_dir))["n_dims"]
            if saved != self.data.n_dims:
                raise GenlabError(
                    f"{d.path or 'digits'} has {self.data.n_dims} dimensions but the run was trained on {saved}"
                )
        self.n_dims = self.data.n_dims
        self._train = torch.from_numpy(self.data.train)
        self._valid = torch.from_numpy(self.data.valid)

    def save_artifacts(self, run_dir: Path) -> None:
        info = {
            "n_dims": self.n_dims,
            "image_shape": image_shape(self.n_dims),
            "source": self.data.source,
            "n_train": len(self.data.train),
            "n_valid": len(self.data.valid),
            "n_test": len(self.data.test),
        }
        (Path(run_dir) / ARTIFACT).write_text(json.dumps(info, indent=1) + "\n")

    @staticmethod
    def _read_artifact(run_dir: Path) -> dict:
        try:
            info = json.loads((run_dir / ARTIFACT).read_text())
            if not isinstance(info.get("n_dims"), int) or info["n_dims"] < 1:
                raise ValueError
            return info
        except (OSError, ValueError, AttributeError):
            raise GenlabError(f"{run_dir}: {ARTIFACT} is missing or unreadable; is this a density run?") from None

    def load_for_inference(self, run_dir: Path) -> None:
        self.n_dims = self._read_artifact(Path(run_dir))["n_dims"]

    # ------------------------------------------------------------------ model and loss
    def build_model(self) -> torch.nn.Module:
        model = build_density(self.cfg.model, self.n_dims, seed=self.cfg.train.seed)
        if self._train is not None:
            model.init_marginals(self._train.mean(0))
        return model

    def initial_state(self):
        return (0, 0, 0)  # epoch, position in the epoch's permutation, batches drawn so far

    def _epoch_perm(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(len(self._train), generator=g), epoch
        return self._perm

    def next_batch(self, state) -> tuple[DensityBatch, tuple[int, int, int]]:
        epoch, pos, count = state
        n = len(self._train)
        rows = self._epoch_perm(epoch)[pos : pos + self.cfg.train.batch_rows]  # the last batch may be short
        pos += len(rows)
        if pos >= n:
            epoch, pos = epoch + 1, 0
        return DensityBatch(self._train[rows], count), (epoch, pos, count + 1)

    @staticmethod
    def loss(model, batch: DensityBatch) -> tuple[torch.Tensor, int]:
        """Summed NLL (nats) of the batch's examples under the batch's mask, and the example count."""
        return -model.train_log_prob(batch.x, batch.index).float().sum(), batch.n_targets

    @torch.no_grad()
    def evaluate(self, model, data=None, max_batches: int | None = None, device="cpu", prefix: str = "val") -> dict:
        x = self._valid if data is None else torch.as_tensor(data)
        if x is None or len(x) == 0:
            return {}
        was_training = model.training
        model.eval()
        nll, n = 0.0, 0
        for i, start in enumerate(range(0, len(x), EVAL_CHUNK)):
            if max_batches is not None and i >= max_batches:
                break
            chunk = x[start : start + EVAL_CHUNK].to(device)
            nll -= float(model.log_prob(chunk).double().sum())
            n += len(chunk)
        model.train(was_training)
        return nll_summary(nll, n, x.shape[1], prefix)

    # ------------------------------------------------------------------ CLI entry points
    EVAL_IMAGES = 16  # samples in the eval-step grid (train.log tensorboard / wandb)

    def eval_images(self, model, device="cpu") -> dict:
        """A grid of 16 exact draws (seed 0) when the data are square images; else none."""
        shape = image_shape(self.n_dims)
        if shape is None:
            return {}
        was = model.training
        model.eval()
        x = model.sample(self.EVAL_IMAGES, 0).cpu().numpy().astype(np.uint8)  # its own generator
        model.train(was)
        return {"samples": tile(x.reshape(-1, *shape) * 255)}

    def info_lines(self, run_dir: Path | None) -> list[str]:
        """For `genlab info`: the data (from the run's density.json, or loaded for a preset) and the model."""
        if run_dir is not None:
            info = self._read_artifact(Path(run_dir))
            self.n_dims = info["n_dims"]
        else:
            self.prepare(None)
            info = {
                "n_dims": self.n_dims,
                "source": self.data.source,
                "n_train": len(self.data.train),
                "n_valid": len(self.data.valid),
                "n_test": len(self.data.test),
            }
        model = build_density(self.cfg.model, self.n_dims, seed=self.cfg.train.seed)
        shape = image_shape(self.n_dims)
        m = self.cfg.model
        lines = [
            f"data                  {info.get('source')}",
            f"dimensions            {self.n_dims}" + (f" ({shape[0]} x {shape[1]} images)" if shape else ""),
            f"examples              train {info.get('n_train')}, valid {info.get('n_valid')}, "
            f"test {info.get('n_test')}",
            f"model                 {type(model).__name__}",
            f"parameters            {sum(p.numel() for p in model.parameters()):,}",
        ]
        if m.arch == "made":
            lines.append(f"masks                 {m.n_masks} ({m.mask_resample}); evaluation averages all")
        return lines

    def eval_report(self, run, model, data_path: str | None) -> dict:
        d = self.cfg.data
        if data_path:
            rows = load_eval_rows(data_path, d.val_fraction, d.test_fraction)
        else:
            rows = load_binary(d.path, d.val_fraction, d.test_fraction).test
        if rows.shape[1] != self.n_dims:
            raise GenlabError(f"{data_path or d.path}: rows have {rows.shape[1]} dimensions, the model {self.n_dims}")
        device = next(model.parameters()).device  # genlab eval --device
        res = self.evaluate(model, torch.from_numpy(rows), device=device, prefix="test")
        ckpt = getattr(run, "checkpoint_used", None)
        return {
            "data": data_path or f"{d.path or 'digits'} (test split)",
            "test_nll_nats": res["test_loss"],
            "test_bits_per_dim": res["test_bpd"],
            "n_examples": res["test_examples"],
            "n_dims": self.n_dims,
            **({"checkpoint": str(ckpt)} if ckpt is not None else {}),
        }

    sample_options = DensitySampleOptions

    def sample(self, run, model, o: DensitySampleOptions) -> None:
        num = o.num
        shape = image_shape(self.n_dims)
        out = Path(o.out) if o.out else run.path / ("samples.png" if shape else "samples.npy")
        if out.suffix not in (".png", ".npy"):
            raise GenlabError(f"--out {out}: write samples as .png (image-shaped data) or .npy")
        if out.suffix == ".png" and shape is None:
            raise GenlabError(f"--out {out}: {self.n_dims} dimensions are not a square image; use a .npy file")
        if not out.parent.is_dir():
            raise GenlabError(f"--out {out}: the directory {out.parent} does not exist")
        x = model.sample(num, o.seed).cpu().numpy().astype(np.uint8)  # (num, D)
        if out.suffix == ".npy":
            np.save(out, x)
        else:
            save_grid(x.reshape(num, *shape), out)
        print(f"{num} samples -> {out}")


def save_grid(images: np.ndarray, path: Path, min_cell: int = 32) -> None:
    """(N, H, W) 0/1 images -> one PNG: a near-square grid, 1 = white, gray 1-pixel gutters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image

    n, h, w = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1), 0.5, dtype=np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = img
    scale = max(1, math.ceil(min_cell / max(h, w)))
    grid = np.kron(grid, np.ones((scale, scale), dtype=np.float32))
    matplotlib.image.imsave(path, grid, cmap="gray", vmin=0.0, vmax=1.0)
