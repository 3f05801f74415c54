"""Sliding-window maximum (LeetCode 239): the max of every window a[i : i + k].

Three implementations of one definition, out[..., i] = max(a[..., i : i + k]) for
i = 0 .. n - k (n - k + 1 outputs):

- `window_max(a, k)`: arrays and tensors, van Herk / Gil-Werman. The last axis is cut into
  blocks of k; g = running max from each block's start, h = running max from each block's end;
  the window starting at i is exactly the suffix of i's block plus the prefix of the block
  holding i + k - 1, so out[i] = max(h[i], g[i + k - 1]). About 3 comparisons per element
  whatever k is (O(n)); batched over all leading dimensions; numpy arrays and torch tensors.
- `SlidingMax`: the streaming version. Push values one at a time and read the max of the last k
  (fewer until k have arrived). A monotonic deque: O(1) amortised per push, O(k) memory. Its
  state is a plain dict, so the trainer can checkpoint it.
- `window_max_deque` (pure Python) and `window_max_brute` (O(nk)): the references.

Edge cases: k must be >= 1; k > n is an error (there is no complete window), except that an
empty input (n = 0) gives an empty output for any k: no windows, nothing to compute.

NaN policy: NaN propagates. A window that holds a NaN has max NaN, in every implementation,
as np.maximum / torch.maximum do (np.fmax-style skipping would hide bad values).
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

from genlab.errors import GenlabError


def _check_k(k, n: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise GenlabError(f"window size k = {k!r} must be an integer >= 1")
    if k < 1:
        raise GenlabError(f"window size k = {k} must be >= 1")
    if n and k > n:
        raise GenlabError(f"window size k = {k} is larger than the input length n = {n}; allowed: 1 <= k <= n")


def _lowest(dtype):
    """The value that never wins a max: -inf for floats, the minimum for ints, False for bools."""
    if dtype == torch.bool or dtype == np.bool_:
        return False
    if isinstance(dtype, torch.dtype):
        return -float("inf") if dtype.is_floating_point else torch.iinfo(dtype).min
    if np.issubdtype(dtype, np.floating):
        return -np.inf
    if np.issubdtype(dtype, np.integer):
        return np.iinfo(dtype).min
    raise GenlabError(f"window_max: dtype {dtype} is not supported; use a float, integer or bool array")


def window_max(a, k: int, axis: int = -1):
    """Max of every length-k window along `axis`; numpy array in -> numpy array out, tensor in ->
    tensor out (same device). Output length along `axis`: n - k + 1."""
    if isinstance(a, torch.Tensor):
        x = a.movedim(axis, -1)
        out = _vhgw_torch(x, k)
        return out.movedim(-1, axis)
    x = np.asarray(a)
    if x.ndim == 0:
        raise GenlabError("window_max needs an array with at least one dimension, got a scalar")
    out = _vhgw_numpy(np.moveaxis(x, axis, -1), k)
    return np.moveaxis(out, -1, axis)


def _vhgw_numpy(x: np.ndarray, k: int) -> np.ndarray:
    n = x.shape[-1]
    _check_k(k, n)
    lead = x.shape[:-1]
    if n == 0:
        return np.empty(lead + (0,), dtype=x.dtype)
    if k == 1:
        return x.copy()
    nb = -(-n // k)  # blocks per row
    g = np.full(lead + (nb * k,), _lowest(x.dtype), dtype=x.dtype)
    g[..., :n] = x
    g = g.reshape(-1, k)  # (rows * blocks, k): every block of every row, one per line
    if g.shape[0] >= k:
        # Many short columns: k - 1 vectorised steps in place, each over all the blocks at once
        # (measured faster than np.maximum.accumulate along axis 1, whose inner loop is only k long).
        h = g.copy()
        for j in range(1, k):
            np.maximum(g[:, j - 1], g[:, j], out=g[:, j])
        for j in range(k - 2, -1, -1):
            np.maximum(h[:, j + 1], h[:, j], out=h[:, j])
    else:
        # Few long blocks (k large against n): numpy's accumulate along the block axis.
        h = np.maximum.accumulate(g[:, ::-1], axis=1)[:, ::-1]
        g = np.maximum.accumulate(g, axis=1)
    g = g.reshape(lead + (nb * k,))
    h = h.reshape(lead + (nb * k,))
    return np.maximum(h[..., : n - k + 1], g[..., k - 1 : n])


def _vhgw_torch(x: torch.Tensor, k: int) -> torch.Tensor:
    n = x.shape[-1]
    _check_k(k, n)
    lead = tuple(x.shape[:-1])
    if n == 0:
        return x.new_empty(lead + (0,))
    if k == 1:
        return x.clone()
    nb = -(-n // k)
    g = x.new_full(lead + (nb * k,), _lowest(x.dtype))
    g[..., :n] = x
    g = g.reshape(-1, k)  # (rows * blocks, k)
    if g.shape[0] >= k:
        h = g.clone()
        for j in range(1, k):
            torch.maximum(g[:, j - 1], g[:, j], out=g[:, j])
        for j in range(k - 2, -1, -1):
            torch.maximum(h[:, j + 1], h[:, j], out=h[:, j])
    else:
        # torch.cummax propagates NaN like torch.maximum (checked in the tests)
        h = torch.cummax(g.flip(1), dim=1).values.flip(1)
        g = torch.cummax(g, dim=1).values
    g = g.reshape(lead + (nb * k,))
    h = h.reshape(lead + (nb * k,))
    return torch.maximum(h[..., : n - k + 1], g[..., k - 1 : n])


def causal_window_max(a, k: int, axis: int = -1):
    """out[t] = max(a[max(0, t - k + 1) : t + 1]): the trailing window of every position, same
    length as the input (shorter windows at the start). What a stream of SlidingMax(k) pushes
    returns, computed in one pass."""
    if isinstance(a, torch.Tensor):
        x = a.movedim(axis, -1)
        if x.shape[-1] == 0:
            return a.clone()
        _check_k(k, max(k, 1))
        pad = x.new_full(tuple(x.shape[:-1]) + (k - 1,), _lowest(x.dtype))
        return _vhgw_torch(torch.cat([pad, x], dim=-1), k).movedim(-1, axis)
    x = np.moveaxis(np.asarray(a), axis, -1)
    if x.shape[-1] == 0:
        return np.moveaxis(x.copy(), -1, axis)
    _check_k(k, max(k, 1))
    pad = np.full(x.shape[:-1] + (k - 1,), _lowest(x.dtype), dtype=x.dtype)
    return np.moveaxis(_vhgw_numpy(np.concatenate([pad, x], axis=-1), k), -1, axis)


class SlidingMax:
    """Streaming max of the last k values pushed. O(1) amortised per push, O(k) memory.

    The deque holds (index, value) pairs whose values strictly decrease from front to back: a value
    with a larger-or-equal one after it can never be a window max again, so it is dropped. NaN
    propagates: while a NaN is among the last k values, the max is NaN."""

    def __init__(self, k: int):
        _check_k(k, k)
        self.k = int(k)
        self.count = 0  # values pushed so far
        self.last_nan = -1  # index of the most recent NaN pushed, -1 = none
        self._dq: deque = deque()

    def push(self, x) -> float:
        x = float(x)
        i = self.count
        self.count += 1
        dq = self._dq
        if x != x:  # NaN: remember where, keep it out of the deque (it compares false with everything)
            self.last_nan = i
        else:
            while dq and dq[-1][1] <= x:
                dq.pop()
            dq.append((i, x))
        if dq and dq[0][0] <= i - self.k:
            dq.popleft()  # at most one index leaves the window per push
        return self.max

    @property
    def max(self) -> float:
        """Max of the last min(count, k) values; NaN if one of them is NaN; -inf before any push."""
        if self.last_nan >= 0 and self.last_nan > self.count - 1 - self.k:
            return float("nan")
        return self._dq[0][1] if self._dq else float("-inf")

    def __len__(self) -> int:
        return min(self.count, self.k)

    @property
    def full(self) -> bool:
        return self.count >= self.k

    def state_dict(self) -> dict:
        return {
            "k": self.k,
            "count": self.count,
            "last_nan": self.last_nan,
            "index": [i for i, _ in self._dq],
            "value": [v for _, v in self._dq],
        }

    def load_state_dict(self, st: dict) -> None:
        if int(st["k"]) != self.k:
            raise GenlabError(f"saved window size {st['k']} differs from the configured {self.k}")
        self.count, self.last_nan = int(st["count"]), int(st["last_nan"])
        self._dq = deque(zip((int(i) for i in st["index"]), (float(v) for v in st["value"])))


# ------------------------------------------------------------------------------ references
def window_max_deque(values, k: int) -> list:
    """Pure-Python monotonic deque over a sequence (the benchmark's baseline); NaN propagates."""
    vals = list(values)
    _check_k(k, len(vals))
    out, dq, last_nan = [], deque(), -1
    for i, x in enumerate(vals):
        if x != x:
            last_nan = i
        else:
            while dq and vals[dq[-1]] <= x:
                dq.pop()
            dq.append(i)
        if dq and dq[0] <= i - k:
            dq.popleft()
        if i >= k - 1:
            out.append(float("nan") if last_nan > i - k else vals[dq[0]])
    return out


def window_max_brute(a, k: int) -> np.ndarray:
    """O(nk) reference over the last axis: a Python loop of np.max calls (np.max propagates NaN)."""
    x = np.asarray(a)
    n = x.shape[-1]
    _check_k(k, n)
    if n == 0:
        return np.empty(x.shape, dtype=x.dtype)
    return np.stack([x[..., i : i + k].max(axis=-1) for i in range(n - k + 1)], axis=-1)
