"""Decode caches of several sequences in one forward (continuous batching, `genlab serve`).

A language model's decode cache (`model.new_cache(max_len)`: the dense KVCache, DeepSeek's MLA
latent cache) holds one sequence. `CacheBatch` puts several of them behind one forward: the flat
token stream holds sequence i's new tokens at rows bounds[i]:bounds[i + 1] (a prefill chunk or one
decode token each), every layer but attention sees the whole (T, d) matrix at once, and attention
runs per sequence over that sequence's own cache (`per_sequence`). A forward with a single cache
behaves exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class CacheBatch:
    """Sequence i's own cache `caches[i]` gets `counts[i]` new tokens, at rows bounds[i]:bounds[i+1]."""

    def __init__(self, caches: Sequence, counts: Sequence[int]):
        if len(caches) != len(counts) or not caches or min(counts) < 1:
            raise ValueError("CacheBatch needs one cache per sequence and at least one new token each")
        self.caches, self.counts = list(caches), [int(n) for n in counts]
        self.bounds = [0]
        for n in self.counts:
            self.bounds.append(self.bounds[-1] + n)

    def parts(self):
        """(cache, first row, end row) of every sequence."""
        for i, c in enumerate(self.caches):
            yield c, self.bounds[i], self.bounds[i + 1]

    def cu_seqlens(self, device) -> torch.Tensor:
        return torch.tensor(self.bounds, dtype=torch.int32, device=device)

    def positions(self, device) -> torch.Tensor:
        """Absolute position of every new token: (T,)."""
        return torch.cat([torch.arange(c.len, c.len + (b - a)) for c, a, b in self.parts()]).to(device)


def cache_end(cache, n_new: int) -> int:
    """One past the last position the forward writes (how far the RoPE table must reach)."""
    if isinstance(cache, CacheBatch):
        return max(c.len + n for c, n in zip(cache.caches, cache.counts))
    return cache.len + n_new


def advance(cache, n_new: int) -> None:
    """Commit the forward's new tokens (after the last layer wrote them)."""
    if isinstance(cache, CacheBatch):
        for c, n in zip(cache.caches, cache.counts):
            c.len += n
    else:
        cache.len += n_new


def per_sequence(fn: Callable[..., torch.Tensor], cache, *rows: torch.Tensor) -> torch.Tensor:
    """fn(*rows, cache) for one cache; for a CacheBatch, once per sequence on its own rows (each a
    tensor whose first dimension is the token), the outputs concatenated in stream order."""
    if not isinstance(cache, CacheBatch):
        return fn(*rows, cache)
    return torch.cat([fn(*(r[a:b] for r in rows), c) for c, a, b in cache.parts()])
