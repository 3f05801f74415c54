"""Prepared corpora: token ids in memory-mapped shards, tokenized once (`genlab prepare`).

DATA_DIR/manifest.json       format, version, tokenizer (+ SHA-256), sources (+ sizes, SHA-256), split
                             rule, settings, counts, and every finished shard with its SHA-256s
DATA_DIR/tokenizer.json      the tokenizer the ids are in
DATA_DIR/{train,val}-NNNNN.bin   token ids, little-endian uint16 (vocabulary <= 65536) or uint32;
                             documents back to back, each starting with the tokenizer's BOS if it has one
DATA_DIR/{train,val}-NNNNN.idx   little-endian int64 offsets into the .bin, one per document plus the end

Documents are read in source order and split by a hash of their text (the same rule as
genlab.data.text.split_documents). A chunk of the work ends when the train shard being written
reaches `shard_tokens`: the train and val shards of the chunk are fsynced, renamed into place and
recorded in the manifest with the number of source documents consumed so far. Re-running the same
command skips finished chunks and continues after them; nothing in a .tmp file is ever read.
See docs/data-format.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import shutil
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from genlab.data.sources import documents
from genlab.data.text import embedded_corpus, split_score
from genlab.data.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer, load_tokenizer
from genlab.errors import GenlabError
from genlab.progress import PrepareProgress

FORMAT, VERSION = "genlab.shards", 1
MANIFEST, TOKENIZER = "manifest.json", "tokenizer.json"
EMBEDDED = "embedded"  # the source name of the embedded corpus
SPLITS = ("train", "val")


@dataclass(frozen=True)
class PrepareSpec:
    """What `genlab prepare` makes; two runs with the same spec make the same DATA_DIR."""

    sources: tuple[str, ...]  # files or directories; "embedded" = the embedded corpus
    tokenizer: str = ""  # a tokenizer.json (or a directory holding one), "byte"; "" = train BPE
    vocab_size: int = 2048  # BPE trained on a bounded sample of the training documents
    text_field: str = "text"
    val_fraction: float = 0.05
    shard_tokens: int = 1 << 26  # tokens per train shard (128 MB as uint16)
    sample_bytes: int = 1 << 28  # text the BPE tokenizer is trained on, at most (256 MB)


# ---------------------------------------------------------------------------- reading sources
def source_documents(sources: tuple[str, ...], text_field: str) -> Iterator[tuple[int, str]]:
    """(source index, document) for every document of every source, in order."""
    for i, src in enumerate(sources):
        docs = embedded_corpus() if src == EMBEDDED else documents(src, text_field)
        empty = True
        for d in docs:
            empty = False
            yield i, d
        if empty:
            raise GenlabError(f"corpus {src!r} is empty (no non-blank text)")


def describe_sources(sources: tuple[str, ...]) -> list[dict]:
    """Path, size in bytes and a SHA-256 over the file contents (files in sorted order for a directory)."""
    out = []
    for src in sources:
        if src == EMBEDDED:
            out.append({"path": EMBEDDED, "bytes": sum(len(d.encode()) for d in embedded_corpus())})
            continue
        p = Path(src)
        if not p.exists():
            raise GenlabError(f"corpus {src!r} does not exist")
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        h = hashlib.sha256()
        size = 0
        for f in files:
            h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode() + b"\0")
            size += _hash_file(f, h)
        out.append({"path": str(p.resolve()), "bytes": size, "sha256": h.hexdigest()})
    return out


def _hash_file(path: Path, h) -> int:
    n = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            n += len(block)
    return n


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    _hash_file(path, h)
    return h.hexdigest()


# ---------------------------------------------------------------------------- tokenizing (worker processes)
_WORKER_TOK: Tokenizer | None = None


def _init_worker(tok_path: str) -> None:
    global _WORKER_TOK
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it terminates the pool
    _WORKER_TOK = load_tokenizer(Path(tok_path))


def dtype_for(vocab_size: int) -> str:
    """The dtype of a shard's token ids: uint16 when every id fits (vocabulary <= 65536), else uint32."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def encode_docs(tok: Tokenizer, docs: list[str], dtype) -> tuple[np.ndarray, np.ndarray]:
    """(token ids of every document back to back, each after BOS if any; per-document lengths)."""
    ids = tok.encode_batch(docs)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    body = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
    if tok.bos_id is None:
        return body, lengths
    lengths += 1  # BOS first in every document
    flat = np.empty(int(lengths.sum()), dtype=dtype)
    starts = np.cumsum(lengths) - lengths
    is_body = np.ones(len(flat), dtype=bool)
    is_body[starts] = False
    flat[starts] = tok.bos_id
    flat[is_body] = body
    return flat, lengths


def _encode_in_worker(args: tuple[list[str], str]) -> tuple[np.ndarray, np.ndarray]:
    docs, dtype = args
    return encode_docs(_WORKER_TOK, docs, np.dtype(dtype))


# ---------------------------------------------------------------------------- writing
class _ShardWriter:
    """Appends documents to NAME.bin.tmp, hashing as it goes; `close` writes NAME.idx and renames both."""

    def __init__(self, out: Path, name: str, dtype: np.dtype):
        self.out, self.name, self.dtype = out, name, dtype
        self.bin = open(out / f"{name}.bin.tmp", "wb")
        self.hash = hashlib.sha256()
        self.offsets = [0]
        self.bytes = 0  # UTF-8 bytes of the documents' text
        self.sources: dict[str, dict] = {}  # source index -> documents, tokens, bytes

    @property
    def tokens(self) -> int:
        return self.offsets[-1]

    def add(self, flat: np.ndarray, lengths: np.ndarray, sources: list[int], n_bytes: list[int]) -> None:
        """Documents back to back in `flat`, with their lengths, source indices and text sizes."""
        data = np.ascontiguousarray(flat, dtype=self.dtype.newbyteorder("<")).tobytes()
        self.bin.write(data)
        self.hash.update(data)
        ends = self.offsets[-1] + np.cumsum(lengths)
        self.offsets.extend(int(e) for e in ends)
        for src, n, b in zip(sources, lengths.tolist(), n_bytes):
            c = self.sources.setdefault(str(src), {"documents": 0, "tokens": 0, "bytes": 0})
            c["documents"] += 1
            c["tokens"] += n
            c["bytes"] += b
        self.bytes += sum(n_bytes)

    def close(self) -> dict:
        self.bin.flush()
        os.fsync(self.bin.fileno())
        self.bin.close()
        idx = np.asarray(self.offsets, dtype="<i8").tobytes()
        with open(self.out / f"{self.name}.idx.tmp", "wb") as f:
            f.write(idx)
            f.flush()
            os.fsync(f.fileno())
        for ext in ("bin", "idx"):
            os.replace(self.out / f"{self.name}.{ext}.tmp", self.out / f"{self.name}.{ext}")
        return {
            "name": self.name,
            "documents": len(self.offsets) - 1,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "sources": dict(sorted(self.sources.items(), key=lambda kv: int(kv[0]))),
            "sha256": {"bin": self.hash.hexdigest(), "idx": hashlib.sha256(idx).hexdigest()},
        }


def _atomic_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _settings(spec: PrepareSpec) -> dict:
    s = asdict(spec)
    s["sources"] = list(s["sources"])
    return s


def tokenizer_file(spec_tokenizer: str) -> Path:
    """The tokenizer.json a --tokenizer PATH names: the file itself or DIR/tokenizer.json (a Hugging Face
    model directory, a genlab run directory, a DATA_DIR)."""
    p = Path(spec_tokenizer)
    f = p / TOKENIZER if p.is_dir() else p
    if not f.is_file():
        raise GenlabError(
            f"--tokenizer {spec_tokenizer}: "
            + (f"no {TOKENIZER} in that directory" if p.is_dir() else "does not exist")
            + "; give a tokenizer.json, a directory holding one (a Hugging Face model or genlab run "
            "directory), or 'byte'"
        )
    return f


def _install_tokenizer(spec: PrepareSpec, out: Path, log: Callable[[str], None]) -> None:
    """Write out/tokenizer.json: a given tokenizer.json is copied byte for byte (so a run using the same
    file matches the manifest's hash), 'byte' and a trained BPE are saved."""
    tmp = out / f"{TOKENIZER}.tmp"
    if spec.tokenizer and spec.tokenizer != "byte":
        src = tokenizer_file(spec.tokenizer)
        load_tokenizer(src)  # a readable tokenizer, or a one-line error naming the file
        shutil.copyfile(src, tmp)
    else:
        _tokenizer_for(spec, log).save(tmp)
    os.replace(tmp, out / TOKENIZER)


def _tokenizer_for(spec: PrepareSpec, log: Callable[[str], None]) -> Tokenizer:
    if spec.tokenizer == "byte":
        return ByteTokenizer()
    sample, size = [], 0
    for _, d in source_documents(spec.sources, spec.text_field):
        if split_score(d) >= spec.val_fraction:  # train on training documents only
            sample.append(d)
            size += len(d)
            if size >= spec.sample_bytes:
                break
    log(f"training byte-level BPE ({spec.vocab_size} tokens) on {len(sample):,} documents ({size / 1e6:.1f} MB)")
    return BPETokenizer.train(sample, spec.vocab_size)


def prepare(
    spec: PrepareSpec,
    out: str | Path,
    workers: int = 1,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Tokenize `spec.sources` into shards in `out` (see the module docstring); resumable."""
    out = Path(out)
    if not spec.sources:
        raise GenlabError("genlab prepare needs at least one source (a file, a directory, or 'embedded')")
    if not 0 <= spec.val_fraction <= 0.5:
        raise GenlabError(f"--val-fraction {spec.val_fraction} must be from 0 to 0.5")
    if spec.shard_tokens < 1 or spec.vocab_size < 257:
        raise GenlabError("--shard-tokens must be >= 1 and --vocab-size >= 257 (256 bytes + 1 special token)")
    if spec.tokenizer and spec.tokenizer != "byte":
        tokenizer_file(spec.tokenizer)  # before anything is written
    described = describe_sources(spec.sources)
    for src in spec.sources:  # a missing or empty source fails before DATA_DIR is made
        next(iter(source_documents((src,), spec.text_field)))
    fresh, existed = not (out / MANIFEST).is_file(), out.exists()
    manifest = _resume_or_start(spec, out, described)
    if manifest.get("complete"):
        log(f"{out}: already prepared ({manifest['counts']['tokens']:,} tokens); nothing to do")
        return out
    try:
        _prepare(spec, out, manifest, workers, progress, log, described)
    except GenlabError:
        if fresh and not manifest["shards"]:  # bad input found before any chunk finished: leave nothing
            _remove_unfinished(out, rmdir=not existed)
        raise
    return out


def _remove_unfinished(out: Path, rmdir: bool) -> None:
    for f in [out / MANIFEST, out / TOKENIZER, *out.glob("*.tmp")]:
        f.unlink(missing_ok=True)
    if rmdir and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def _prepare(
    spec: PrepareSpec, out: Path, manifest: dict, workers: int, progress: bool, log: Callable, described: list
) -> None:
    if not (out / TOKENIZER).is_file():
        _install_tokenizer(spec, out, log)
    tok = load_tokenizer(out / TOKENIZER)
    manifest["tokenizer"] = {
        "file": TOKENIZER,
        "sha256": sha256_file(out / TOKENIZER),
        "kind": tok.kind,
        "vocab_size": tok.vocab_size,
        "bos_id": tok.bos_id,
    }
    manifest["dtype"] = dtype_for(tok.vocab_size)
    _atomic_json(out / MANIFEST, manifest)
    _write_shards(spec, out, manifest, tok, workers, progress, sum(s["bytes"] for s in described))


def _resume_or_start(spec: PrepareSpec, out: Path, described: list[dict]) -> dict:
    fresh = {
        "format": FORMAT,
        "version": VERSION,
        "settings": _settings(spec),
        "sources": described,
        "split": {
            "rule": "a document is validation when the first 8 bytes of SHA-256(its UTF-8 text), read as a "
            "big-endian integer / 2^64, are below val_fraction",
            "val_fraction": spec.val_fraction,
        },
        "shards": [],
        "progress": {"documents_done": 0, "min_train": None, "max_val": None},
        "complete": False,
    }
    if out.exists() and not out.is_dir():
        raise GenlabError(f"--out {out} exists and is not a directory")
    if (out / MANIFEST).is_file():
        old = read_manifest(out, allow_incomplete=True)
        same = {k: v for k, v in old["settings"].items() if k != "sources"} == {
            k: v for k, v in fresh["settings"].items() if k != "sources"
        }  # the sources themselves are compared resolved, with their sizes and hashes
        if not same or old["sources"] != described:
            raise GenlabError(
                f"{out} holds a prepared corpus of other sources or settings; choose another --out or delete it"
            )
        for f in out.glob("*.tmp"):  # an interrupted chunk: redone from its first document
            f.unlink()
        return old
    if out.is_dir() and any(out.iterdir()):
        raise GenlabError(f"--out {out} exists and is not empty (and is not an unfinished genlab prepare)")
    out.mkdir(parents=True, exist_ok=True)
    _atomic_json(out / MANIFEST, fresh)
    return fresh


def batch_bytes(shard_tokens: int) -> int:
    """Text per tokenizer batch: 1 MB, less for small shards (a chunk closes after the batch that fills
    its train shard, so a shard holds shard_tokens tokens plus less than one batch)."""
    return max(1 << 12, min(1 << 20, shard_tokens))


def _batches(spec: PrepareSpec, skip: int, batch_bytes: int = 1 << 20) -> Iterator[list[tuple[int, str, float]]]:
    """Lists of (source index, document, split score) of about batch_bytes of text, after `skip` documents."""
    batch, size = [], 0
    for n, (src, d) in enumerate(source_documents(spec.sources, spec.text_field)):
        if n < skip:
            continue
        batch.append((src, d, split_score(d)))
        size += len(d)
        if size >= batch_bytes or len(batch) >= 4096:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class _Encoder:
    """Tokenizes batches in order: in this process (workers = 1) or in a pool, at most 2 x workers ahead."""

    def __init__(self, tok: Tokenizer, tok_path: Path, workers: int, dtype: str):
        self.tok, self.dtype, self.pool = tok, dtype, None
        if workers > 1:  # forked workers: nothing to re-import; they use no torch, only tokenizers
            old = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"  # set before the fork: no warning, no thread pool
            try:
                self.pool = mp.get_context("fork").Pool(workers, _init_worker, (str(tok_path),))
            finally:
                if old is None:
                    del os.environ["TOKENIZERS_PARALLELISM"]
                else:
                    os.environ["TOKENIZERS_PARALLELISM"] = old
        self.ahead = 2 * max(1, workers)

    def map(self, batches: Iterator[list]) -> Iterator[tuple[list, np.ndarray, np.ndarray]]:
        if self.pool is None:
            for b in batches:
                yield (b, *encode_docs(self.tok, [d for _, d, _ in b], np.dtype(self.dtype)))
            return
        pending: deque = deque()
        for b in batches:
            pending.append((b, self.pool.apply_async(_encode_in_worker, (([d for _, d, _ in b], self.dtype),))))
            if len(pending) >= self.ahead:
                b0, r = pending.popleft()
                yield (b0, *r.get())
        while pending:
            b0, r = pending.popleft()
            yield (b0, *r.get())

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def _write_shards(
    spec: PrepareSpec, out: Path, manifest: dict, tok: Tokenizer, workers: int, progress: bool, total_bytes: int
) -> None:
    dtype = np.dtype(manifest["dtype"])
    prog = manifest["progress"]
    counts = {s: sum(1 for sh in manifest["shards"] if sh["name"].startswith(s)) for s in SPLITS}
    writers = {s: _ShardWriter(out, f"{s}-{counts[s]:05d}", dtype) for s in SPLITS}
    done = prog["documents_done"]
    enc = _Encoder(tok, out / TOKENIZER, workers, manifest["dtype"])
    try:
        with PrepareProgress(total_bytes, enabled=progress) as bar:
            for batch, flat, lengths in enc.map(_batches(spec, done, batch_bytes(spec.shard_tokens))):
                ends = np.cumsum(lengths)
                starts = ends - lengths
                n_bytes = [len(d.encode("utf-8")) for _, d, _ in batch]
                is_val = np.array([score < spec.val_fraction for _, _, score in batch])
                for split, sel in (("train", ~is_val), ("val", is_val)):
                    if sel.any():
                        w = writers[split]
                        first = len(w.offsets) - 1 + _split_docs(manifest, split)
                        keep = np.nonzero(sel)[0]
                        flat_sel = np.concatenate([flat[starts[i] : ends[i]] for i in keep])
                        w.add(flat_sel, lengths[keep], [batch[i][0] for i in keep], [n_bytes[i] for i in keep])
                        scored = [(batch[i][2], first + j, batch[i][0], n_bytes[i]) for j, i in enumerate(keep)]
                        _track_extremes(prog, split, scored)
                done += len(batch)
                bar.update(sum(n_bytes), len(batch), int(lengths.sum()))
                if writers["train"].tokens >= spec.shard_tokens:
                    writers = _close_chunk(out, manifest, writers, done, dtype)
        _close_chunk(out, manifest, writers, done, dtype, last=True)
    finally:
        enc.close()
        for w in writers.values():
            if not w.bin.closed:
                w.bin.close()
    _fix_empty_split(out, manifest, dtype)
    manifest["counts"] = counts_of(manifest)
    manifest["complete"] = True
    _atomic_json(out / MANIFEST, manifest)


def _split_docs(manifest: dict, split: str) -> int:
    return sum(sh["documents"] for sh in manifest["shards"] if sh["name"].startswith(split))


def _track_extremes(prog: dict, split: str, scored: list[tuple[float, int, int, int]]) -> None:
    """The training document with the smallest score and the validation one with the largest, as
    [score, document id in its split, source index, text bytes]: what a corpus with an empty split
    moves over (as split_documents does)."""
    if split == "train":
        best = min(scored)
        if prog["min_train"] is None or best[0] < prog["min_train"][0]:
            prog["min_train"] = list(best)
    else:
        best = max(scored)
        if prog["max_val"] is None or best[0] > prog["max_val"][0]:
            prog["max_val"] = list(best)


@contextlib.contextmanager
def _deferred_sigint():
    """Ctrl-C waits until the block is done (in the main thread; elsewhere signals cannot be caught)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    old = signal.signal(signal.SIGINT, lambda *a: caught.append(a))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if caught:
        raise KeyboardInterrupt


def _close_chunk(out: Path, manifest: dict, writers: dict, done: int, dtype, last: bool = False) -> dict:
    """Rename the chunk's shards into place and record them: all of it or (on Ctrl-C) none of it."""
    with _deferred_sigint():
        for split in SPLITS:
            w = writers[split]
            if w.tokens or (split == "train" and not last):
                manifest["shards"].append(w.close())
            else:
                w.bin.close()
                (out / f"{w.name}.bin.tmp").unlink()
        manifest["progress"]["documents_done"] = done
        _atomic_json(out / MANIFEST, manifest)
    counts = {s: sum(1 for sh in manifest["shards"] if sh["name"].startswith(s)) for s in SPLITS}
    return {s: _ShardWriter(out, f"{s}-{counts[s]:05d}", dtype) for s in SPLITS} if not last else writers


def _fix_empty_split(out: Path, manifest: dict, dtype) -> None:
    """Like split_documents: with val_fraction > 0 and >= 2 documents, validation gets the training
    document with the smallest score if it is empty, and training keeps the validation document with
    the largest score if everything went to validation. The moved document is copied into a one-document
    shard of the other split and listed under "excluded" for its own split."""
    prog, n = manifest["progress"], {s: _split_docs(manifest, s) for s in SPLITS}
    manifest["excluded"] = {"train": [], "val": []}
    if manifest["settings"]["val_fraction"] <= 0 or n["train"] + n["val"] < 2:
        return
    move = None
    if n["val"] == 0:
        move = ("train", "val", [int(x) if k else x for k, x in enumerate(prog["min_train"])])
    elif n["train"] == 0:
        move = ("val", "train", [int(x) if k else x for k, x in enumerate(prog["max_val"])])
    if move is None:
        return
    src, dst, (_, doc, source, n_bytes) = move
    tokens = np.array(ShardSet(out, src, verify=False, manifest=manifest).doc(doc))
    w = _ShardWriter(out, f"{dst}-{sum(1 for sh in manifest['shards'] if sh['name'].startswith(dst)):05d}", dtype)
    w.add(tokens, np.array([len(tokens)]), [source], [n_bytes])
    manifest["shards"].append({**w.close(), "moved_from": {"split": src, "document": doc}})
    manifest["excluded"][src].append(doc)


def counts_of(manifest: dict) -> dict:
    """Documents, tokens and text bytes, in all and per split, of the documents a reader uses (a document
    moved to the other split by _fix_empty_split counts there only)."""
    c = {"documents": 0, "tokens": 0, "bytes": 0}
    for split in SPLITS:
        for key in ("documents", "tokens", "bytes"):
            c[f"{split}_{key}"] = 0
    for sh in manifest["shards"]:
        split = sh["name"].split("-")[0]
        for key in ("documents", "tokens", "bytes"):
            n = sh.get(key, 0)
            c[f"{split}_{key}"] += n
            c[key] += n
            if "moved_from" in sh:  # the copy counts, the excluded original does not
                c[f"{sh['moved_from']['split']}_{key}"] -= n
                c[key] -= n
    return c


# ---------------------------------------------------------------------------- reading
def is_data_dir(path: str | Path) -> bool:
    return bool(path) and (Path(path) / MANIFEST).is_file()


def read_manifest(data_dir: str | Path, allow_incomplete: bool = False) -> dict:
    p = Path(data_dir) / MANIFEST
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GenlabError(f"{p}: not a readable manifest ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise GenlabError(f"{p}: not a genlab prepared-corpus manifest (format {FORMAT!r})")
    if m.get("version") != VERSION:
        raise GenlabError(
            f"{p}: format version {m.get('version')!r}; this genlab reads version {VERSION}; re-run `genlab prepare`"
        )
    if not m.get("complete") and not allow_incomplete:
        raise GenlabError(f"{Path(data_dir)}: `genlab prepare` did not finish there; re-run it to continue")
    return m


VERIFIED = "verified.json"  # shards whose SHA-256 a reader checked, by file identity (not part of the format)


def _verified_key(data_dir: Path, sh: dict) -> list | None:
    """What identifies a shard's files as the ones hashed: size, mtime (ns), inode, and the manifest hash."""
    try:
        return [
            [st.st_size, st.st_mtime_ns, st.st_ino, sh["sha256"][ext]]
            for ext in ("bin", "idx")
            for st in [(Path(data_dir) / f"{sh['name']}.{ext}").stat()]
        ]
    except OSError:
        return None


def _read_verified(data_dir: Path) -> dict:
    try:
        d = json.loads((Path(data_dir) / VERIFIED).read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _record_verified(data_dir: Path, records: dict) -> None:
    """Best effort (a read-only DATA_DIR is fine: its shards are hashed at every open)."""
    tmp = Path(data_dir) / f"{VERIFIED}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(records) + "\n")
        os.replace(tmp, Path(data_dir) / VERIFIED)
    except OSError:
        tmp.unlink(missing_ok=True)


class ShardSet:
    """The documents of one split of a DATA_DIR, memory-mapped: `doc(i)` is a read-only view.

    verify: check every shard's size against its index and (full) its SHA-256 against the manifest;
    "once" (training): the SHA-256 only of shard files not hashed before in their present form (size, mtime
    and inode recorded in DATA_DIR/verified.json after a successful check), sizes of the others.
    Document ids run over the split's shards in order; excluded ones (see _fix_empty_split) are skipped
    by `ids`, the documents a reader should use."""

    def __init__(self, data_dir: str | Path, split: str, verify: bool | str = "full", manifest: dict | None = None):
        self.dir = Path(data_dir)
        self.manifest = manifest if manifest is not None else read_manifest(self.dir)
        self.dtype = np.dtype(self.manifest["dtype"]).newbyteorder("<")
        shards = [sh for sh in self.manifest["shards"] if sh["name"].startswith(split)]
        self.bins, offsets = [], []
        done = _read_verified(self.dir) if verify == "once" else {}
        fresh = {}
        for sh in shards:
            how = verify
            if verify == "once":  # hash a shard unless this very file (size, mtime, inode) was hashed before
                key = _verified_key(self.dir, sh)
                how = "size" if key is not None and done.get(sh["name"]) == key else "full"
            b, idx = self._open(sh, how)
            if how == "full" and verify == "once" and key is not None:
                fresh[sh["name"]] = key
            self.bins.append(b)
            offsets.append(idx)
        if fresh:
            _record_verified(self.dir, {**done, **fresh})
        lengths = [np.diff(o) for o in offsets]
        self.lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
        self.starts = np.concatenate(
            [o[:-1] for o in offsets] if offsets else [np.zeros(0, dtype=np.int64)]
        )  # start of each document in its shard
        self.shard_of = np.concatenate(
            [np.full(len(o) - 1, k, dtype=np.int32) for k, o in enumerate(offsets)] or [np.zeros(0, np.int32)]
        )
        excluded = set(self.manifest.get("excluded", {}).get(split, []))
        self.ids = np.array([i for i in range(len(self.lengths)) if i not in excluded], dtype=np.int64)

    def _open(self, sh: dict, verify) -> tuple[np.ndarray, np.ndarray]:
        return open_shard(self.dir, sh, self.dtype, verify)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_tokens(self) -> int:
        return int(self.lengths[self.ids].sum())

    def doc(self, i: int, start: int = 0, end: int | None = None) -> np.ndarray:
        """Tokens [start, end) of document i (all ids, excluded ones included)."""
        s = int(self.starts[i])
        n = int(self.lengths[i])
        end = n if end is None else min(end, n)
        return self.bins[int(self.shard_of[i])][s + start : s + end]


def open_shard(data_dir: Path, sh: dict, dtype, verify: bool | str = "full") -> tuple[np.ndarray, np.ndarray]:
    """(the token ids of manifest shard entry `sh`, memory-mapped read-only; its int64 offsets). File sizes
    are always checked against the manifest and the index; verify="full" also checks both SHA-256s."""
    dtype = np.dtype(dtype).newbyteorder("<")
    bin_path, idx_path = Path(data_dir) / f"{sh['name']}.bin", Path(data_dir) / f"{sh['name']}.idx"
    for p in (bin_path, idx_path):
        if not p.is_file():
            raise GenlabError(f"{p}: shard file is missing; the prepared corpus is incomplete")
    for p, want in ((bin_path, sh["tokens"] * dtype.itemsize), (idx_path, (sh["documents"] + 1) * 8)):
        if p.stat().st_size != want:
            raise GenlabError(
                f"{p}: {p.stat().st_size} bytes, the manifest says {want} (truncated or overwritten); "
                "re-run `genlab prepare` into a new directory"
            )
    if verify == "full":
        for p, key in ((bin_path, "bin"), (idx_path, "idx")):
            if sha256_file(p) != sh["sha256"][key]:
                raise GenlabError(
                    f"{p}: SHA-256 does not match the manifest (corrupted); "
                    "re-run `genlab prepare` into a new directory"
                )
    idx = np.fromfile(idx_path, dtype="<i8")
    if idx[0] != 0 or idx[-1] != sh["tokens"] or (len(idx) > 1 and np.any(np.diff(idx) < 0)):
        raise GenlabError(f"{idx_path}: offsets are not an index of {bin_path.name} (corrupted)")
    b = np.memmap(bin_path, dtype=dtype, mode="r") if sh["tokens"] else np.zeros(0, dtype=dtype)
    return b, idx


def check_tokenizer(data_dir: str | Path, tokenizer_path: str | Path) -> None:
    """A run trains on ids of its own tokenizer only."""
    m = read_manifest(data_dir)
    have = sha256_file(Path(tokenizer_path))
    if m["tokenizer"]["sha256"] != have:
        raise GenlabError(
            f"{data_dir}: prepared with another tokenizer than the run's ({tokenizer_path}); prepare the corpus "
            f"with --tokenizer {tokenizer_path}, or start a new run on it"
        )
