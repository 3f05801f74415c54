"""LSTM and GRU language models: the recurrent baselines the Transformer replaced.

They read the same flat packed stream as the Transformer. Each sequence in `cu_seqlens` runs
with a fresh state through a PackedSequence, so no state leaks across documents and no step
is spent on padding.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_sequence


class RNNCache:
    def __init__(self):
        self.state = None
        self.len = 0


class RNNLM(nn.Module):
    def __init__(self, cfg, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        rnn_cls = nn.LSTM if cfg.arch == "lstm" else nn.GRU
        self.rnn = rnn_cls(cfg.d_model, cfg.d_model, num_layers=cfg.n_layer)
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        nn.init.normal_(self.embed.weight, std=cfg.init_std)
        if not cfg.tie_embeddings:
            nn.init.normal_(self.head.weight, std=cfg.init_std)

    def forward(self, input_ids, position_ids, cu_seqlens, max_seqlen, cache: RNNCache | None = None):
        """input_ids (T,) -> hidden states (T, d_model)."""
        x = self.embed(input_ids)
        if cache is not None:  # one sequence, continuing from the cached state
            y, cache.state = self.rnn(x[:, None, :], cache.state)
            cache.len += x.shape[0]
            return self.norm(y[:, 0])
        lens = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
        lens = [n for n in lens if n > 0]
        packed = pack_sequence(list(x.split(lens)), enforce_sorted=False)
        # Where each row of packed.data came from in the flat stream: pack the positions the same way.
        idx = pack_sequence(list(torch.arange(x.shape[0], device=x.device).split(lens)), enforce_sorted=False)
        y, _ = self.rnn(packed)
        out = torch.empty_like(y.data).index_copy(0, idx.data, y.data)
        return self.norm(out)

    def aux_loss(self, batch, h):
        """A mean-scale training loss beside the LM loss (deepseek: balance, MTP); None = none."""
        return None

    def on_optimizer_step(self, lr_factor: float = 1.0, skipped: bool = False) -> dict:
        """Called once per optimizer step; returns metrics for metrics.jsonl (deepseek: MoE loads)."""
        return {}

    def info_lines(self) -> list[str]:
        """Model-specific `genlab info` lines; [] = the generic parameter count."""
        return []

    def new_cache(self, max_len: int) -> RNNCache:
        return RNNCache()
