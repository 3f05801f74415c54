"""Mixtures of prepared corpora (`data.mix`): several DATA_DIRs, each row of a batch drawn from one.

Every source is a PackedStream over its DATA_DIR's training split with a position of its own
(epoch, block, row). Row number g of the whole run (counted from 0 over every batch) comes from
source i with probability w_i / sum(w): the draw is a pure function of (seed, g) (a SplitMix64 hash
of the two, read as a uniform number in [0, 1)), so batches depend only on the position, on any
number of processes, and resume exactly. A source that runs out starts its next epoch on its own.

The position is one flat tuple of ints, as the trainer saves it (a JSON list):
    (g, epoch_0, block_0, row_0, tokens_0, epoch_1, block_1, row_1, tokens_1, ...)
tokens_i counts the real tokens source i has given so far (reported as `tokens/<name>`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from genlab.data.corpus import open_stream
from genlab.data.packing import Batch, PackedStream, Span, make_batch_from
from genlab.data.shards import is_data_dir, read_manifest
from genlab.errors import GenlabError

PER_SOURCE = 4  # epoch, block, row, tokens
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
    x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
    x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
    return x ^ (x >> np.uint64(31))


def uniforms(seed: int, rows: np.ndarray) -> np.ndarray:
    """One uniform number in [0, 1) per global row index, a pure function of (seed, row)."""
    key = _splitmix64(np.array([seed], dtype=np.uint64))
    x = _splitmix64(key ^ np.asarray(rows, dtype=np.uint64))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def draw_sources(seed: int, first_row: int, n: int, weights: Sequence[float]) -> np.ndarray:
    """The source of rows first_row .. first_row + n - 1: i with probability weights[i] / sum."""
    cum = np.cumsum(np.asarray(weights, dtype=np.float64))
    u = uniforms(seed, np.arange(first_row, first_row + n, dtype=np.uint64)) * cum[-1]
    return np.minimum(np.searchsorted(cum, u, side="right"), len(cum) - 1)


def source_names(paths: Sequence[str]) -> list[str]:
    """Each source's name in metrics: its directory's name, or the path as given where names collide."""
    base = [Path(p).resolve().name or str(p) for p in paths]
    return [b if base.count(b) == 1 else str(p) for b, p in zip(base, paths)]


def check_sources(mix: dict[str, float]) -> str:
    """Every path of data.mix is a finished DATA_DIR and all share one tokenizer; returns its SHA-256."""
    first: tuple[str, str] | None = None
    for path in mix:
        if not is_data_dir(path):
            what = "does not exist" if not Path(path).exists() else "is not a prepared DATA_DIR (no manifest.json)"
            raise GenlabError(
                f"data.mix: {path!r} {what}; every source must be made by `genlab prepare SRC... --out {path}`"
            )
        sha = read_manifest(path)["tokenizer"]["sha256"]
        if first is None:
            first = (path, sha)
        elif sha != first[1]:
            raise GenlabError(
                f"data.mix: {path!r} was prepared with another tokenizer than {first[0]!r}; the sources of a "
                f"mixture share one: prepare it with `genlab prepare ... --tokenizer {first[0]}`"
            )
    return first[1] if first else ""


class _Sources:
    """A DocStore over several stores: document keys are (source, document)."""

    def __init__(self, streams: Sequence[PackedStream]):
        self.stores = [s.store for s in streams]

    def tokens(self, k: tuple[int, int], start: int, end: int) -> np.ndarray:
        return self.stores[k[0]].tokens(k[1], start, end)


class MixedStream:
    """Rows drawn from several PackedStreams by weight (see the module's docstring)."""

    def __init__(
        self,
        streams: Sequence[PackedStream],
        weights: Sequence[float],
        names: Sequence[str],
        seed: int,
        batch_rows: int,
        val: Sequence[PackedStream | None] = (),
    ):
        self.streams, self.weights, self.names = list(streams), [float(w) for w in weights], list(names)
        self.seed, self.batch_rows, self.L = seed, batch_rows, streams[0].L
        self.val = list(val)  # each source's validation split (None: it has none)
        self._store = _Sources(self.streams)

    @property
    def n_tokens(self) -> int:
        return sum(s.n_tokens for s in self.streams)

    def initial_state(self) -> tuple[int, ...]:
        return (0,) + (0,) * (PER_SOURCE * len(self.streams))

    def check_state(self, state: Sequence[int]) -> tuple[int, ...]:
        k = len(self.streams)
        if len(state) != 1 + PER_SOURCE * k:
            raise GenlabError(
                f"the saved data position has {len(state)} numbers; a mixture of {k} sources needs "
                f"{1 + PER_SOURCE * k}: data.mix (its number of sources) cannot change on resume"
            )
        return tuple(int(x) for x in state)

    def _next_row(self, i: int, pos: list[int]) -> list[Span]:
        """Source i's next row; advances pos = [epoch, block, row, tokens] in place."""
        s = self.streams[i]
        epoch, block, row, _ = pos
        rows = s.block_rows(epoch, block)
        take = rows[row]
        row += 1
        if row >= len(rows):
            block, row = block + 1, 0
            if block >= s.n_blocks(epoch):
                epoch, block = epoch + 1, 0
        pos[:] = [epoch, block, row, pos[3] + sum(e - st for _, st, e in take)]
        return take

    def layout_at(self, state: Sequence[int]) -> tuple[list[list[Span]], list[int], tuple[int, ...]]:
        """(rows, the source of each row, the state after): a batch's layout, no tokens read."""
        state = self.check_state(state)
        g = state[0]
        pos = [list(state[1 + PER_SOURCE * i : 1 + PER_SOURCE * (i + 1)]) for i in range(len(self.streams))]
        sources = [int(i) for i in draw_sources(self.seed, g, self.batch_rows, self.weights)]
        rows = [self._next_row(i, pos[i]) for i in sources]
        return rows, sources, (g + len(rows), *(x for p in pos for x in p))

    def materialize(self, rows: list[list[Span]], sources: list[int]) -> Batch:
        tagged = [[((i, d), s, e) for d, s, e in row] for row, i in zip(rows, sources)]
        return make_batch_from(self._store, tagged, self.L)

    def batch_at(self, state: Sequence[int]) -> tuple[Batch, tuple[int, ...]]:
        rows, sources, state = self.layout_at(state)
        return self.materialize(rows, sources), state

    def metrics(self, state: Sequence[int]) -> dict[str, int]:
        """Per source: `tokens/<name>` (real tokens given so far) and `epoch/<name>` (epochs finished)."""
        state = self.check_state(state)
        out: dict[str, int] = {}
        for i, name in enumerate(self.names):
            epoch, _, _, tokens = state[1 + PER_SOURCE * i : 1 + PER_SOURCE * (i + 1)]
            out[f"tokens/{name}"] = tokens
            out[f"epoch/{name}"] = epoch
        return out


def open_mix(mix: dict[str, float], L: int, batch_rows: int, seed: int, buffer: int) -> MixedStream:
    """The MixedStream of data.mix (path -> weight), with each source's validation split. Each path must
    be a finished DATA_DIR, all of one tokenizer."""
    check_sources(mix)
    paths = list(mix)
    streams, val = [], []
    for path in paths:
        s = open_stream(Path(path), "train", L, batch_rows, seed, buffer, True)
        if s is None:
            raise GenlabError(f"data.mix: {path!r} has no training documents (all went to validation)")
        streams.append(s)
        val.append(open_stream(Path(path), "val", L, batch_rows, 0, buffer, False))
    return MixedStream(streams, [mix[p] for p in paths], source_names(paths), seed, batch_rows, val)
