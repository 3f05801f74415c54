"""Cross-field checks of the deepseek model config (single-field ranges live in genlab.config)."""

from __future__ import annotations

from genlab.errors import GenlabError


def validate_deepseek(cfg) -> None:
    m = cfg.model
    if cfg.task != "lm":
        raise GenlabError(f"model.arch = 'deepseek' is a language model; it needs task = 'lm' (task is {cfg.task!r})")
    if m.qk_rope_head_dim % 2:
        raise GenlabError(f"model.qk_rope_head_dim = {m.qk_rope_head_dim} must be even (RoPE rotates pairs)")
    if m.num_experts_per_tok > m.n_routed_experts:
        raise GenlabError(f"model.num_experts_per_tok ({m.num_experts_per_tok}) must be <= "
                          f"model.n_routed_experts ({m.n_routed_experts})")
    if m.n_routed_experts % m.n_group:
        raise GenlabError(f"model.n_routed_experts ({m.n_routed_experts}) must be divisible by "
                          f"model.n_group ({m.n_group})")
    if m.topk_group > m.n_group:
        raise GenlabError(f"model.topk_group ({m.topk_group}) must be <= model.n_group ({m.n_group})")
    if m.topk_group * (m.n_routed_experts // m.n_group) < m.num_experts_per_tok:
        raise GenlabError(f"model.topk_group x experts per group = {m.topk_group * (m.n_routed_experts // m.n_group)} "
                          f"must be >= model.num_experts_per_tok ({m.num_experts_per_tok})")
    if m.first_k_dense_replace > m.n_layer:
        raise GenlabError(f"model.first_k_dense_replace ({m.first_k_dense_replace}) must be <= model.n_layer "
                          f"({m.n_layer})")
    if m.balance in ("seq_aux", "aux") and m.balance_alpha <= 0:
        raise GenlabError(f"model.balance = {m.balance!r} needs model.balance_alpha > 0 (e.g. 1e-3)")
