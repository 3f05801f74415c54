"""Online action detection task: feature frames -> windows of the last T frames -> detector -> loss.

Data: `data.path = ""` is the synthetic streaming benchmark (genlab.families.detection.synth: its train
split trains, its test split validates); otherwise a THUMOS14-style folder (genlab.families.detection.features).
A training example is one frame whose label is not ambiguous: its window is the `data.history`
frames ending at it (zeros before the video's start, so every frame gets a decision, as in a
stream), its current target is its label, its future targets the labels of the next
`model.future_steps` frames (ignored when ambiguous or past the video's end).

Loss (OadTR): cross-entropy of the current frame + train.future_weight x cross-entropy of the
future frames, each averaged over its non-ambiguous targets. The ambiguous class has no logit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genlab.config import RunConfig
from genlab.errors import GenlabError
from genlab.families.detection.features import FrameData, load_feature_dir
from genlab.families.detection.metrics import frame_map
from genlab.families.detection.oadtr import build_detector
from genlab.families.detection.stream import detect_offline
from genlab.families.detection.synth import SynthSpec, class_names, generate
from genlab.train.task import Task

ARTIFACT = "detection.json"
IGNORE = -100


@dataclass
class DetectionBatch:
    x: torch.Tensor  # (B, T, feat_dim) windows, oldest frame first
    current: torch.Tensor  # (B,) class ids
    future: torch.Tensor  # (B, future_steps) class ids, IGNORE where unknown

    def to(self, device) -> DetectionBatch:
        return DetectionBatch(self.x.to(device), self.current.to(device), self.future.to(device))

    @property
    def n_targets(self) -> int:
        return int(self.current.shape[0])


def make_batch(data: FrameData, frames: np.ndarray, history: int, future_steps: int) -> DetectionBatch:
    idx = data.window_index(frames, history)  # (B, T); -1 = before the video's start
    x = np.where((idx >= 0)[..., None], data.feats[np.maximum(idx, 0)], np.float32(0))
    fut = data.future_labels(frames, future_steps)
    return DetectionBatch(
        torch.from_numpy(x),
        torch.from_numpy(data.labels[frames].copy()),
        torch.from_numpy(np.where(fut < 0, IGNORE, fut)),
    )


class DetectionTask(Task):
    name = "detection"

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.train_data: FrameData | None = None
        self.val_data: FrameData | None = None
        self.classes: list[str] = []
        self.feat_dim = 0
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, permutation of trainable frames)

    # ------------------------------------------------------------------ data and artifacts
    def _load(self) -> tuple[FrameData, FrameData | None]:
        d = self.cfg.data
        if not d.path:
            return generate(SynthSpec(), "train"), generate(SynthSpec(), "test")
        train = load_feature_dir(d.path, d.val_fraction, split="train")
        try:
            val = load_feature_dir(d.path, d.val_fraction, train.feat_dim, train.classes, split="test")
        except GenlabError as e:
            if "no videos" not in str(e):
                raise
            val = None
        return train, val

    def prepare(self, run_dir: Path | None, fresh: bool = True) -> None:
        self.train_data, self.val_data = self._load()
        if not fresh and run_dir is not None:
            self.load_for_inference(run_dir)
            if (self.train_data.classes, self.train_data.feat_dim) != (self.classes, self.feat_dim):
                raise GenlabError(
                    f"{run_dir}: the data now has classes/feat_dim different from the run's "
                    f"{ARTIFACT}; resume with the data the run started with"
                )
        self.classes, self.feat_dim = self.train_data.classes, self.train_data.feat_dim
        if not (self.train_data.labels >= 0).any():
            raise GenlabError(
                f"{self.cfg.data.path or 'the data'}: every training frame is ambiguous; nothing to learn"
            )

    def save_artifacts(self, run_dir: Path) -> None:
        info = {
            "classes": self.classes,
            "feat_dim": self.feat_dim,
            "data": self.cfg.data.path or "synthetic",
            "synthetic_spec": SynthSpec().to_dict() if not self.cfg.data.path else None,
        }
        (Path(run_dir) / ARTIFACT).write_text(json.dumps(info, indent=1) + "\n")

    def load_for_inference(self, run_dir: Path) -> None:
        p = Path(run_dir) / ARTIFACT
        try:
            info = json.loads(p.read_text())
            self.classes, self.feat_dim = list(info["classes"]), int(info["feat_dim"])
        except (OSError, ValueError, KeyError, TypeError):
            raise GenlabError(f"{p} is missing or unreadable; it is written when a detection run starts") from None

    # ------------------------------------------------------------------ model and loss
    def build_model(self) -> torch.nn.Module:
        return build_detector(self.cfg.model, self.feat_dim, len(self.classes), self.cfg.data.history)

    def initial_state(self):
        return (0, 0)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            frames = np.flatnonzero(self.train_data.labels >= 0)
            rng = np.random.default_rng([self.cfg.train.seed, epoch])
            self._order = (epoch, frames[rng.permutation(len(frames))])
        return self._order[1]

    def next_batch(self, state) -> tuple[DetectionBatch, tuple[int, int]]:
        """Frames in a shuffled order that depends only on (seed, epoch); the tail of an epoch
        shorter than a batch is skipped."""
        epoch, cursor = state
        B = self.cfg.train.batch_rows
        order = self._epoch_order(epoch)
        if cursor + B > len(order):
            epoch, cursor = epoch + 1, 0
            order = self._epoch_order(epoch)
        frames = np.sort(order[cursor : cursor + B])
        return make_batch(self.train_data, frames, self.cfg.data.history, self.cfg.model.future_steps), (
            epoch,
            cursor + B,
        )

    def loss(self, model, batch: DetectionBatch) -> tuple[torch.Tensor, int]:
        """Summed loss whose mean over the batch is CE_current + future_weight * CE_future."""
        current, future = model(batch.x)
        loss_sum = F.cross_entropy(current.float(), batch.current, ignore_index=IGNORE, reduction="sum")
        n = batch.n_targets
        if future is not None and self.cfg.train.future_weight > 0:
            fut_t = batch.future[:, : future.shape[1]].reshape(-1)
            n_fut = int((fut_t != IGNORE).sum())
            if n_fut:
                fut_sum = F.cross_entropy(
                    future.float().reshape(-1, future.shape[-1]), fut_t, ignore_index=IGNORE, reduction="sum"
                )
                loss_sum = loss_sum + self.cfg.train.future_weight * fut_sum * (n / n_fut)
        return loss_sum, n

    @torch.no_grad()
    def evaluate(self, model, data: FrameData | None = None, max_batches: int | None = None, device="cpu") -> dict:
        """val_loss (current-frame CE), val_mAP and val_mcAP; with max_batches, on an evenly
        spaced subset of max_batches x batch_rows frames."""
        data = data if data is not None else self.val_data
        if data is None:
            return {}
        frames = np.flatnonzero(data.labels >= 0)
        B = max(self.cfg.train.batch_rows, 256)
        if max_batches is not None and len(frames) > max_batches * B:
            frames = frames[np.linspace(0, len(frames) - 1, max_batches * B).astype(np.int64)]
        was = model.training
        model.eval()
        probs, nll = [], 0.0
        for i in range(0, len(frames), B):
            b = make_batch(data, frames[i : i + B], self.cfg.data.history, 1).to(device)
            current, _ = model(b.x)
            nll += float(F.cross_entropy(current.float(), b.current, reduction="sum"))
            probs.append(torch.softmax(current.float(), -1).cpu().numpy())
        model.train(was)
        probs = np.concatenate(probs)
        m = frame_map(probs, data.labels[frames], self.classes)
        return {"val_loss": nll / len(frames), "val_mAP": m["mAP"], "val_mcAP": m["mcAP"], "val_frames": len(frames)}

    # ------------------------------------------------------------------ CLI entry points
    def eval_report(self, run, model, data_path: str | None) -> dict:
        """Per-class frame AP and calibrated AP, mAP and mcAP over every frame of the data (the
        validation/test split of the run's data, or every video of the folder --data names)."""
        if data_path:
            data = load_feature_dir(data_path, feat_dim=self.feat_dim, classes=self.classes, split="all")
        else:
            self.prepare(run.path, fresh=False)
            data = self.val_data
            if data is None:
                raise GenlabError(f"{run.path}: the data has no test videos; pass --data DIR")
        device = next(model.parameters()).device
        probs = np.concatenate([detect_offline(model, data.video(v)[0], device=device) for v in range(len(data.names))])
        m = frame_map(probs, data.labels, self.classes)
        return {
            "data": data_path or ("synthetic test split" if not self.cfg.data.path else "test split"),
            "videos": len(data.names),
            **m,
        }

    def info_lines(self, run_path: Path | None) -> list[str]:
        """For `genlab info`: classes, feature size, parameters, forward FLOPs per streamed frame."""
        # imported here: torch's flop counter imports triton, which must not load before a caller
        # chooses its mode (TRITON_INTERPRET), and costs 0.1 s that training never needs
        from torch.utils.flop_counter import FlopCounterMode

        if run_path is not None:
            self.load_for_inference(run_path)
        elif not self.cfg.data.path:
            self.classes, self.feat_dim = class_names(SynthSpec()), SynthSpec().feat_dim
        else:
            self.prepare(None)
        model = self.build_model().eval()
        with FlopCounterMode(display=False) as fc:  # (its module tracker needs autograd on)
            model.forward_embedded(torch.zeros(1, self.cfg.data.history, self.cfg.model.d_model))
            model.embed(torch.zeros(1, self.feat_dim))  # streaming embeds one new frame per step
        return [
            f"classes               {len(self.classes)} ({', '.join(self.classes[:6])}"
            f"{', ...' if len(self.classes) > 6 else ''}; ambiguous frames have no class)",
            f"features per frame    {self.feat_dim}",
            f"window                {self.cfg.data.history} frames",
            f"parameters            {sum(p.numel() for p in model.parameters()):,}",
            f"FLOPs/frame streaming {fc.get_total_flops():,} (matmuls, one window forward)",
        ]

    def sample(self, run, model, options) -> None:
        raise GenlabError(
            f"{run.path} is an action detection run; it does not sample. Stream features through it with "
            f"`genlab detect {run.path} --features FILE.npy`"
        )
