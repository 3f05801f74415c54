"""Build a language model of the lm family from its args."""

from __future__ import annotations

import torch.nn as nn

from genlab.errors import GenlabError
from genlab.families.lm.args import LMArgs
from genlab.families.lm.rnn import RNNLM
from genlab.families.lm.transformer import Transformer


def build_model(args: LMArgs, vocab_size: int, max_len: int = 2048, causal: bool = True) -> nn.Module:
    if args.arch == "transformer":
        return Transformer(args, vocab_size, max_len, causal)
    if not causal:
        raise GenlabError(f"model.arch {args.arch!r} is causal only")
    return RNNLM(args, vocab_size)


def count_params(model: nn.Module) -> dict[str, int]:
    """Total (tied weights counted once), embedding, and non-embedding parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    emb = sum(p.numel() for n, p in model.named_parameters() if n.startswith("embed."))
    return {"total": total, "embedding": emb, "non_embedding": total - emb}
