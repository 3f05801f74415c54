"""Online action detectors over a window of the last T feature frames (the current frame last).

OadTR (Wang et al., ICCV 2021): frames -> Linear embedding; a learnable task token appended at
the END of the sequence; learned positional encoding over T + 1 positions; a pre-norm Transformer
encoder with a final LayerNorm. A decoder of `future_steps` learnable queries (one per upcoming
frame, no positional encoding), each layer post-norm: causal self-attention among the queries ->
add & norm -> cross-attention to every encoder output -> add & norm -> GELU FFN -> add & norm; a
final LayerNorm. Heads: per-query Linear -> future-frame logits; [mean of the decoder outputs,
encoder output at the task token] -> Linear -> current-frame logits.

RNNDetector: the recurrent baseline the paper contrasts with: the same embedding, a GRU or LSTM
over the same window from a zero state, LayerNorm, Linear -> current-frame logits.

Both expose `embed(x)` (per frame, so a stream can embed each frame once) and
`forward_embedded(e)`; `forward(x) = forward_embedded(embed(x))` returns
(current logits (B, C), future logits (B, future_steps, C) or None). C counts background and the
action classes; the ambiguous label has no logit (the reference drops its logit before softmax).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    """Multi-head attention; self-attention when `mem` is None, else cross-attention to `mem`."""

    def __init__(self, d: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, mem: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        B, Lq, d = x.shape
        mem = x if mem is None else mem
        Lk, h = mem.shape[1], self.n_head
        q = self.q(x).view(B, Lq, h, d // h).transpose(1, 2)  # (B, h, Lq, dh)
        k, v = self.kv(mem).view(B, Lk, 2, h, d // h).permute(2, 0, 3, 1, 4)  # each (B, h, Lk, dh)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=causal)
        return self.proj(y.transpose(1, 2).reshape(B, Lq, d))


def _ffn(d: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d))


class EncoderLayer(nn.Module):
    """Pre-norm: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, d: int, n_head: int, hidden: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, n_head, dropout)
        self.mlp = _ffn(d, hidden, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.mlp(self.ln2(x)))


class DecoderLayer(nn.Module):
    """Post-norm (Informer style): causal self-attention, cross-attention to the encoder, FFN."""

    def __init__(self, d: int, n_head: int, hidden: int, dropout: float):
        super().__init__()
        self.self_attn = Attention(d, n_head, dropout)
        self.cross_attn = Attention(d, n_head, dropout)
        self.ffn = _ffn(d, hidden, dropout)
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, q, mem):
        q = self.ln1(q + self.drop(self.self_attn(q, causal=True)))  # query j sees queries <= j
        q = self.ln2(q + self.drop(self.cross_attn(q, mem)))
        return self.ln3(q + self.drop(self.ffn(q)))


class OadTR(nn.Module):
    def __init__(
        self,
        feat_dim: int,
        n_classes: int,
        history: int,
        d_model: int,
        n_layer: int,
        n_head: int,
        hidden: int,
        dec_layers: int,
        dec_heads: int,
        future_steps: int,
        dropout: float,
    ):
        super().__init__()
        d = d_model
        self.history, self.future_steps, self.n_classes = history, future_steps, n_classes
        self.embed = nn.Linear(feat_dim, d)
        self.task_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, history + 1, d) * 0.02)  # learned, T frames + task token
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.ModuleList(EncoderLayer(d, n_head, hidden, dropout) for _ in range(n_layer))
        self.enc_norm = nn.LayerNorm(d)
        self.queries = nn.Parameter(torch.randn(1, future_steps, d) * 0.02)
        self.decoder = nn.ModuleList(DecoderLayer(d, dec_heads, hidden, dropout) for _ in range(dec_layers))
        self.dec_norm = nn.LayerNorm(d)
        self.future_head = nn.Linear(d, n_classes)
        self.current_head = nn.Linear(2 * d, n_classes)

    def forward_embedded(self, e: torch.Tensor):
        """e (B, T, d) embedded frames, oldest first -> (B, C), (B, future_steps, C)."""
        B = e.shape[0]
        x = torch.cat([e, self.task_token.expand(B, -1, -1)], dim=1) + self.pos  # (B, T + 1, d)
        x = self.drop(x)
        for layer in self.encoder:
            x = layer(x)
        mem = self.enc_norm(x)
        q = self.queries.expand(B, -1, -1)  # (B, future_steps, d)
        for layer in self.decoder:
            q = layer(q, mem)
        q = self.drop(self.dec_norm(q))
        future = self.future_head(q)  # (B, future_steps, C)
        current = self.current_head(torch.cat([q.mean(dim=1), mem[:, -1]], dim=-1))  # (B, C)
        return current, future

    def forward(self, x: torch.Tensor):
        """x (B, T, feat_dim) -> (B, C), (B, future_steps, C)."""
        return self.forward_embedded(self.embed(x))


class RNNDetector(nn.Module):
    def __init__(
        self, kind: str, feat_dim: int, n_classes: int, history: int, d_model: int, n_layer: int, dropout: float
    ):
        super().__init__()
        self.history, self.future_steps, self.n_classes = history, 0, n_classes
        self.embed = nn.Linear(feat_dim, d_model)
        rnn_cls = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = rnn_cls(
            d_model, d_model, num_layers=n_layer, batch_first=True, dropout=dropout if n_layer > 1 else 0.0
        )
        self.norm = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, n_classes)

    def forward_embedded(self, e: torch.Tensor):
        """e (B, T, d) -> (B, C), None. The state starts at zero for every window."""
        y, _ = self.rnn(self.drop(e))  # (B, T, d)
        return self.head(self.drop(self.norm(y[:, -1]))), None

    def forward(self, x: torch.Tensor):
        return self.forward_embedded(self.embed(x))


def build_detector(cfg, feat_dim: int, n_classes: int, history: int) -> nn.Module:
    if cfg.arch == "oadtr":
        hidden = cfg.ffn_hidden or cfg.d_model  # the reference uses MLP width = embedding width
        return OadTR(
            feat_dim,
            n_classes,
            history,
            cfg.d_model,
            cfg.n_layer,
            cfg.n_head,
            hidden,
            cfg.dec_layers,
            cfg.dec_heads,
            cfg.future_steps,
            cfg.dropout,
        )
    return RNNDetector(cfg.arch, feat_dim, n_classes, history, cfg.d_model, cfg.n_layer, cfg.dropout)
