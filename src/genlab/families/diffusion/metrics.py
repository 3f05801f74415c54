"""Evaluation helpers for the diffusion task: a small digit (class) classifier trained on real
images, the Fréchet distance on its penultimate features, and PNG grids.

FID here is the Fréchet distance between Gaussians fitted to the classifier's 128-d features,
d² = |μ1 - μ2|² + Tr(Σ1 + Σ2 - 2 (Σ1 Σ2)^½), not comparable with Inception FID.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Classifier(nn.Module):
    """(B, C, S, S) -> logits (B, K); `features` is the 128-d penultimate layer."""

    def __init__(self, channels: int, size: int, n_classes: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(64 * (size // 4) ** 2, 128)
        self.head = nn.Linear(128, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_classifier(
    images: torch.Tensor, labels: torch.Tensor, n_classes: int, steps: int = 400, batch: int = 64, seed: int = 0
) -> Classifier:
    """Adam, lr 2e-3, random 1-pixel shifts as augmentation; deterministic given the seed."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    clf = Classifier(images.shape[1], images.shape[2], n_classes)
    opt = torch.optim.Adam(clf.parameters(), lr=2e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=g)
        dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=g))
        x = torch.roll(images[idx], shifts=(dy, dx), dims=(2, 3))
        loss = F.cross_entropy(clf(x), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return clf.eval()


@torch.no_grad()
def predict(clf: Classifier, images: torch.Tensor, batch: int = 512) -> tuple[torch.Tensor, np.ndarray]:
    """(predicted class (N,), features (N, 128) float64)."""
    preds, feats = [], []
    for s in range(0, len(images), batch):
        f = clf.features(images[s : s + batch])
        feats.append(f.double().numpy())
        preds.append(clf.head(f).argmax(1))
    return torch.cat(preds), np.concatenate(feats)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """|μ1 - μ2|² + Tr(Σ1) + Tr(Σ2) - 2 Tr((Σ1 Σ2)^½); the trace term through the symmetric
    √Σ1 Σ2 √Σ1, whose eigenvalues equal those of Σ1 Σ2."""
    r = _sqrt_psd(s1)
    m = r @ s2 @ r
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    return frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, pad: int = 1, scale: int = 2) -> Path:
    """Images (N, C, S, S) in [-1, 1] -> a PNG grid (nrow columns, default ~√N), each pixel scale x scale."""
    from PIL import Image

    n, c, s, _ = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.zeros((rows * (s + pad) + pad, nrow * (s + pad) + pad, c), dtype=np.uint8)
    px = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[pad + r * (s + pad) : pad + r * (s + pad) + s, pad + col * (s + pad) : pad + col * (s + pad) + s] = px[i]
    img = Image.fromarray(grid[:, :, 0] if c == 1 else grid)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
