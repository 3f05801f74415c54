"""Multi-head Latent Attention (DeepSeek-V2/V3) over the flat packed token stream.

Per token x (d): optional query latent c_q = norm(W_DQ x) (q_lora_rank), per-head query
[q_nope (n) | q_rope (r)]; KV latent c = norm(W_DKV x) (C = kv_lora_rank) and ONE rope key k_R (r)
shared by all heads; per-head keys [W_UK c | k_R] and values W_UV c. RoPE rotates interleaved pairs
of the rope dims only. Softmax scale (n + r)^-1/2 (x mscale^2 with YaRN).

Training decompresses K/V and calls genlab.ops.attention (document masking from cu_seqlens).
Decoding caches only c and k_R per token (C + r values per layer) and uses the absorbed form:
W_UK folded into the query, attention over the latents, W_UV applied after the softmax.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from genlab.families.lm.transformer import RMSNorm
from genlab.ops.attention import attention, pick_backend
from genlab.ops.cache import per_sequence
from genlab.ops.recompute import cheap
from genlab.ops.rope import apply_rope_interleaved, rope_table, yarn_inv_freq, yarn_mscale

LATENT_NORM_EPS = 1e-6  # the latent RMSNorms' epsilon (fixed, as in the released models)


def mla_rope_table(cfg, n: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (n, r/2) for the rope dims, with YaRN frequencies and cos/sin scaling if configured."""
    r = cfg.qk_rope_head_dim
    if cfg.rope_scaling != "yarn":
        return rope_table(n, r, cfg.rope_theta, device)
    inv = yarn_inv_freq(
        r,
        cfg.rope_theta,
        cfg.rope_factor,
        cfg.rope_original_max_position_embeddings,
        cfg.rope_beta_fast,
        cfg.rope_beta_slow,
    ).to(device)
    ang = torch.arange(n, dtype=torch.float32, device=device)[:, None] * inv[None, :]
    att = yarn_mscale(cfg.rope_factor, cfg.rope_mscale) / yarn_mscale(cfg.rope_factor, cfg.rope_mscale_all_dim)
    return ang.cos() * att, ang.sin() * att


def softmax_scale(cfg) -> float:
    s = (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) ** -0.5
    if cfg.rope_scaling == "yarn" and cfg.rope_mscale_all_dim:
        s *= yarn_mscale(cfg.rope_factor, cfg.rope_mscale_all_dim) ** 2
    return s


class MLACache:
    """Per-layer decode cache of one sequence. mode "latent": c (L, S, C) and k_R (L, S, r), the
    absorbed path; mode "full": per-head K (L, S, H, n + r) and V (L, S, H, v), the naive path."""

    def __init__(self, cfg, n_layer: int, max_len: int, mode: str = "latent", device=None, dtype=torch.float32):
        self.mode, self.len, self.max_len = mode, 0, max_len
        H, n, r, v, C = cfg.n_head, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
        if mode == "latent":
            self.a = torch.zeros(n_layer, max_len, C, device=device, dtype=dtype)
            self.b = torch.zeros(n_layer, max_len, r, device=device, dtype=dtype)
        else:
            self.a = torch.zeros(n_layer, max_len, H, n + r, device=device, dtype=dtype)
            self.b = torch.zeros(n_layer, max_len, H, v, device=device, dtype=dtype)

    def update(self, layer: int, a: torch.Tensor, b: torch.Tensor):
        n = a.shape[0]
        self.a[layer, self.len : self.len + n] = a
        self.b[layer, self.len : self.len + n] = b
        return self.a[layer, : self.len + n], self.b[layer, : self.len + n]

    def bytes_per_token(self) -> int:
        per = (self.a[0, 0].numel() + self.b[0, 0].numel()) * self.a.element_size()
        return per * self.a.shape[0]


class MLA(nn.Module):
    def __init__(self, cfg, layer: int):
        super().__init__()
        self.layer = layer
        d, H = cfg.d_model, cfg.n_head
        self.H, self.n, self.r, self.v, self.C = (
            H,
            cfg.qk_nope_head_dim,
            cfg.qk_rope_head_dim,
            cfg.v_head_dim,
            cfg.kv_lora_rank,
        )
        qk = self.n + self.r
        if cfg.q_lora_rank:
            self.wq_a = nn.Linear(d, cfg.q_lora_rank, bias=False)
            self.q_norm = RMSNorm(cfg.q_lora_rank, LATENT_NORM_EPS)
            self.wq_b = nn.Linear(cfg.q_lora_rank, H * qk, bias=False)
        else:
            self.wq = nn.Linear(d, H * qk, bias=False)
        self.wkv_a = nn.Linear(d, self.C + self.r, bias=False)  # [latent C | rope key r]
        self.kv_norm = RMSNorm(self.C, LATENT_NORM_EPS)
        self.wkv_b = nn.Linear(self.C, H * (self.n + self.v), bias=False)  # per head [W_UK (n) ; W_UV (v)]
        self.wo = nn.Linear(H * self.v, d, bias=False)
        self.scale = softmax_scale(cfg)
        self.backend = pick_backend(cfg.attn_backend)

    def _project(self, x, cos, sin):
        T = x.shape[0]
        q = self.wq_b(self.q_norm(self.wq_a(x))) if hasattr(self, "wq_a") else self.wq(x)
        q_nope, q_rope = q.view(T, self.H, self.n + self.r).split([self.n, self.r], dim=-1)
        q_rope = apply_rope_interleaved(q_rope, cos, sin)  # (T, H, r)
        c, k_rope = self.wkv_a(x).split([self.C, self.r], dim=-1)
        c = self.kv_norm(c)  # (T, C)
        k_rope = apply_rope_interleaved(k_rope[:, None, :], cos, sin)  # (T, 1, r), shared by all heads
        return q_nope, q_rope, c, k_rope

    def _expand(self, c, k_rope):
        """Latents -> per-head keys (T, H, n + r) and values (T, H, v)."""
        T = c.shape[0]
        k_nope, v = self.wkv_b(c).view(T, self.H, self.n + self.v).split([self.n, self.v], dim=-1)
        k = torch.cat((k_nope, k_rope.expand(T, self.H, self.r)), dim=-1)
        return k, v

    def _queries(self, q_in, cos, sin):
        """Per-head queries [q_nope | rope(q_rope)] (T, H, n + r) from the normed query latent
        (through the up-projection W_UQ) or, without a query latent, from the projection output."""
        q = self.wq_b(q_in) if hasattr(self, "wq_a") else q_in
        q_nope, q_rope = q.view(q.shape[0], self.H, self.n + self.r).split([self.n, self.r], dim=-1)
        return torch.cat((q_nope, apply_rope_interleaved(q_rope, cos, sin)), dim=-1)

    def _keys_values(self, c, k_rope, cos, sin):
        """Per-head keys and values from the normed KV latent (the up-projections W_UK, W_UV) and the
        raw shared rope key."""
        return self._expand(c, apply_rope_interleaved(k_rope[:, None, :], cos, sin))

    def forward(self, x, cos, sin, cu_seqlens, max_seqlen, cache: MLACache | None = None):
        T = x.shape[0]
        if cache is None:
            # training / full-sequence forward. Under selective checkpointing the query and key/value
            # assembly, the up-projections included (DeepSeek-V3 sec. 3.2.3), is recomputed in backward
            q_in = self.q_norm(self.wq_a(x)) if hasattr(self, "wq_a") else self.wq(x)
            q = cheap(self._queries, q_in, cos, sin)
            c, k_rope = self.wkv_a(x).split([self.C, self.r], dim=-1)
            k, v = cheap(self._keys_values, self.kv_norm(c), k_rope, cos, sin)
            y = attention(q, k, v, cu_seqlens, max_seqlen, causal=True, scale=self.scale, backend=self.backend)
            return self.wo(y.reshape(T, self.H * self.v))
        q_nope, q_rope, c, k_rope = self._project(x, cos, sin)
        # one cache, or a CacheBatch of several sequences' caches (genlab serve): attention per sequence
        mode = getattr(cache, "mode", None) or cache.caches[0].mode
        if mode == "latent":
            y = per_sequence(self._absorbed, cache, q_nope, q_rope, c, k_rope[:, 0])
        else:
            y = per_sequence(self._full_cached, cache, q_nope, q_rope, c, k_rope)
        return self.wo(y.reshape(T, self.H * self.v))

    def _mask(self, T, S, past, device):
        if T == 1:
            return None  # one new query sees every cached key
        return torch.arange(S, device=device)[None, :] <= (past + torch.arange(T, device=device))[:, None]

    def _absorbed(self, q_nope, q_rope, c, k_rope, cache: MLACache):
        """Attention straight over the cached latents (V2 App. C): per-head K/V never exist."""
        past = cache.len
        c_all, kr_all = cache.update(self.layer, c, k_rope)  # (S, C), (S, r)
        T, S = q_nope.shape[0], c_all.shape[0]
        w = self.wkv_b.weight.view(self.H, self.n + self.v, self.C)
        w_uk, w_uv = w[:, : self.n], w[:, self.n :]  # (H, n, C), (H, v, C)
        q_lat = torch.einsum("thn,hnc->htc", q_nope, w_uk)  # (H, T, C): W_UK folded into the query
        scores = (q_lat @ c_all.t() + q_rope.transpose(0, 1) @ kr_all.t()) * self.scale  # (H, T, S)
        mask = self._mask(T, S, past, q_nope.device)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        z = torch.softmax(scores, dim=-1) @ c_all  # (H, T, C): attend over the latents
        return torch.einsum("htc,hvc->thv", z, w_uv)  # (T, H, v): W_UV after attention

    def _full_cached(self, q_nope, q_rope, c, k_rope, cache: MLACache):
        """The naive decode path: per-head K and V cached (the baseline the latent cache is measured against)."""
        past = cache.len
        k, v = self._expand(c, k_rope)
        k_all, v_all = cache.update(self.layer, k, v)
        q = torch.cat((q_nope, q_rope), dim=-1)
        T, S = q.shape[0], k_all.shape[0]
        y = F.scaled_dot_product_attention(
            q.transpose(0, 1),
            k_all.transpose(0, 1),
            v_all.transpose(0, 1),
            attn_mask=self._mask(T, S, past, q.device),
            scale=self.scale,
        )
        return y.transpose(0, 1)
