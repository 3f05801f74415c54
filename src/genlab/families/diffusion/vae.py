"""A convolutional KL-regularised autoencoder (the LDM paper's "KL-reg" first stage, small).

x (B, C, H, W) in [-1, 1] -> encoder -> (mean, logvar) each (B, z, H/f, W/f) -> z = mean + std * ε
-> decoder -> (B, C, H, W). The downsampling factor f is a power of two (one stride-2 conv per factor
of two). The loss is the summed squared error plus kl_weight times the KL to N(0, I).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def group_norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch), ch)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with a 1x1 skip when the width changes; optional timestep embedding."""

    def __init__(self, cin: int, cout: int, emb_dim: int = 0):
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout) if emb_dim else None
        self.norm2, self.conv2 = group_norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb is not None:
            h = h + self.emb(F.silu(emb))[:, :, None, None]  # (B, cout, 1, 1)
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(N(mean, exp(logvar)) || N(0, I)) = 0.5 * sum(mean² + var - 1 - logvar), shape (B,)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


class KLAutoencoder(nn.Module):
    def __init__(self, in_channels: int = 1, latent_channels: int = 4, channels: int = 32, downsample: int = 2):
        super().__init__()
        n_down = int(math.log2(downsample))
        assert 2**n_down == downsample, "downsample must be a power of two"
        self.downsample, self.latent_channels = downsample, latent_channels
        widths = [channels * min(2**i, 4) for i in range(n_down + 1)]  # e.g. 32, 64, 128
        enc: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        for i in range(n_down):
            enc += [ResBlock(widths[i], widths[i]), nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1)]
        enc += [
            ResBlock(widths[-1], widths[-1]),
            group_norm(widths[-1]),
            nn.SiLU(),
            nn.Conv2d(widths[-1], 2 * latent_channels, 3, padding=1),
        ]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(latent_channels, widths[-1], 3, padding=1), ResBlock(widths[-1], widths[-1])]
        for i in reversed(range(n_down)):
            dec += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(widths[i + 1], widths[i], 3, padding=1),
                ResBlock(widths[i], widths[i]),
            ]
        dec += [group_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar), each (B, latent_channels, H/f, W/f); logvar clamped as in LDM."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """(reconstruction, mean, logvar) with z sampled by the reparameterisation trick."""
        mean, logvar = self.encode(x)
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        z = mean + (0.5 * logvar).exp() * eps
        return self.decode(z), mean, logvar

    def loss(self, x: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, dict]:
        """Summed over the batch: squared error over pixels + kl_weight * KL. Also the parts, for logging."""
        recon, mean, logvar = self(x)
        rec = (recon - x).pow(2).sum()
        kl = kl_to_standard_normal(mean, logvar).sum()
        return rec + kl_weight * kl, {"recon_sse": float(rec.detach()), "kl": float(kl.detach())}
