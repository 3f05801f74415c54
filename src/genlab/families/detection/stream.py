"""Streaming online action detection: frames in one at a time, per-frame class scores out.

    from genlab.families.detection.stream import load_detector, stream_detect
    model, classes = load_detector("runs/oadtr-synth")
    for probs in stream_detect(model, frames):      # frames: any iterable of (feat_dim,) arrays
        print(classes[probs.argmax()], probs.max())

`StreamingDetector` keeps the embeddings of the last T frames in a ring buffer: O(T) memory, and
per frame one embedding, two buffer writes and one window forward, whatever the stream's length.
The buffer is 2T long and every frame is written twice (slot s and s + T), so the window, oldest
frame first, is always the contiguous slice buf[s + 1 : s + 1 + T]: no copy, no reordering.
Before T frames have arrived the window starts with zero frames, exactly as in training and in
`detect_offline`, the batch computation that streaming reproduces.

Smoothing (`smooth=K` > 1): each class's score becomes the max of its probability over the last K
frames (genlab.ops.window_max.SlidingMax per class; offline: causal_window_max). A detection then
holds for K-1 frames instead of flickering when one noisy frame dips; the scores are no longer a
distribution.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from genlab.errors import GenlabError
from genlab.ops.window_max import SlidingMax, causal_window_max
from genlab.train.rundir import load_run


def load_detector(run_path: str, device: str = "cpu"):
    """(model in eval mode, class names) of a detection run's newest intact checkpoint."""
    run, cfg, task, model = load_run(run_path, device)
    if cfg.task != "detection":
        raise GenlabError(
            f"{run.path} is a {cfg.task!r} run; `genlab detect` needs a detection run "
            "(e.g. trained with --preset oadtr-synth)"
        )
    return model, task.classes


def _zero_embedding(model, device) -> torch.Tensor:
    return model.embed(torch.zeros(1, model.embed.in_features, device=device))  # (1, d)


@torch.no_grad()
def detect_offline(model, feats, batch: int = 256, smooth: int = 1, device="cpu") -> np.ndarray:
    """(N, feat_dim) frames of one video -> (N, C) per-frame probabilities, all windows batched."""
    model.eval()
    x = torch.as_tensor(np.asarray(feats, dtype=np.float32), device=device)
    T = model.history
    e = torch.cat([_zero_embedding(model, device).expand(T - 1, -1), model.embed(x)])  # (N + T - 1, d)
    windows = e.unfold(0, T, 1).transpose(1, 2)  # (N, T, d) views, oldest frame first
    out = []
    for i in range(0, windows.shape[0], batch):
        logits, _ = model.forward_embedded(windows[i : i + batch])
        out.append(torch.softmax(logits.float(), -1).cpu())
    probs = torch.cat(out).numpy() if out else np.zeros((0, model.n_classes), np.float32)
    return causal_window_max(probs, smooth, axis=0) if smooth > 1 else probs


class StreamingDetector:
    def __init__(self, model, smooth: int = 1, device="cpu"):
        if smooth < 1:
            raise GenlabError(f"smoothing window {smooth} must be >= 1 frame")
        self.model = model.eval()
        self.device = device
        self.T = model.history
        self.feat_dim = model.embed.in_features
        with torch.no_grad():
            zero = _zero_embedding(model, device)[0]
        self.buf = zero.repeat(2 * self.T, 1)  # (2T, d)
        self.slot = self.T - 1  # slot of the newest frame
        self.frames = 0
        self.smoothers = None
        self.smooth = smooth

    @torch.no_grad()
    def push(self, frame) -> np.ndarray:
        """One (feat_dim,) frame -> (C,) class probabilities (smoothed scores with smooth > 1)."""
        f = torch.as_tensor(np.asarray(frame, dtype=np.float32), device=self.device)
        if f.shape != (self.feat_dim,):
            raise GenlabError(
                f"frame {self.frames} has shape {tuple(f.shape)}; this detector expects ({self.feat_dim},) features"
            )
        if not torch.isfinite(f).all():
            raise GenlabError(f"frame {self.frames} contains NaN or inf; features must be finite")
        e = self.model.embed(f[None])[0]
        self.slot = (self.slot + 1) % self.T
        self.buf[self.slot] = e
        self.buf[self.slot + self.T] = e
        window = self.buf[self.slot + 1 : self.slot + 1 + self.T]  # (T, d), oldest first
        logits, _ = self.model.forward_embedded(window[None])
        probs = torch.softmax(logits[0].float(), -1).cpu().numpy()
        self.frames += 1
        if self.smooth > 1:
            if self.smoothers is None:
                self.smoothers = [SlidingMax(self.smooth) for _ in range(len(probs))]
            probs = np.array([s.push(p) for s, p in zip(self.smoothers, probs)], dtype=np.float32)
        return probs


def stream_detect(model, frames: Iterable, smooth: int = 1, device="cpu") -> Iterator[np.ndarray]:
    """Yield (C,) class scores for each frame as it arrives."""
    det = StreamingDetector(model, smooth, device)
    for f in frames:
        yield det.push(f)
