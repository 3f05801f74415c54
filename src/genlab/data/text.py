"""Text corpora: the embedded default (text that ships with Python) and user files.

A corpus is a list of documents (str). The train/validation split is by document and depends
only on the document's content (a hash), so it is the same on every machine and every run.
"""

from __future__ import annotations

import hashlib
import json
import re
import sysconfig
from pathlib import Path

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

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".text", ".jsonl")


def embedded_corpus() -> list[str]:
    """pydoc's topic documentation plus a fixed slice of the standard library's sources."""
    from pydoc_data.topics import topics

    docs = [topics[k] for k in sorted(topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in STDLIB_SLICE:
        f = stdlib / f"{name}.py"
        if f.is_file():
            docs.append(f.read_text(encoding="utf-8"))
    return [d for d in docs if d.strip()]


def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise GenlabError(
            f"{path}: not UTF-8 text (invalid byte at offset {e.start}); genlab reads corpora as UTF-8"
        ) from None
    except OSError as e:
        raise GenlabError(f"{path}: cannot be read ({e.strerror})") from None


def _read_jsonl(path: Path) -> list[str]:
    docs = []
    for lineno, line in enumerate(_read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise GenlabError(
                f'{path}:{lineno}: not valid JSON ({e.msg}); each line must be an object like {{"text": "..."}}'
            ) from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise GenlabError(f'{path}:{lineno}: each line must be an object with a string "text" field')
        docs.append(obj["text"])
    return docs


def _read_txt(path: Path, doc_chars: int = 4096) -> list[str]:
    """A .txt file: form feeds separate documents; without them, consecutive paragraphs are
    grouped into documents of at least `doc_chars` characters (so a single book still splits)."""
    text = _read_utf8(path)
    if "\f" in text:
        return text.split("\f")
    docs, cur = [], ""
    for para in re.split(r"(?<=\n)(?=\s*\n)", text):
        cur += para
        if len(cur) >= doc_chars:
            docs.append(cur)
            cur = ""
    if cur:
        docs.append(cur)
    return docs


def load_corpus(path: str) -> list[str]:
    """'' = embedded; a .txt file; a .jsonl file with a "text" field; or a directory of text files."""
    if not path:
        return embedded_corpus()
    p = Path(path)
    if not p.exists():
        raise GenlabError(f"corpus {path!r} does not exist; give a .txt file, a .jsonl file or a directory")
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise GenlabError(f"corpus directory {path!r} has no text files ({', '.join(TEXT_SUFFIXES)})")
        docs = []
        for f in files:
            docs += _read_jsonl(f) if f.suffix.lower() == ".jsonl" else [_read_utf8(f)]
    elif p.suffix.lower() == ".jsonl":
        docs = _read_jsonl(p)
    else:
        docs = _read_txt(p)
    docs = [d for d in docs if d.strip()]
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
