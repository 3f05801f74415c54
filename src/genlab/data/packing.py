"""Sequence packing and the flat, padding-free token stream (rmpad).

Documents (token arrays) are cut into chunks of at most `L` tokens (a longer document is split,
never dropped), chunks are packed into rows of capacity `L` by best-fit-decreasing over a buffer,
and a batch of rows is flattened into one stream of real tokens only:

    input_ids    (T,)  the tokens of every chunk, back to back
    position_ids (T,)  restart at 0 at every chunk
    targets      (T,)  the next token inside the same chunk, -100 at each chunk's last token
    cu_seqlens   (n_chunks + 1,) int32, chunk boundaries, as flash-attention's varlen API uses

Attention and the loss see chunks as independent sequences, so nothing crosses a document.
`padded` mode (the benchmark baseline) puts one chunk per row and pads every row to `L`.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
import torch

IGNORE = -100


@dataclass
class Batch:
    input_ids: torch.Tensor  # (T,) int64
    targets: torch.Tensor  # (T,) int64, IGNORE where nothing is predicted
    position_ids: torch.Tensor  # (T,) int64
    cu_seqlens: torch.Tensor  # (n_seq + 1,) int32
    max_seqlen: int
    n_real: int  # real (non-padding) tokens
    capacity: int  # rows * L: the token slots the batch occupies
    n_rows: int
    # any-order objective (families/lm/objectives.py): per-token loss weights, and the count the summed
    # loss is divided by (the sequences' tokens rather than the predicted ones)
    weights: torch.Tensor | None = None
    target_count: int | None = None

    @property
    def real_fraction(self) -> float:
        return self.n_real / max(1, self.capacity)

    @property
    def n_targets(self) -> int:
        if self.target_count is not None:
            return self.target_count
        return int((self.targets != IGNORE).sum())

    def to(self, device) -> Batch:
        if str(device) == "cpu":
            return self
        w = self.weights.to(device) if self.weights is not None else None
        return Batch(
            self.input_ids.to(device),
            self.targets.to(device),
            self.position_ids.to(device),
            self.cu_seqlens.to(device),
            self.max_seqlen,
            self.n_real,
            self.capacity,
            self.n_rows,
            w,
            self.target_count,
        )


def chunk_spans(offsets: np.ndarray, order: list[int] | np.ndarray, L: int) -> list[tuple[int, int]]:
    """Cut documents (in `order`) into (start, end) spans of at most L tokens of the flat array."""
    spans = []
    for d in order:
        start, end = int(offsets[d]), int(offsets[d + 1])
        for s in range(start, end, L):
            spans.append((s, min(s + L, end)))
    return spans


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Pack items (lengths <= capacity) into bins: largest first, each into the fullest bin that fits.

    Returns bins as lists of item indices. O(n log n) with a sorted list of remaining capacities.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, bin index)
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"item of length {n} exceeds capacity {capacity}")
        j = bisect.bisect_left(free, (n, -1))
        if j < len(free):
            rem, b = free.pop(j)
        else:
            rem, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        if rem - n > 0:
            bisect.insort(free, (rem - n, b))
    return bins


def pack_rows(spans: list[tuple[int, int]], L: int, buffer: int) -> list[list[tuple[int, int]]]:
    """Best-fit-decreasing over consecutive buffers of `buffer` spans; rows keep their spans' order."""
    rows = []
    for b in range(0, len(spans), buffer):
        part = spans[b : b + buffer]
        for bin_ in best_fit_decreasing([e - s for s, e in part], L):
            rows.append([part[i] for i in sorted(bin_)])
    return rows


def make_batch(
    tokens: np.ndarray, rows: list[list[tuple[int, int]]], L: int, padded: bool = False, pad_id: int = 0
) -> Batch:
    """Flatten rows of spans into one Batch. `padded`: each row becomes one length-L sequence."""
    ids, tgt, pos, cu = [], [], [], [0]
    n_real = 0
    for row in rows:
        row_ids, row_tgt, row_pos = [], [], []
        for s, e in row:
            chunk = tokens[s:e].astype(np.int64)
            n = e - s
            t = np.full(n, IGNORE, dtype=np.int64)
            t[:-1] = chunk[1:]
            row_ids.append(chunk)
            row_tgt.append(t)
            row_pos.append(np.arange(n, dtype=np.int64))
            n_real += n
            if not padded:
                cu.append(cu[-1] + n)
        if padded:
            used = sum(len(c) for c in row_ids)
            row_ids.append(np.full(L - used, pad_id, dtype=np.int64))
            row_tgt.append(np.full(L - used, IGNORE, dtype=np.int64))
            row_pos.append(np.arange(used, L, dtype=np.int64))
            cu.append(cu[-1] + L)
        ids += row_ids
        tgt += row_tgt
        pos += row_pos
    cu_t = torch.tensor(cu, dtype=torch.int32)
    max_seqlen = int((cu_t[1:] - cu_t[:-1]).max()) if len(cu) > 1 else 0
    return Batch(
        torch.from_numpy(np.concatenate(ids)),
        torch.from_numpy(np.concatenate(tgt)),
        torch.from_numpy(np.concatenate(pos)),
        cu_t,
        max_seqlen,
        n_real,
        len(rows) * L,
        len(rows),
    )


class TokenDataset:
    """Tokenized documents as one flat int32 array plus offsets; yields packed batches.

    The order of batches depends only on (seed, epoch), and the position in the stream is the
    pair (epoch, row cursor), so training resumes exactly where it stopped.
    """

    def __init__(
        self,
        docs: list[list[int]],
        L: int,
        batch_rows: int,
        mode: str = "packed",
        seed: int = 0,
        buffer: int = 1000,
        shuffle: bool = True,
    ):
        docs = [d for d in docs if len(d) > 0]
        if not docs:
            raise ValueError("no tokens")
        self.tokens = np.concatenate([np.asarray(d, dtype=np.int32) for d in docs])
        self.offsets = np.cumsum([0] + [len(d) for d in docs])
        self.n_docs = len(docs)
        self.L, self.batch_rows, self.mode = L, batch_rows, mode
        self.seed, self.buffer, self.shuffle = seed, buffer, shuffle
        self._epoch_rows: tuple[int, list] | None = None

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def rows(self, epoch: int) -> list[list[tuple[int, int]]]:
        if self._epoch_rows is not None and self._epoch_rows[0] == epoch:
            return self._epoch_rows[1]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.n_docs, generator=g).tolist() if self.shuffle else range(self.n_docs)
        spans = chunk_spans(self.offsets, order, self.L)
        if self.mode == "padded":
            rows = [[sp] for sp in spans]
        else:
            rows = pack_rows(spans, self.L, self.buffer)
        if self.shuffle:
            perm = torch.randperm(len(rows), generator=g).tolist()
            rows = [rows[i] for i in perm]
        self._epoch_rows = (epoch, rows)
        return rows

    def batch_at(self, state: tuple[int, int]) -> tuple[Batch, tuple[int, int]]:
        """The batch starting at (epoch, cursor) and the state after it. Batches never span epochs."""
        epoch, cursor = state
        rows = self.rows(epoch)
        if cursor >= len(rows):
            epoch, cursor = epoch + 1, 0
            rows = self.rows(epoch)
        take = rows[cursor : cursor + self.batch_rows]
        batch = make_batch(self.tokens, take, self.L, padded=self.mode == "padded")
        return batch, (epoch, cursor + len(take))

    def iter_epoch(self, epoch: int = 0):
        """Every batch of one epoch in order (for evaluation)."""
        state = (epoch, 0)
        n = len(self.rows(epoch))
        while state[1] < n:
            batch, state = self.batch_at(state)
            yield batch
