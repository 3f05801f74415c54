"""A small Transformer encoder over a prompt's bytes, trained jointly with the denoiser.

Tokens: 0 = padding, 1 = start, byte b = b + 2 (vocab 258), so any UTF-8 prompt encodes and the
empty prompt "" (start token only) is the null condition of classifier-free guidance.
"""

from __future__ import annotations

import torch
import torch.nn as nn

PAD, BOS, VOCAB = 0, 1, 258
MAX_PROMPT_BYTES = 76  # + start token = 77 positions, CLIP's context length


def encode_prompts(prompts: list[str], max_len: int = MAX_PROMPT_BYTES + 1) -> torch.Tensor:
    """(B, L) int64 token ids, L = longest prompt + 1 (at most max_len; longer prompts are cut)."""
    rows = [[BOS] + [b + 2 for b in p.encode("utf-8")][: max_len - 1] for p in prompts]
    L = max(len(r) for r in rows)
    out = torch.full((len(rows), L), PAD, dtype=torch.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_head: int, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Multi-head softmax(QKᵀ/√d)V. q (B, Lq, D), k/v (B, Lk, D), key_mask (B, Lk) True = attend."""
    B, Lq, D = q.shape
    Lk = k.shape[1]
    q = q.view(B, Lq, n_head, D // n_head).transpose(1, 2)  # (B, h, Lq, d)
    k = k.view(B, Lk, n_head, D // n_head).transpose(1, 2)
    v = v.view(B, Lk, n_head, D // n_head).transpose(1, 2)
    att = (q @ k.transpose(-1, -2)) * (D // n_head) ** -0.5  # (B, h, Lq, Lk)
    if key_mask is not None:  # explicit matmuls: on CPU at these tiny shapes they beat SDPA's kernel ~3x
        att = att.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    y = att.softmax(dim=-1) @ v  # (B, h, Lq, d)
    return y.transpose(1, 2).reshape(B, Lq, D)


class SelfAttention(nn.Module):
    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.n_head, self.qkv, self.proj = n_head, nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(attention(q, k, v, self.n_head, key_mask))


class EncoderLayer(nn.Module):
    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(d), SelfAttention(d, n_head)
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask)
        return x + self.ff(self.ln2(x))


class TextEncoder(nn.Module):
    """ids (B, L) -> (context (B, L, d), mask (B, L) bool, True at real tokens)."""

    def __init__(self, d: int = 64, n_layer: int = 2, n_head: int = 4, max_len: int = MAX_PROMPT_BYTES + 1):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, d)
        self.pos = nn.Parameter(torch.randn(max_len, d) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(d, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = ids != PAD
        x = self.tok(ids) + self.pos[: ids.shape[1]]
        for layer in self.layers:
            x = layer(x, mask)
        return self.ln_f(x), mask
