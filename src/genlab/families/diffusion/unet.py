"""A small UNet denoiser ε_θ(z_t, t, context): residual blocks with a timestep embedding, and
transformer blocks (self-attention, cross-attention to the text encoder's outputs, feed-forward)
on every feature map of at most 16x16 = 256 positions.

Widths: level i has channels * mult[i]; `res_blocks` ResBlocks per level on the way down and
res_blocks + 1 on the way up (each taking a skip connection), a stride-2 conv between levels.
Input height and width must be divisible by 2^(levels - 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from genlab.families.diffusion.text_encoder import SelfAttention, attention
from genlab.families.diffusion.vae import ResBlock, group_norm

ATTN_MAX_POSITIONS = 256


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (B,) -> (B, dim): [cos(t f_i), sin(t f_i)]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class CrossAttention(nn.Module):
    """Q from image positions, K and V from the text context: softmax(QKᵀ/√d)V."""

    def __init__(self, d: int, d_context: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.q, self.kv, self.proj = nn.Linear(d, d), nn.Linear(d_context, 2 * d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        k, v = self.kv(context).chunk(2, dim=-1)
        return self.proj(attention(self.q(x), k, v, self.n_head, mask))


class SpatialTransformer(nn.Module):
    """(B, C, H, W) -> tokens (B, HW, C) -> self-attn, cross-attn, FF (pre-LN) -> back, residual."""

    def __init__(self, ch: int, d_context: int, n_head: int):
        super().__init__()
        self.norm, self.proj_in = group_norm(ch), nn.Conv2d(ch, ch, 1)
        self.ln1, self.self_attn = nn.LayerNorm(ch), SelfAttention(ch, n_head)
        self.ln2, self.cross_attn = nn.LayerNorm(ch), CrossAttention(ch, d_context, n_head)
        self.ln3 = nn.LayerNorm(ch)
        self.ff = nn.Sequential(nn.Linear(ch, 4 * ch), nn.GELU(), nn.Linear(4 * ch, ch))
        self.proj_out = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # (B, HW, C)
        h = h + self.self_attn(self.ln1(h))
        h = h + self.cross_attn(self.ln2(h), context, mask)
        h = h + self.ff(self.ln3(h))
        return x + self.proj_out(h.transpose(1, 2).reshape(B, C, H, W))


class Block(nn.Module):
    """A ResBlock, then a SpatialTransformer if the feature map is small enough."""

    def __init__(self, cin: int, cout: int, emb_dim: int, d_context: int, n_head: int, attn: bool):
        super().__init__()
        self.res = ResBlock(cin, cout, emb_dim)
        self.attn = SpatialTransformer(cout, d_context, n_head) if attn else None

    def forward(self, x, emb, context, mask):
        x = self.res(x, emb)
        return self.attn(x, context, mask) if self.attn is not None else x


class UNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        channels: int,
        mult: tuple[int, ...],
        res_blocks: int,
        d_context: int,
        n_head: int,
        sample_size: int,
    ):
        super().__init__()
        self.channels, self.n_levels = channels, len(mult)
        emb_dim = 4 * channels
        self.time_mlp = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        widths = [channels * m for m in mult]
        attn_at = [(sample_size >> i) ** 2 <= ATTN_MAX_POSITIONS for i in range(len(mult))]
        self.down = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        skips, ch = [channels], channels
        for i, w in enumerate(widths):
            for _ in range(res_blocks):
                self.down.append(Block(ch, w, emb_dim, d_context, n_head, attn_at[i]))
                ch = w
                skips.append(ch)
            if i < len(widths) - 1:
                self.downsamplers.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid1 = Block(ch, ch, emb_dim, d_context, n_head, True)
        self.mid2 = ResBlock(ch, ch, emb_dim)
        self.up = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            for _ in range(res_blocks + 1):
                self.up.append(Block(ch + skips.pop(), w, emb_dim, d_context, n_head, attn_at[i]))
                ch = w
            if i > 0:
                self.upsamplers.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.res_blocks = res_blocks
        self.norm_out, self.conv_out = group_norm(ch), nn.Conv2d(ch, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, c, h, w), t (B,) ints, context (B, L, d_context), mask (B, L) -> ε̂ (B, c, h, w)."""
        emb = self.time_mlp(timestep_embedding(t, self.channels))  # (B, 4 * channels)
        h = self.conv_in(x)
        hs = [h]
        blocks = iter(self.down)
        for i in range(self.n_levels):
            for _ in range(self.res_blocks):
                h = next(blocks)(h, emb, context, mask)
                hs.append(h)
            if i < self.n_levels - 1:
                h = self.downsamplers[i](h)
                hs.append(h)
        h = self.mid2(self.mid1(h, emb, context, mask), emb)
        blocks, ups = iter(self.up), iter(self.upsamplers)
        for i in reversed(range(self.n_levels)):
            for _ in range(self.res_blocks + 1):
                h = next(blocks)(torch.cat([h, hs.pop()], dim=1), emb, context, mask)
            if i > 0:
                h = next(ups)(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))
