"""Small corpora written into tmp_path, and reading a prepared DATA_DIR back as text."""

import json
import random
import re

import numpy as np

from genlab.data.shards import PrepareSpec, ShardSet, prepare, read_manifest
from genlab.data.tokenizer import load_tokenizer

# unicode of several widths, a literal special-token spelling, leading/trailing whitespace
WORDS = ["the", "quick", "brown", "fox", "日本語", "🎉", "naïve", "<|endoftext|>", "def", "x = 1", "tab\there"]


def make_docs(n: int, seed: int = 0, blank_every: int = 0) -> list[str]:
    """n documents of 3..200 words; with blank_every, every k-th document is whitespace only."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        if blank_every and i % blank_every == blank_every - 1:
            docs.append(" \n\t ")
            continue
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 200))]
        docs.append(f"doc {i}: " + " ".join(words) + ("\n" if i % 3 else ""))
    return docs


def nonblank(docs: list[str]) -> list[str]:
    return [d for d in docs if d.strip()]


def group_paragraphs(text: str, doc_chars: int = 4096) -> list[str]:
    """The documents of a .txt file without form feeds: paragraphs grouped to >= doc_chars characters."""
    docs, cur = [], ""
    for para in re.split(r"(?<=\n)(?=\s*\n)", text):
        cur += para
        if len(cur) >= doc_chars:
            docs.append(cur)
            cur = ""
    if cur:
        docs.append(cur)
    return nonblank(docs)


def write_jsonl(path, docs, field="text"):
    path.write_text("".join(json.dumps({field: d, "id": i}, ensure_ascii=False) + "\n" for i, d in enumerate(docs)))
    return path


def run_prepare(src, out, **spec):
    """prepare() in this process, quietly, one worker unless told."""
    workers = spec.pop("workers", 1)
    sources = tuple(str(s) for s in (src if isinstance(src, (list, tuple)) else [src]))
    spec.setdefault("tokenizer", "byte")
    prepare(PrepareSpec(sources=sources, **spec), out, workers=workers, progress=False, log=lambda s: None)
    return out


def read_back(data_dir) -> dict[str, list[str]]:
    """{split: the documents a reader uses, decoded (BOS stripped)}; every document starts with BOS
    when the tokenizer has one."""
    tok = load_tokenizer(data_dir / "tokenizer.json")
    out = {}
    for split in ("train", "val"):
        s = ShardSet(data_dir, split, verify="full")
        docs = []
        for i in s.ids:
            ids = np.asarray(s.doc(int(i)))
            if tok.bos_id is not None:
                assert ids[0] == tok.bos_id and tok.bos_id not in ids[1:].tolist()
                ids = ids[1:]
            docs.append(tok.decode(ids.tolist()))
        out[split] = docs
    return out


def shard_summary(data_dir) -> dict:
    """What two equal DATA_DIRs share: shard names, counts and SHA-256s, counts, dtype, tokenizer hash."""
    m = read_manifest(data_dir)
    return {
        "shards": m["shards"],
        "counts": m["counts"],
        "excluded": m.get("excluded"),
        "dtype": m["dtype"],
        "tokenizer": m["tokenizer"]["sha256"],
    }
