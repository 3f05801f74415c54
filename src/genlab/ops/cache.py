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
import torch.nn.functional as F


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


class KVPool:
    """Keys and values of up to `slots` sequences of a dense Transformer in one tensor each,
    (n_layer, slots, max_len, n_kv, head_dim). A sequence's cache is one slot (`SlotCache`, the
    KVCache interface over a view), so decode steps of many sequences attend in one call
    (`PooledDecode`) instead of one call per sequence."""

    def __init__(self, n_layer: int, slots: int, max_len: int, n_kv: int, head_dim: int, device, dtype):
        self.k = torch.zeros(n_layer, slots, max_len, n_kv, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.max_len = max_len
        self.free = list(range(slots - 1, -1, -1))

    def cache(self) -> SlotCache | None:
        """A free slot's cache, or None when every slot is taken."""
        return SlotCache(self, self.free.pop()) if self.free else None


class SlotCache:
    """One sequence's keys and values: a slot of a KVPool (what KVCache is for a lone sequence)."""

    def __init__(self, pool: KVPool, slot: int):
        self.pool, self.slot, self.len = pool, slot, 0
        self.k, self.v = pool.k[:, slot], pool.v[:, slot]  # (n_layer, max_len, n_kv, head_dim) views

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        n = k.shape[0]
        self.k[layer, self.len : self.len + n] = k
        self.v[layer, self.len : self.len + n] = v
        return self.k[layer, : self.len + n], self.v[layer, : self.len + n]

    def release(self) -> None:
        if self.slot is not None:
            self.pool.free.append(self.slot)
            self.slot = None


class PooledDecode(CacheBatch):
    """A decode step of B sequences, one new token each, every cache a slot of one KVPool: each layer
    writes the B new keys/values with one indexed store and attends with one masked SDPA call over
    the slots' first max(len) + 1 positions."""

    def __init__(self, caches: Sequence[SlotCache]):
        super().__init__(caches, [1] * len(caches))
        self.pool = caches[0].pool
        dev = self.pool.k.device
        self.idx = torch.tensor([c.slot for c in caches], device=dev)
        lens = torch.tensor([c.len for c in caches], device=dev)
        self.lens, self.S = lens, max(c.len for c in caches) + 1
        self.mask = (torch.arange(self.S, device=dev)[None, :] <= lens[:, None])[:, None, None, :]  # (B, 1, 1, S)

    @staticmethod
    def fits(caches) -> bool:
        return all(isinstance(c, SlotCache) for c in caches) and len({id(c.pool) for c in caches}) == 1

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale=None) -> torch.Tensor:
        """q (B, H, hd), k and v (B, n_kv, hd) of the new tokens -> (B, H, hd)."""
        P = self.pool
        P.k[layer, self.idx, self.lens] = k
        P.v[layer, self.idx, self.lens] = v
        keys = P.k[layer, self.idx, : self.S].transpose(1, 2)  # (B, n_kv, S, hd)
        vals = P.v[layer, self.idx, : self.S].transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q[:, :, None, :], keys, vals, attn_mask=self.mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
        )
        return y[:, :, 0, :]
