"""Rotary position embedding (half-split layout, as Llama: pairs (x[i], x[i + D/2]))."""

from __future__ import annotations

import math

import torch


def rope_table(max_pos: int, dim: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables of shape (max_pos, dim // 2), float32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim))
    ang = torch.arange(max_pos, dtype=torch.float64, device=device)[:, None] * inv_freq[None, :]
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (T, H, D); cos/sin (T, D/2) gathered at each token's position. The reference version
    (plain autograd); the model uses `rope_qkv`, which computes the same thing."""
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


def _rotate(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor, out: torch.Tensor, sign: float = 1.0) -> None:
    """out = x rotated by +angle (sign 1) or -angle (sign -1); x, out (T, h, D) (any strides),
    c/s (T, 1, D/2). Written straight into `out`: no temporaries."""
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    o1, o2 = out[..., :d], out[..., d:]
    torch.mul(x1, c, out=o1)
    o1.addcmul_(x2, s, value=-sign)  # x1 cos - x2 sin
    torch.mul(x2, c, out=o2)
    o2.addcmul_(x1, s, value=sign)  # x2 cos + x1 sin


class _RopeQKV(torch.autograd.Function):
    """Split the fused projection (T, H + 2 H_kv, D) into q, k, v and rotate q and k.

    Why a Function: with plain autograd, RoPE costs a dozen full-size temporaries per layer
    (products, cat, and zero-filled buffers in the backward of every slice), and the backward of
    the q/k/v split concatenates the three gradients into one more. Here the forward writes q and
    k into one new buffer, v stays a view of the projection, and the backward (the inverse
    rotation) writes dq, dk and dv straight into the (T, H + 2 H_kv, D) gradient.
    """

    @staticmethod
    def forward(ctx, qkv, cos, sin, n_head: int, n_kv: int):
        n_qk = n_head + n_kv
        c, s = cos[:, None, :], sin[:, None, :]
        qk = qkv.new_empty(qkv.shape[0], n_qk, qkv.shape[2])
        _rotate(qkv[:, :n_qk], c, s, qk)
        ctx.save_for_backward(cos, sin)
        ctx.n_head, ctx.n_kv = n_head, n_kv
        q, k = qk.split([n_head, n_kv], dim=1)
        return q, k, qkv[:, n_qk:]

    @staticmethod
    def backward(ctx, dq, dk, dv):
        cos, sin = ctx.saved_tensors
        h, n_qk = ctx.n_head, ctx.n_head + ctx.n_kv
        c, s = cos[:, None, :], sin[:, None, :]
        dqkv = dq.new_empty(dq.shape[0], n_qk + ctx.n_kv, dq.shape[2])
        _rotate(dq, c, s, dqkv[:, :h], sign=-1.0)
        _rotate(dk, c, s, dqkv[:, h:n_qk], sign=-1.0)
        dqkv[:, n_qk:].copy_(dv)
        return dqkv, None, None, None, None


def rope_qkv(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_head: int, n_kv: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """qkv (T, n_head + 2 n_kv, D) -> q (T, n_head, D), k (T, n_kv, D) rotated at the positions
    whose cos/sin (T, D/2) are given, and v (T, n_kv, D) unchanged (a view of qkv)."""
    return _RopeQKV.apply(qkv, cos, sin, n_head, n_kv)


# ------------------------------------------------------------------ interleaved pairs (DeepSeek MLA)
def apply_rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """GPT-J / DeepSeek layout: rotate adjacent pairs (x[2j], x[2j+1]) by angle j; the output keeps
    the interleaved layout. x (T, H, D); cos/sin (T, D/2)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)


def yarn_inv_freq(
    dim: int, theta: float, factor: float, original_len: int, beta_fast: float = 32.0, beta_slow: float = 1.0
) -> torch.Tensor:
    """YaRN (arXiv:2309.00071) inverse frequencies (dim/2,): high-frequency dims (more than beta_fast
    rotations over the original context) are kept, low-frequency dims (fewer than beta_slow) are
    divided by `factor`, with a linear ramp between (correction range floored/ceiled)."""

    def corr_dim(rot):
        return dim * math.log(original_len / (rot * 2 * math.pi)) / (2 * math.log(theta))

    low, high = max(math.floor(corr_dim(beta_fast)), 0), min(math.ceil(corr_dim(beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    keep = 1 - ramp  # 1 = extrapolate (original frequency), 0 = interpolate (divided by factor)
    return (1.0 / (factor * pos_freqs)) * (1 - keep) + (1.0 / pos_freqs) * keep


def yarn_mscale(factor: float, m: float = 1.0) -> float:
    """YaRN attention temperature correction 0.1 m ln(factor) + 1 (1 for factor <= 1)."""
    return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0
