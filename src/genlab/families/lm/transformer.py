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

from genlab.ops.attention import attention, pick_backend
from genlab.ops.cache import PooledDecode, advance, cache_end, per_sequence
from genlab.ops.recompute import cheap
from genlab.ops.rope import apply_rope, rope_qkv, rope_table


def ffn_width(cfg) -> int:
    """SwiGLU width of a decoder config (DecoderArgs.ffn_width)."""
    return cfg.ffn_width()


class _RMSNormFn(torch.autograd.Function):
    """y = x / rms(x) * w, with a hand-written backward.

    On CPU `F.rms_norm` runs as about 15 separate elementwise ops forward and backward, each
    writing a fresh full-size tensor (and on CPU a fresh large tensor costs page faults, more
    than the arithmetic). This one writes one full-size tensor forward and one backward, and keeps
    only the (N, 1) inverse rms besides the input.
    """

    @staticmethod
    def forward(ctx, x, weight, eps: float):
        d = x.shape[-1]
        acc = torch.promote_types(x.dtype, torch.float32)  # sum of squares in >= fp32
        ms = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=acc).square_() / d
        rstd = torch.rsqrt(ms + eps).to(x.dtype)  # (..., 1)
        y = torch.mul(x, rstd).mul_(weight)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, g):
        x, w, rstd = ctx.saved_tensors
        d = x.shape[-1]
        # with xhat = x * rstd: dw = sum over tokens of g * xhat, and
        # dx = rstd * (g w - xhat * mean(g w xhat)) = rstd g w - x * rstd^2 mean(g w x)
        gx = torch.mul(g, x).mul_(rstd)  # g * xhat, the only full-size temporary
        dw = gx.reshape(-1, d).sum(0)
        coef = (gx @ w).unsqueeze(-1).mul_(rstd.square() / -d)  # (..., 1): -rstd^2 mean(g w xhat)
        dx = torch.mul(g, w, out=gx).mul_(rstd)  # reuse gx's memory
        dx.addcmul_(x, coef)
        return dx, dw, None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        if x.device.type == "cpu" and x.dtype == self.weight.dtype and not torch.compiler.is_compiling():
            return cheap(_RMSNormFn.apply, x, self.weight, self.eps)
        # under torch.compile (train.compile) plain ops, which inductor fuses into one kernel
        # fused kernel on GPUs; mixed dtypes (CPU bf16 autocast: train.precision = bf16) promote as torch does
        return cheap(F.rms_norm, x, (x.shape[-1],), self.weight, self.eps)


class KVCache:
    """Keys and values of one sequence for every layer, preallocated to `max_len` tokens."""

    def __init__(self, n_layer: int, max_len: int, n_kv: int, head_dim: int, device, dtype):
        self.k = torch.zeros(n_layer, max_len, n_kv, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.len = 0  # tokens already stored (committed after the last layer)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        n = k.shape[0]
        self.k[layer, self.len : self.len + n] = k
        self.v[layer, self.len : self.len + n] = v
        return self.k[layer, : self.len + n], self.v[layer, : self.len + n]


class Attention(nn.Module):
    def __init__(self, cfg, layer: int, causal: bool = True):
        super().__init__()
        self.layer = layer
        self.causal = causal  # False: every token of a sequence sees every other (masked / any-order)
        self.n_head = cfg.n_head
        self.n_kv = cfg.n_kv_head or cfg.n_head
        self.head_dim = cfg.d_model // cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, (self.n_head + 2 * self.n_kv) * self.head_dim, bias=False)
        self.proj = nn.Linear(self.n_head * self.head_dim, cfg.d_model, bias=False)
        self.backend = pick_backend(cfg.attn_backend)

    def forward(self, x, cos, sin, cu_seqlens, max_seqlen, cache: KVCache | None = None):
        T = x.shape[0]
        qkv = self.qkv(x).view(T, self.n_head + 2 * self.n_kv, self.head_dim)
        if torch.compiler.is_compiling():  # plain ops for inductor to fuse (train.compile)
            q, k, v = qkv.split([self.n_head, self.n_kv, self.n_kv], dim=1)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        else:
            q, k, v = cheap(rope_qkv, qkv, cos, sin, self.n_head, self.n_kv)
        if cache is None:
            y = attention(q, k, v, cu_seqlens, max_seqlen, causal=self.causal, backend=self.backend)
        elif isinstance(cache, PooledDecode):  # genlab serve: one token for each of many sequences
            y = cache.attend(self.layer, q, k, v)
        else:  # one cache, or a CacheBatch of several sequences' caches (genlab serve)
            y = per_sequence(self._cached, cache, q, k, v)
        return self.proj(y.reshape(T, self.n_head * self.head_dim))

    def _cached(self, q, k, v, cache: KVCache):
        """New queries (one sequence) against every cached key so far plus their own."""
        past = cache.len
        k_all, v_all = cache.update(self.layer, k, v)
        T, S = q.shape[0], k_all.shape[0]
        mask = None
        if T > 1:  # query i sits at absolute position past + i and sees keys 0..past + i
            mask = torch.arange(S, device=q.device)[None, :] <= (past + torch.arange(T, device=q.device))[:, None]
        y = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None],
            k_all.transpose(0, 1)[None],
            v_all.transpose(0, 1)[None],
            attn_mask=mask,
            enable_gqa=self.n_kv != self.n_head,
        )
        return y[0].transpose(0, 1)


def silu_mul(gate: torch.Tensor, up: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """silu(gate) * up, written into `out` (or a fresh contiguous tensor): two passes, one tensor.
    gate and up are usually the strided halves of one fused projection."""
    out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device) if out is None else out
    return torch.ops.aten.silu.out(gate, out=out).mul_(up)


class _SwiGLUFn(torch.autograd.Function):
    """silu(gate) * up from the fused (..., 2 * hidden) projection. The backward writes both
    halves of the gradient into one (..., 2 * hidden) tensor (plain autograd makes three
    temporaries and then concatenates them) and recomputes silu(gate) instead of storing it."""

    @staticmethod
    def forward(ctx, gate_up, hidden: int):
        gate, up = gate_up.split(hidden, dim=-1)
        ctx.save_for_backward(gate_up)
        ctx.hidden = hidden
        return silu_mul(gate, up)

    @staticmethod
    def backward(ctx, g):
        (gate_up,) = ctx.saved_tensors
        gate, up = gate_up.split(ctx.hidden, dim=-1)
        d = torch.empty_like(gate_up)
        d_gate, d_up = d.split(ctx.hidden, dim=-1)
        torch.ops.aten.silu.out(gate, out=d_up).mul_(g)  # silu(gate) recomputed in place
        torch.mul(g, up, out=d_gate)
        torch.ops.aten.silu_backward.grad_input(d_gate, gate, grad_input=d_gate)  # *= silu'(gate)
        return d, None


class SwiGLU(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.gate_up = nn.Linear(d, 2 * hidden, bias=False)  # one GEMM for gate and up
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        if torch.compiler.is_compiling():  # plain ops for inductor to fuse (train.compile)
            gate, up = self.gate_up(x).split(self.hidden, dim=-1)
            return self.down(F.silu(gate) * up)
        return self.down(cheap(_SwiGLUFn.apply, self.gate_up(x), self.hidden))


class Block(nn.Module):
    def __init__(self, cfg, layer: int, causal: bool = True):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer, causal)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, ffn_width(cfg))

    def forward(self, x, cos, sin, cu_seqlens, max_seqlen, cache=None):
        # residual adds in place into the sublayer's output (a fresh tensor that nothing saved
        # for backward): one full-size allocation fewer each
        if torch.compiler.is_compiling():  # out-of-place adds: inductor fuses them (train.compile)
            x = self.attn(self.attn_norm(x), cos, sin, cu_seqlens, max_seqlen, cache) + x
            return self.mlp(self.mlp_norm(x)) + x
        x = self.attn(self.attn_norm(x), cos, sin, cu_seqlens, max_seqlen, cache).add_(x)
        return self.mlp(self.mlp_norm(x)).add_(x)


class DecoderLM(nn.Module):
    """The skeleton genlab's decoder LMs share (this dense Transformer, families.deepseek.model.DeepSeekLM):
    token embedding, `blocks`, final RMSNorm, output head (optionally tied to the embedding), a RoPE
    table grown on demand, and GPT-2-style initialisation: N(0, init_std) for every matrix, divided by
    sqrt(2 n_layer) for the residual output projections named in OUT_PROJ. Subclasses build their
    blocks, provide `rope_tables(n)` and may register more modules after `_build`."""

    OUT_PROJ: tuple[str, ...] = ()  # parameter-name suffixes of the projections into the residual stream

    def _build(self, cfg, vocab_size: int, blocks, max_len: int) -> None:
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(blocks)
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self._rope_len = 0
        self._extend_rope(max_len)

    def rope_tables(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def aux_loss(self, batch, h):
        """A mean-scale training loss beside the LM loss (deepseek: balance, MTP); None = none."""
        return None

    def on_optimizer_step(self, lr_factor: float = 1.0, skipped: bool = False) -> dict:
        """Called once per optimizer step; returns metrics for metrics.jsonl (deepseek: MoE loads)."""
        return {}

    def info_lines(self) -> list[str]:
        """Model-specific `genlab info` lines; [] = the generic parameter count."""
        return []

    def reset_parameters(self):
        std = self.cfg.init_std
        out_scale = 1 / math.sqrt(2 * self.cfg.n_layer)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=std * (out_scale if name.endswith(self.OUT_PROJ) else 1))

    def _extend_rope(self, n: int):
        if n <= self._rope_len:
            return
        n = max(n, 2 * self._rope_len)
        cos, sin = self.rope_tables(n)
        device = self.embed.weight.device
        self.register_buffer("rope_cos", cos.to(device), persistent=False)
        self.register_buffer("rope_sin", sin.to(device), persistent=False)
        self._rope_len = n

    def rope(self, position_ids, upto: int):
        """cos, sin at these positions, the table grown to cover `upto` first."""
        self._extend_rope(upto)
        return self.rope_cos[position_ids], self.rope_sin[position_ids]

    def _trunk(self, input_ids, position_ids, cu_seqlens, max_seqlen, cache=None):
        """input_ids (T,) -> hidden states (T, d_model) after the final norm; a cache gets the new tokens."""
        cos, sin = self.rope(position_ids, int(max_seqlen) if cache is None else cache_end(cache, input_ids.shape[0]))
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x, cos, sin, cu_seqlens, max_seqlen, cache)
        if cache is not None:
            advance(cache, input_ids.shape[0])
        return self.norm(x)


class Transformer(DecoderLM):
    OUT_PROJ = ("proj.weight", "down.weight")
    # train.lora_targets -> module-name suffixes of the projections LoRA adapts (genlab.train.lora)
    LORA_TARGETS = {"attention": ("attn.qkv", "attn.proj"), "mlp": ("mlp.gate_up", "mlp.down")}

    def __init__(self, cfg, vocab_size: int, max_len: int = 2048, causal: bool = True):
        super().__init__()
        self.causal = causal
        self.head_dim = cfg.d_model // cfg.n_head
        self._build(cfg, vocab_size, (Block(cfg, i, causal) for i in range(cfg.n_layer)), max_len)
        self.reset_parameters()

    def rope_tables(self, n: int):
        return rope_table(n, self.head_dim, self.cfg.rope_theta)

    def forward(self, input_ids, position_ids, cu_seqlens, max_seqlen, cache: KVCache | None = None):
        """input_ids (T,) -> hidden states (T, d_model) after the final norm."""
        if cache is not None and not self.causal:
            raise ValueError("a bidirectional model has no incremental (KV-cached) decoding")
        return self._trunk(input_ids, position_ids, cu_seqlens, max_seqlen, cache)

    def new_cache(self, max_len: int) -> KVCache:
        w = self.embed.weight
        return KVCache(
            self.cfg.n_layer, max_len, self.cfg.n_kv_head or self.cfg.n_head, self.head_dim, w.device, w.dtype
        )
