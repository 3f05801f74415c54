"""Self-supervised objectives over packed token streams: predict part of a sequence from the rest.

    causal     next token from the tokens before it (the default; the batch is used as packed)
    masked     BERT's masked-token prediction: in every sequence round(p * n) predictable tokens
               (at least one) are chosen; of those 80% become <mask>, 10% a random token, 10% stay;
               the loss is taken on the chosen tokens only; attention is bidirectional
    any-order  order-agnostic autoregression (MADE's random orderings, made trainable in one pass as
               in Uria et al. 2014 and Hoogeboom et al. 2022's ARDMs): for a random ordering sigma and
               a random step t, the tokens sigma(<t) are seen and every later one is predicted. With
               n predictable tokens and k = n - t + 1 masked ones (k uniform on 1..n),
                   n / k * sum over masked tokens of -log p(x_i | seen)
               is an unbiased estimate of E_sigma[-log p_sigma(x)], the negative log-likelihood under
               a random order: the loss per token of the sequence is then comparable with the causal
               one, and an upper bound on the model's NLL for the orders it mixes over.

The mask token is the id one past the tokenizer's vocabulary (`mask_id = vocab_size`): the model of a
masked or any-order run has one extra embedding row and never samples it. The start token (BOS) of
a sequence is always seen and never predicted. Everything here is vectorised over the flat stream.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from genlab.data.packing import IGNORE, Batch

OBJECTIVES = ("causal", "masked", "any-order")


def model_vocab(tokenizer_vocab: int, objective: str) -> int:
    """Embedding rows a model of this objective needs: the tokenizer's, plus <mask> (id tokenizer_vocab)
    for the bidirectional objectives."""
    return tokenizer_vocab + (0 if objective == "causal" else 1)


def _seq_index(cu_seqlens: torch.Tensor, T: int) -> torch.Tensor:
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    return torch.repeat_interleave(torch.arange(len(lens)), lens, output_size=T)


def _rank_within_sequence(seq: torch.Tensor, predictable: torch.Tensor, g: torch.Generator):
    """A uniformly random rank 0..n_s-1 for each predictable token among its sequence's predictable
    tokens (a random ordering), and n_s per sequence. Unpredictable tokens rank after all others."""
    T = seq.shape[0]
    u = torch.rand(T, generator=g, dtype=torch.float64)
    key = seq.double() * 2 + torch.where(predictable, u, torch.full_like(u, 1.5))
    order = torch.argsort(key)
    n_seq = int(seq.max()) + 1 if T else 0
    n_pred = torch.zeros(n_seq, dtype=torch.long).index_add_(0, seq, predictable.long())
    first = torch.zeros(n_seq, dtype=torch.long).index_add_(0, seq, torch.ones_like(seq))
    start = torch.cumsum(first, 0) - first  # index of each sequence's first token in the stream
    rank = torch.empty(T, dtype=torch.long)
    rank[order] = torch.arange(T) - start[seq[order]]
    return rank, n_pred


def apply_objective(
    batch: Batch,
    objective: str,
    mask_id: int,
    vocab_size: int,
    g: torch.Generator,
    mask_prob: float = 0.15,
    bos_id: int | None = None,
) -> Batch:
    """The batch rewritten for `objective`: corrupted inputs, targets only where the loss is defined,
    and (any-order) per-token loss weights with the sequence-token count as the normaliser."""
    if objective == "causal":
        return batch
    ids = batch.input_ids
    T = ids.shape[0]
    seq = _seq_index(batch.cu_seqlens, T)
    predictable = ids != bos_id if bos_id is not None else torch.ones(T, dtype=torch.bool)
    rank, n_pred = _rank_within_sequence(seq, predictable, g)
    if objective == "masked":
        k = torch.clamp(torch.round(n_pred.double() * mask_prob).long(), min=1)
        chosen = predictable & (rank < k[seq])
        r = torch.rand(T, generator=g)
        rand_tok = torch.randint(0, vocab_size, (T,), generator=g)
        new = torch.where(r < 0.8, torch.full_like(ids, mask_id), torch.where(r < 0.9, rand_tok, ids))
        inputs = torch.where(chosen, new, ids)
        targets = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
        return replace(batch, input_ids=inputs, targets=targets)
    if objective == "any-order":
        n = n_pred.clamp(min=1)
        k = (torch.rand(len(n_pred), generator=g, dtype=torch.float64) * n).long() + 1  # uniform on 1..n
        chosen = predictable & (rank < k[seq])
        inputs = torch.where(chosen, torch.full_like(ids, mask_id), ids)
        targets = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
        weights = torch.where(chosen, (n.double() / k.double())[seq], torch.zeros(T, dtype=torch.float64))
        return replace(
            batch, input_ids=inputs, targets=targets, weights=weights.float(), target_count=int(n_pred.sum())
        )
    raise ValueError(f"unknown objective {objective!r}; choose one of: {', '.join(OBJECTIVES)}")
