"""FLOPs per token for genlab's models (matmul FLOPs; norms, activations and softmax are not counted).

Conventions (DeepSeek LLM, arXiv:2401.02954 §3.2):
- one multiply-add = 2 FLOPs; training = forward + backward = 3x the forward;
- attention scores and the weighted sum of values are counted over the full context l_seq,
  4 * d_attn * l_seq per layer per token forward (Q K^T and P V), not halved for causality;
- `M` = non-embedding training FLOPs per token, attention included, vocabulary head excluded.
  For the standard dense model (multi-head attention 4d^2, SwiGLU 8/3 d wide = 8d^2 params):

      M = 72 * n_layer * d^2 + 12 * n_layer * d * l_seq          (deepseek_M below)

  and C = M * D is the training compute of D tokens (no extra factor 6).
- 6*N1 = 6 * non-embedding matmul parameters (Kaplan); 6*N2 = 6 * (N1 + the vocabulary head, V*d)
  (DeepSeek's "Chinchilla" count: 72 n d^2 + 6 V d; the embedding lookup is not a matmul).

Beyond the dense case every layer is described by the matmul shapes a token actually goes
through (`LayerShapes`): its activated weight elements and its attention widths. Then
M = 3 * sum over layers of (2 * matmul_params + 2 * (attn_qk + attn_v) * l_seq). This is honest
for the variants genlab has or will have:

- grouped-query attention: the K and V projections are n_kv_head * head_dim wide, not d
  (`attention_shapes`); score and value widths stay n_head * head_dim;
- multi-head latent attention (DeepSeek-V2/V3, `mla_shapes`): low-rank query (optional), the
  joint KV latent plus one shared RoPE key, the per-head up-projection of the latent to keys and
  values, and the output projection; scores are (qk_nope + qk_rope) wide per head, values v wide.
  (This counts the training-time form that materialises per-head keys; absorbing W_UK into the
  query at inference changes the count, not training.)
- mixture of experts (`moe_shapes`): only the top_k routed experts plus the shared experts a
  token goes through, plus the router (d x n_routed).

The deepseek arch (genlab.families.deepseek) provides exactly what these need: d_model, n_head,
q_lora_rank (0 = plain query projection), kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim,
v_head_dim; n_routed_experts, n_shared_experts, num_experts_per_tok, moe_intermediate_size, and
first_k_dense_replace (dense SwiGLU layers, ffn_hidden wide). Its multi-token-prediction modules
run only in training and are not counted in M. Another model builds its list of LayerShapes the
same way (its model section's `layer_shapes()`) and calls `flops_from_layers`.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LayerShapes:
    """The activated matmul work of one layer for one token."""

    matmul_params: int  # weight elements the token is multiplied by (MoE: activated experts only)
    attn_qk: int = 0  # summed over heads: width of each query-key dot product (n_head * d_qk)
    attn_v: int = 0  # summed over heads: width of each value vector (n_head * d_v)

    def __add__(self, other: LayerShapes) -> LayerShapes:
        return LayerShapes(
            self.matmul_params + other.matmul_params, self.attn_qk + other.attn_qk, self.attn_v + other.attn_v
        )


def attention_shapes(d_model: int, n_head: int, n_kv_head: int, head_dim: int) -> LayerShapes:
    """Multi-head (n_kv_head == n_head) or grouped-query attention: QKV and output projections."""
    qkv = d_model * (n_head + 2 * n_kv_head) * head_dim
    out = n_head * head_dim * d_model
    return LayerShapes(qkv + out, n_head * head_dim, n_head * head_dim)


def swiglu_shapes(d_model: int, hidden: int) -> LayerShapes:
    """gate, up (d -> hidden) and down (hidden -> d)."""
    return LayerShapes(3 * d_model * hidden)


def mla_shapes(
    d_model: int,
    n_head: int,
    q_lora_rank: int,
    kv_lora_rank: int,
    qk_nope_head_dim: int,
    qk_rope_head_dim: int,
    v_head_dim: int,
) -> LayerShapes:
    """Multi-head latent attention (DeepSeek-V2/V3), training form."""
    qk = qk_nope_head_dim + qk_rope_head_dim
    if q_lora_rank:
        q = d_model * q_lora_rank + q_lora_rank * n_head * qk  # wq_a, wq_b
    else:
        q = d_model * n_head * qk  # wq
    kv_down = d_model * (kv_lora_rank + qk_rope_head_dim)  # wkv_a: latent + the shared rope key
    kv_up = kv_lora_rank * n_head * (qk_nope_head_dim + v_head_dim)  # wkv_b
    out = n_head * v_head_dim * d_model  # wo
    return LayerShapes(q + kv_down + kv_up + out, n_head * qk, n_head * v_head_dim)


def moe_shapes(d_model: int, expert_hidden: int, top_k: int, n_shared: int, n_routed: int) -> LayerShapes:
    """DeepSeekMoE FFN as one token sees it: top_k routed + n_shared SwiGLU experts, and the router."""
    return LayerShapes((top_k + n_shared) * 3 * d_model * expert_hidden + d_model * n_routed)


def flops_from_layers(layers: list[LayerShapes], d_model: int, vocab_size: int, seq_len: int) -> dict[str, float]:
    """FLOPs per token and parameter counts from per-layer activated matmul shapes."""
    n1 = sum(layer.matmul_params for layer in layers)
    attn_fwd = sum(2 * (layer.attn_qk + layer.attn_v) * seq_len for layer in layers)
    body_fwd = 2 * n1 + attn_fwd
    head = d_model * vocab_size
    return {
        "matmul_params": n1 + head,
        "fwd_flops_per_token": body_fwd + 2 * head,
        "train_flops_per_token": 3 * (body_fwd + 2 * head),
        "M": 3 * body_fwd,  # non-embedding training FLOPs per token (DeepSeek LLM's M)
        "N1": n1,  # non-embedding (activated) matmul parameters
        "N2": n1 + head,  # ... plus the vocabulary head
        "6N1": 6 * n1,
        "6N2": 6 * (n1 + head),
    }


def flops_per_token(args, vocab_size: int, seq_len: int) -> dict[str, float]:
    """Keys: M, fwd_flops_per_token, train_flops_per_token, matmul_params, N1, N2, 6N1, 6N2.
    `args` is a model section with `layer_shapes()` and `d_model` (a language-model family's)."""
    return flops_from_layers(args.layer_shapes(), args.d_model, vocab_size, seq_len)


def deepseek_M(n_layer: int, d_model: int, seq_len: int) -> int:
    """DeepSeek LLM Eq. 2 for the standard dense model."""
    return 72 * n_layer * d_model**2 + 12 * n_layer * d_model * seq_len


@functools.cache
def measured_peak_flops(device: str = "cpu") -> float:
    """This machine's dense matmul rate (FLOP/s), measured once per process and device.

    It is the rate a large GEMM actually reaches (fp32 on CPU, bf16 on CUDA), not a datasheet
    peak; MFU against it answers "how much of what this machine's GEMM does do we get". It costs
    about 0.05-0.2 s. Give train.peak_flops to compare against a datasheet number instead."""
    dev = torch.device(device)
    n = 512 if dev.type == "cpu" else 4096
    dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    best = float("inf")
    for _ in range(3):  # the fastest of three, after one warm-up
        torch.mm(a, b)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.mm(a, b)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best
