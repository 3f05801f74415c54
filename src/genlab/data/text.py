"""Text corpora: the embedded default (text that ships with Python) and user files.

A corpus is a list of documents (str). The train/validation split is by document and depends
only on the document's content (a hash), so it is the same on every machine and every run.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

from genlab.data.sources import documents
from genlab.errors import GenlabError

# A fixed slice of the standard library's pure-Python modules (missing ones are skipped).
STDLIB_SLICE = (
    "abc",
    "argparse",
    "ast",
    "base64",
    "bisect",
    "calendar",
    "cmd",
    "codecs",
    "colorsys",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "difflib",
    "enum",
    "fnmatch",
    "fractions",
    "functools",
    "getopt",
    "gettext",
    "glob",
    "graphlib",
    "gzip",
    "heapq",
    "hmac",
    "inspect",
    "ipaddress",
    "keyword",
    "linecache",
    "locale",
    "numbers",
    "operator",
    "optparse",
    "os",
    "pathlib",
    "pprint",
    "queue",
    "quopri",
    "random",
    "sched",
    "secrets",
    "selectors",
    "shlex",
    "shutil",
    "statistics",
    "string",
    "stringprep",
    "struct",
    "subprocess",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "token",
    "tokenize",
    "trace",
    "traceback",
    "types",
    "typing",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "zipapp",
)


def embedded_corpus() -> list[str]:
    """pydoc's topic documentation plus a fixed slice of the standard library's sources."""
    from pydoc_data.topics import topics  # the stdlib's, imported only when the embedded corpus is used

    docs = [topics[k] for k in sorted(topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in STDLIB_SLICE:
        f = stdlib / f"{name}.py"
        if f.is_file():
            docs.append(f.read_text(encoding="utf-8"))
    return [d for d in docs if d.strip()]


def load_corpus(path: str) -> list[str]:
    """Every non-blank document of a corpus in memory: '' = embedded, else any source
    genlab.data.sources reads. (Training streams prepared shards instead; this is for small corpora.)"""
    if not path:
        return embedded_corpus()
    docs = list(documents(path))
    if not docs:
        raise GenlabError(f"corpus {path!r} is empty (no non-blank text)")
    return docs


def split_score(doc: str) -> float:
    """A document's place in [0, 1): the first 8 bytes of SHA-256(UTF-8 text) / 2^64. Documents
    scoring below val_fraction are validation documents."""
    return int.from_bytes(hashlib.sha256(doc.encode("utf-8")).digest()[:8], "big") / 2**64


def split_documents(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic split by a hash of each document's text; validation gets >= 1 doc when possible."""
    if val_fraction <= 0 or len(docs) < 2:
        return list(docs), []
    scores = [split_score(d) for d in docs]
    val_idx = {i for i, s in enumerate(scores) if s < val_fraction}
    if not val_idx:  # tiny corpus: hold out the document with the smallest hash
        val_idx = {min(range(len(docs)), key=scores.__getitem__)}
    if len(val_idx) == len(docs):
        val_idx.discard(max(range(len(docs)), key=scores.__getitem__))
    train = [d for i, d in enumerate(docs) if i not in val_idx]
    val = [d for i, d in enumerate(docs) if i in val_idx]
    return train, val
