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
from typing import Protocol

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
    row_cu: torch.Tensor | None = None  # (n_rows + 1,) row boundaries in the stream: the training sequences

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
            self.row_cu.to(device) if self.row_cu is not None else None,
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
    row_cu = [0]
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
        row_cu.append(row_cu[-1] + sum(len(c) for c in row_ids))
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
        row_cu=torch.tensor(row_cu, dtype=torch.int64),
    )


class DocStore(Protocol):
    """Documents of token ids: `lengths[k]` tokens in document k, `tokens(k, start, end)` reads them."""

    lengths: np.ndarray  # (n_docs,) int64

    def tokens(self, k: int, start: int, end: int) -> np.ndarray: ...


class MemoryStore:
    """Documents held in memory as one flat int32 array plus offsets."""

    def __init__(self, docs: list[list[int]] | list[np.ndarray]):
        docs = [d for d in docs if len(d) > 0]
        if not docs:
            raise ValueError("no tokens")
        self.flat = np.concatenate([np.asarray(d, dtype=np.int32) for d in docs])
        self.lengths = np.array([len(d) for d in docs], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])

    def tokens(self, k: int, start: int, end: int) -> np.ndarray:
        return self.flat[self.offsets[k] + start : self.offsets[k] + end]


Span = tuple[int, int, int]  # (document, start, end): tokens [start, end) of a document
State = tuple[int, int, int]  # (epoch, block, row within the block)


class PackedStream:
    """Packed batches from a DocStore, with memory that does not grow with the corpus.

    Documents are cut into spans of at most L tokens; each epoch orders all spans by a seeded
    permutation (one int64 per span: about 10 MB for 1 GB of text at L = 256), so a batch mixes
    documents from the whole corpus. Consecutive spans form blocks of `buffer`; each block is packed
    into rows by best-fit-decreasing (padded mode: one span per row) and its rows shuffled by a seed of
    their own.
    The position in the stream is (epoch, block, row), a pure function of which the batch is, so
    training resumes exactly, on any number of processes. Batches never span epochs. Only the
    current block's layout is held (built from document lengths); tokens are read per batch.
    """

    def __init__(
        self,
        store: DocStore,
        L: int,
        batch_rows: int,
        mode: str = "packed",
        seed: int = 0,
        buffer: int = 1000,
        shuffle: bool = True,
    ):
        if len(store.lengths) == 0:
            raise ValueError("no documents")
        self.store, self.L, self.batch_rows, self.mode = store, L, batch_rows, mode
        self.seed, self.buffer, self.shuffle = seed, buffer, shuffle
        self._epoch: tuple[int, np.ndarray | None, np.ndarray] | None = None  # (epoch, span order, cumulative spans)
        self._block: tuple[tuple[int, int], list[list[Span]]] | None = None

    @property
    def n_docs(self) -> int:
        return len(self.store.lengths)

    @property
    def n_tokens(self) -> int:
        return int(self.store.lengths.sum())

    def _order(self, epoch: int) -> tuple[np.ndarray | None, np.ndarray]:
        """(the epoch's permutation of span ids, or None = in order; cumulative spans per document)."""
        if self._epoch is None or self._epoch[0] != epoch:
            cum = np.cumsum(-(-self.store.lengths // self.L))  # ceil: spans per document, in document order
            perm = np.random.default_rng([self.seed, epoch]).permutation(int(cum[-1])) if self.shuffle else None
            self._epoch = (epoch, perm, cum)
        return self._epoch[1], self._epoch[2]

    def n_blocks(self, epoch: int) -> int:
        cum = self._order(epoch)[1]
        return -(-int(cum[-1]) // self.buffer)

    def block_rows(self, epoch: int, block: int) -> list[list[Span]]:
        """The rows of one block: lists of spans, in the order the stream takes them."""
        if self._block is not None and self._block[0] == (epoch, block):
            return self._block[1]
        perm, cum = self._order(epoch)
        lo, hi = block * self.buffer, min((block + 1) * self.buffer, int(cum[-1]))
        ids = perm[lo:hi] if perm is not None else np.arange(lo, hi)  # span ids of this block
        docs = np.searchsorted(cum, ids, side="right")  # the document of each span
        starts = (ids - np.where(docs > 0, cum[docs - 1], 0)) * self.L
        ends = np.minimum(starts + self.L, self.store.lengths[docs])
        spans: list[Span] = list(zip(docs.tolist(), starts.tolist(), ends.tolist()))
        if self.mode == "padded":
            rows = [[sp] for sp in spans]
        else:
            rows = [[spans[i] for i in sorted(b)] for b in best_fit_decreasing([e - s for _, s, e in spans], self.L)]
        if self.shuffle:
            perm = np.random.default_rng([self.seed, epoch, block, 1]).permutation(len(rows))
            rows = [rows[i] for i in perm]
        self._block = ((epoch, block), rows)
        return rows

    def layout_at(self, state: State) -> tuple[list[list[Span]], State]:
        """The rows of the batch at `state` (document lengths only, no tokens read) and the state after."""
        epoch, block, row = state
        if block >= self.n_blocks(epoch):
            epoch, block, row = epoch + 1, 0, 0
        take: list[list[Span]] = []
        while len(take) < self.batch_rows:
            rows = self.block_rows(epoch, block)
            got = rows[row : row + self.batch_rows - len(take)]
            take += got
            row += len(got)
            if row >= len(rows):
                block, row = block + 1, 0
                if block >= self.n_blocks(epoch):  # batches never span epochs
                    break
        return take, (epoch, block, row)

    def materialize(self, rows: list[list[Span]]) -> Batch:
        return make_batch_from(self.store, rows, self.L, padded=self.mode == "padded")

    def batch_at(self, state: State) -> tuple[Batch, State]:
        rows, state = self.layout_at(state)
        return self.materialize(rows), state

    def epoch_rows(self, epoch: int = 0) -> list[list[Span]]:
        """Every row of one epoch (for small corpora: benchmarks, tests)."""
        return [r for b in range(self.n_blocks(epoch)) for r in self.block_rows(epoch, b)]

    def iter_epoch(self, epoch: int = 0):
        """Every batch of one epoch in order (evaluation)."""
        state = (epoch, 0, 0)
        while state[0] == epoch and state[1] < self.n_blocks(epoch):
            batch, state = self.batch_at(state)
            yield batch


class TokenDataset(PackedStream):
    """A PackedStream over documents held in memory (token id lists)."""

    def __init__(
        self,
        docs,
        L: int,
        batch_rows: int,
        mode: str = "packed",
        seed: int = 0,
        buffer: int = 1000,
        shuffle: bool = True,
    ):
        super().__init__(MemoryStore(docs), L, batch_rows, mode, seed, buffer, shuffle)


def make_batch_from(store: DocStore, rows: list[list[Span]], L: int, padded: bool = False) -> Batch:
    """Rows of (document, start, end) spans -> a Batch (reads the tokens of these spans only)."""
    flat, offset, flat_rows = [], 0, []
    for row in rows:
        r = []
        for d, s, e in row:
            flat.append(store.tokens(d, s, e))
            r.append((offset, offset + e - s))
            offset += e - s
        flat_rows.append(r)
    tokens = np.concatenate(flat) if flat else np.zeros(0, dtype=np.int64)
    return make_batch(tokens, flat_rows, L, padded=padded)


class MaskedStore(MemoryStore):
    """Documents in memory with a per-token loss mask (chat: True on the assistant's tokens)."""

    def __init__(self, docs: list[list[int]], masks: list[np.ndarray]):
        keep = [i for i, d in enumerate(docs) if len(d) > 0]
        super().__init__([docs[i] for i in keep])
        self.mask_flat = np.concatenate([np.asarray(masks[i], dtype=bool) for i in keep])
        if len(self.mask_flat) != len(self.flat):
            raise ValueError("one mask entry per token")

    def mask(self, k: int, start: int, end: int) -> np.ndarray:
        return self.mask_flat[self.offsets[k] + start : self.offsets[k] + end]


class MaskedStream(PackedStream):
    """A PackedStream whose targets are only the tokens its store's mask marks: a position predicts the
    next token when that token is masked in (supervised fine-tuning's loss on answers only)."""

    def __init__(self, store: MaskedStore, *args, **kwargs):
        super().__init__(store, *args, **kwargs)

    def materialize(self, rows: list[list[Span]]) -> Batch:
        if self.mode == "padded":  # padded to the batch's longest row (dynamic padding, not to L)
            return masked_batch(self.store, rows, max((e - s for r in rows for _, s, e in r), default=1), True)
        return masked_batch(self.store, rows, self.L)


def masked_batch(store: MaskedStore, rows: list[list[Span]], L: int, padded: bool = False) -> Batch:
    """make_batch_from, then targets kept only where the predicted token is masked in."""
    b = make_batch_from(store, rows, L, padded=padded)
    keep = []
    for row in rows:
        for d, s, e in row:
            m = np.zeros(e - s, dtype=bool)
            m[:-1] = store.mask(d, s, e)[1:]
            keep.append(m)
        if padded:
            keep.append(np.zeros(L - sum(e - s for _, s, e in row), dtype=bool))
    keep_t = torch.from_numpy(np.concatenate(keep)) if keep else torch.zeros(0, dtype=torch.bool)
    b.targets = torch.where(keep_t, b.targets, torch.full_like(b.targets, IGNORE))
    return b
