"""FLOPs per token for genlab's models (matmul FLOPs; elementwise work is not counted).

Conventions (DeepSeek LLM): one multiply-add = 2 FLOPs; training = forward + backward = 3x the
forward; attention counted over the full context length l_seq (4 * d_attn * l_seq per layer per
token forward: Q K^T and P V). `M` is the non-embedding training FLOPs per token, which for a
standard dense model equals 72 * n_layer * d^2 + 12 * n_layer * d * l_seq when the MLP is 4d wide
(8 d^2 params) — here the actual projection shapes are counted.
"""

from __future__ import annotations

from genlab.config import ModelConfig


def flops_per_token(cfg: ModelConfig, vocab_size: int, seq_len: int) -> dict[str, float]:
    d = cfg.d_model
    if cfg.arch == "transformer":
        from genlab.models.transformer import ffn_width

        H = cfg.n_head
        hd = d // H
        kv = cfg.n_kv_head or H
        per_layer_params = d * (H + 2 * kv) * hd + H * hd * d + 3 * d * ffn_width(cfg)
        attn_fwd = 4 * H * hd * seq_len  # per layer per token, forward
    else:
        gates = 4 if cfg.arch == "lstm" else 3
        per_layer_params = gates * (d * d + d * d)
        attn_fwd = 0
    body_fwd = cfg.n_layer * (2 * per_layer_params + attn_fwd)
    head_fwd = 2 * d * vocab_size
    return {
        "matmul_params": cfg.n_layer * per_layer_params + d * vocab_size,
        "fwd_flops_per_token": body_fwd + head_fwd,
        "train_flops_per_token": 3 * (body_fwd + head_fwd),
        "M": 3 * body_fwd,  # non-embedding training FLOPs per token (DeepSeek LLM's M)
    }
