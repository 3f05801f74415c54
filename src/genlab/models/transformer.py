"""Dense decoder-only Transformer over a flat packed token stream.

Pre-norm RMSNorm, RoPE (positions restart per document), SwiGLU MLP, grouped-query attention,
optional tied embeddings. Shapes: the whole batch is one stream of T real tokens, (T, d_model);
`cu_seqlens` tells attention where sequences start and end.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from genlab.config import ModelConfig
from genlab.ops.attention import attention, pick_backend
from genlab.ops.rope import apply_rope, rope_table


def ffn_width(cfg: ModelConfig) -> int:
    if cfg.ffn_hidden:
        return cfg.ffn_hidden
    return 32 * math.ceil(8 * cfg.d_model / 3 / 32)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class KVCache:
    """Keys and values of one sequence for every layer, preallocated to `max_len` tokens."""

    def __init__(self, n_layer: int, max_len: int, n_kv: int, head_dim: int, device, dtype):
        self.k = torch.zeros(n_layer, max_len, n_kv, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.len = 0  # tokens already stored (committed after the last layer)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        n = k.shape[0]
        self.k[layer, self.len:self.len + n] = k
        self.v[layer, self.len:self.len + n] = v
        return self.k[layer, :self.len + n], self.v[layer, :self.len + n]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head = cfg.n_head
        self.n_kv = cfg.n_kv_head or cfg.n_head
        self.head_dim = cfg.d_model // cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, (self.n_head + 2 * self.n_kv) * self.head_dim, bias=False)
        self.proj = nn.Linear(self.n_head * self.head_dim, cfg.d_model, bias=False)
        self.backend = pick_backend(cfg.attn_backend)

    def forward(self, x, cos, sin, cu_seqlens, max_seqlen, cache: KVCache | None = None):
        T = x.shape[0]
        qkv = self.qkv(x).view(T, self.n_head + 2 * self.n_kv, self.head_dim)
        q, k, v = qkv.split([self.n_head, self.n_kv, self.n_kv], dim=1)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None:
            y = attention(q, k, v, cu_seqlens, max_seqlen, causal=True, backend=self.backend)
        else:
            y = self._cached(q, k, v, cache)
        return self.proj(y.reshape(T, self.n_head * self.head_dim))

    def _cached(self, q, k, v, cache: KVCache):
        """New queries (one sequence) against every cached key so far plus their own."""
        past = cache.len
        k_all, v_all = cache.update(self.layer, k, v)
        T, S = q.shape[0], k_all.shape[0]
        mask = None
        if T > 1:  # query i sits at absolute position past + i and sees keys 0..past + i
            mask = torch.arange(S, device=q.device)[None, :] <= (past + torch.arange(T, device=q.device))[:, None]
        y = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k_all.transpose(0, 1)[None],
                                           v_all.transpose(0, 1)[None], attn_mask=mask,
                                           enable_gqa=self.n_kv != self.n_head)
        return y[0].transpose(0, 1)


class SwiGLU(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.gate_up = nn.Linear(d, 2 * hidden, bias=False)  # one GEMM for gate and up
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).split(self.hidden, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, ffn_width(cfg))

    def forward(self, x, cos, sin, cu_seqlens, max_seqlen, cache=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, cu_seqlens, max_seqlen, cache)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, max_len: int = 2048):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self.head_dim = cfg.d_model // cfg.n_head
        self._rope_len = 0
        self._extend_rope(max_len)
        self.reset_parameters()

    def reset_parameters(self):
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                scale = 1 / math.sqrt(2 * self.cfg.n_layer) if name.endswith(("proj.weight", "down.weight")) else 1
                nn.init.normal_(p, std=std * scale)

    def _extend_rope(self, n: int):
        if n <= self._rope_len:
            return
        n = max(n, 2 * self._rope_len)
        cos, sin = rope_table(n, self.head_dim, self.cfg.rope_theta)
        device = self.embed.weight.device
        self.register_buffer("rope_cos", cos.to(device), persistent=False)
        self.register_buffer("rope_sin", sin.to(device), persistent=False)
        self._rope_len = n

    def forward(self, input_ids, position_ids, cu_seqlens, max_seqlen, cache: KVCache | None = None):
        """input_ids (T,) -> hidden states (T, d_model) after the final norm."""
        self._extend_rope(int(max_seqlen) if cache is None else cache.len + input_ids.shape[0])
        cos, sin = self.rope_cos[position_ids], self.rope_sin[position_ids]
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x, cos, sin, cu_seqlens, max_seqlen, cache)
        if cache is not None:
            cache.len += input_ids.shape[0]
        return self.norm(x)

    def new_cache(self, max_len: int) -> KVCache:
        w = self.embed.weight
        return KVCache(self.cfg.n_layer, max_len, self.cfg.n_kv_head or self.cfg.n_head, self.head_dim,
                       w.device, w.dtype)
