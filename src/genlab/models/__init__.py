"""Model registry: build a model from its config."""

from __future__ import annotations

import torch.nn as nn

from genlab.config import ModelConfig


def build_lm(cfg: ModelConfig, vocab_size: int, max_len: int = 2048, causal: bool = True) -> nn.Module:
    if cfg.arch == "transformer":
        from genlab.models.transformer import Transformer

        return Transformer(cfg, vocab_size, max_len, causal)
    if not causal:
        raise ValueError(f"model.arch {cfg.arch!r} is causal only")
    if cfg.arch == "deepseek":
        from genlab.models.deepseek.model import DeepSeekLM

        return DeepSeekLM(cfg, vocab_size, max_len)
    from genlab.models.rnn import RNNLM

    return RNNLM(cfg, vocab_size)


def count_params(model: nn.Module) -> dict[str, int]:
    """Total (tied weights counted once), embedding, and non-embedding parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    emb = sum(p.numel() for n, p in model.named_parameters() if n.startswith("embed."))
    return {"total": total, "embedding": emb, "non_embedding": total - emb}
