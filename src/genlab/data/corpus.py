"""One data path: whatever `data.path` names becomes a prepared DATA_DIR, then a PackedStream.

A DATA_DIR made by `genlab prepare` is used as it is. Raw text (the embedded corpus, a file, a
directory) is prepared the same way into a cache directory keyed by the sources' contents and the
tokenizer settings (GENLAB_CACHE, default ~/.cache/genlab), once; later runs and resumes reuse it.
Concurrent processes (torchrun ranks, two runs) serialise on a lock file per cache entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from genlab.data.packing import PackedStream
from genlab.data.shards import EMBEDDED, PrepareSpec, ShardSet, describe_sources, is_data_dir, prepare, sha256_file
from genlab.errors import GenlabError

CACHE_ENV = "GENLAB_CACHE"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "genlab")


class ShardStore:
    """A ShardSet split as a DocStore for PackedStream (its usable documents only)."""

    def __init__(self, shards: ShardSet):
        self.shards = shards
        self.lengths = shards.lengths[shards.ids]

    def tokens(self, k: int, start: int, end: int) -> np.ndarray:
        return self.shards.doc(int(self.shards.ids[k]), start, end)


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepared_dir(
    path: str,
    tokenizer: str,
    vocab_size: int,
    val_fraction: float,
    log: Callable[[str], None] = print,
) -> Path:
    """The DATA_DIR for `path`: itself when prepared, else a cached prepare of its raw text.
    tokenizer: "byte", "" (train BPE of vocab_size) or a tokenizer.json file."""
    if is_data_dir(path):
        return Path(path)
    sources = (path or EMBEDDED,)
    spec = PrepareSpec(sources=sources, tokenizer=tokenizer, vocab_size=vocab_size, val_fraction=val_fraction)
    key = {
        "sources": describe_sources(sources),
        "tokenizer": sha256_file(Path(tokenizer)) if tokenizer not in ("", "byte") else tokenizer,
        "vocab_size": vocab_size if not tokenizer else 0,
        "val_fraction": val_fraction,
        "text_field": spec.text_field,
    }
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    out = cache_root() / "prepared" / name
    with _locked(out.with_name(name + ".lock")):
        if not is_data_dir(out) or not _complete(out):
            if tokenizer not in ("", "byte"):  # the cached copy must not depend on the caller's file
                spec = PrepareSpec(sources, tokenizer=str(tokenizer), vocab_size=vocab_size, val_fraction=val_fraction)
            prepare(spec, out, workers=1, progress=False, log=lambda *a: None)
    return out


def _complete(data_dir: Path) -> bool:
    try:
        return bool(json.loads((data_dir / "manifest.json").read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def open_stream(
    data_dir: Path, split: str, L: int, batch_rows: int, seed: int, buffer: int, shuffle: bool
) -> PackedStream | None:
    """A PackedStream over one split of a DATA_DIR, or None when the split has no documents."""
    shards = ShardSet(data_dir, split, verify="once")  # SHA-256s at first use, sizes after (docs/data-format.md)
    if len(shards) == 0:
        return None
    return PackedStream(ShardStore(shards), L, batch_rows, seed=seed, buffer=buffer, shuffle=shuffle)


def require_tokenizer(data_dir: Path, tokenizer_file: Path) -> None:
    """A run trains on ids of its own tokenizer only."""
    have, want = sha256_file(data_dir / "tokenizer.json"), sha256_file(tokenizer_file)
    if have != want:
        raise GenlabError(
            f"{data_dir}: its ids are in another tokenizer than the run's ({tokenizer_file}); prepare the corpus "
            f"with `genlab prepare ... --tokenizer {tokenizer_file}` or start a new run on it"
        )
