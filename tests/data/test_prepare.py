"""`genlab prepare`: every input format read back from the shards equals its normalised documents
(non-blank, in order, BOS stripped), with document boundaries kept and the split of split_documents;
dtype by vocabulary; resume = fresh; a finished prepare is a no-op; another spec is refused."""

import gzip
import json
import os

import numpy as np
import pytest

from genlab.cli import main
from genlab.data.shards import MANIFEST, PrepareSpec, ShardSet, dtype_for, prepare, read_manifest
from genlab.data.text import split_documents
from genlab.data.tokenizer import BPETokenizer

from .helpers import (
    group_paragraphs,
    make_docs,
    nonblank,
    read_back,
    run_prepare,
    shard_summary,
    write_jsonl,
)

VAL = 0.2


def _check(data_dir, expected: list[str], val_fraction: float = VAL):
    """decode(shards) == the documents, split as split_documents splits them; manifest counts agree."""
    train, val = split_documents(expected, val_fraction)
    got = read_back(data_dir)
    assert got["train"] == train
    assert got["val"] == val
    c = read_manifest(data_dir)["counts"]
    assert (c["train_documents"], c["val_documents"], c["documents"]) == (len(train), len(val), len(expected))
    assert c["bytes"] == sum(len(d.encode()) for d in expected)


# ---------------------------------------------------------------------------- formats
def test_txt_form_feeds(tmp_path):
    docs = make_docs(30, blank_every=7)
    src = tmp_path / "corpus.txt"
    src.write_text("\f".join(docs), encoding="utf-8")
    _check(run_prepare(src, tmp_path / "d", val_fraction=VAL), nonblank(docs))


def test_txt_paragraphs_grouped(tmp_path):
    paras = [d.strip() for d in make_docs(120, seed=1)]
    text = "".join(p + ("\n\n" if i % 4 else "\n   \n\n") for i, p in enumerate(paras))
    src = tmp_path / "book.txt"
    src.write_text(text, encoding="utf-8")
    expected = group_paragraphs(text)
    assert len(expected) >= 4  # several documents of >= 4096 characters, cut at paragraph breaks
    assert all(len(d) >= 4096 for d in expected[:-1])
    _check(run_prepare(src, tmp_path / "d", val_fraction=VAL), expected)


def test_md_file(tmp_path):
    docs = make_docs(3, seed=2)
    src = tmp_path / "README.md"
    src.write_text("# title\n\n" + "\f".join(docs), encoding="utf-8")
    _check(
        run_prepare(src, tmp_path / "d", val_fraction=0.5), nonblank(("# title\n\n" + "\f".join(docs)).split("\f")), 0.5
    )


def test_directory(tmp_path):
    """Files of every kind, in sorted path order; a text file is one document; unknown kinds are skipped."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    docs = make_docs(24, seed=3)
    (root / "a.txt").write_text(docs[0] + "\f" + docs[1])  # in a directory: one document, form feed and all
    (root / "b.md").write_text(docs[2])
    (root / "blank.txt").write_text("   \n")
    write_jsonl(root / "sub" / "c.jsonl", docs[3:12])
    (root / "sub" / "d.py").write_text(docs[12])
    with gzip.open(root / "sub" / "e.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps({"text": d}) + "\n" for d in docs[13:]))
    (root / "skip.bin").write_bytes(b"\xff\xfe not text")
    expected = [docs[0] + "\f" + docs[1], docs[2], *docs[3:12], docs[12], *docs[13:]]
    _check(run_prepare(root, tmp_path / "d", val_fraction=VAL), expected)


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "jsonl.zst"])
def test_jsonl(tmp_path, kind):
    docs = make_docs(40, seed=4, blank_every=9)
    lines = "".join(json.dumps({"body": d, "n": i}, ensure_ascii=False) + "\n" for i, d in enumerate(docs))
    lines = lines.replace("\n", "\n\n", 3)  # blank lines between records are skipped
    src = tmp_path / f"corpus.{kind}"
    data = lines.encode("utf-8")
    if kind == "jsonl.gz":
        data = gzip.compress(data)
    elif kind == "jsonl.zst":
        import zstandard

        half = len(data) // 2  # two frames, as concatenated .zst files are
        data = zstandard.ZstdCompressor().compress(data[:half]) + zstandard.ZstdCompressor().compress(data[half:])
    src.write_bytes(data)
    _check(run_prepare(src, tmp_path / "d", text_field="body", val_fraction=VAL), nonblank(docs))


def test_parquet_row_groups(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = make_docs(50, seed=5, blank_every=11)
    src = tmp_path / "corpus.parquet"
    table = pa.table({"id": list(range(len(docs))), "text": docs, "meta": ["x"] * len(docs)})
    pq.write_table(table, src, row_group_size=7)
    assert pq.ParquetFile(src).num_row_groups == 8
    _check(run_prepare(src, tmp_path / "d", val_fraction=VAL), nonblank(docs))


def test_hf_dataset_and_dataset_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    docs = make_docs(45, seed=6)
    ds = datasets.Dataset.from_dict({"text": docs[:30], "label": list(range(30))})
    ds.save_to_disk(str(tmp_path / "ds"))
    _check(run_prepare(tmp_path / "ds", tmp_path / "d1", val_fraction=VAL), docs[:30])

    dd = datasets.DatasetDict(
        {
            "test": datasets.Dataset.from_dict({"text": docs[30:36]}),
            "train": datasets.Dataset.from_dict({"text": docs[36:]}),
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    # train first, then the other splits in the directory's order
    _check(run_prepare(tmp_path / "dd", tmp_path / "d2", val_fraction=VAL), docs[36:] + docs[30:36])


def test_several_sources_and_embedded(tmp_path):
    """Sources in the order given; 'embedded' is the embedded corpus; per-source counts in the manifest."""
    from genlab.data.text import embedded_corpus

    docs = make_docs(10, seed=7)
    write_jsonl(tmp_path / "a.jsonl", docs)
    out = run_prepare([tmp_path / "a.jsonl", "embedded"], tmp_path / "d", val_fraction=0.05)
    emb = embedded_corpus()
    _check(out, docs + emb, 0.05)
    m = read_manifest(out)
    per = {}
    for sh in m["shards"]:
        for k, c in sh["sources"].items():
            per[k] = per.get(k, 0) + c["documents"]
    assert per == {"0": len(docs), "1": len(emb)}


# ---------------------------------------------------------------------------- boundaries, BOS, split
def test_bpe_boundaries_and_bos(tmp_path):
    """A trained BPE (vocabulary 300): each document starts with BOS and decodes to itself, also when
    it spells "<|endoftext|>"; the index holds one offset per document plus the end."""
    docs = make_docs(30, seed=8)
    write_jsonl(tmp_path / "c.jsonl", docs)
    out = run_prepare(tmp_path / "c.jsonl", tmp_path / "d", tokenizer="", vocab_size=300, val_fraction=VAL)
    m = read_manifest(out)
    assert m["tokenizer"]["kind"] == "bpe" and m["tokenizer"]["vocab_size"] <= 300 and m["tokenizer"]["bos_id"] == 0
    _check(out, docs)
    for sh in m["shards"]:
        idx = np.fromfile(out / f"{sh['name']}.idx", dtype="<i8")
        assert len(idx) == sh["documents"] + 1 and idx[0] == 0 and idx[-1] == sh["tokens"]
        ids = np.fromfile(out / f"{sh['name']}.bin", dtype="<u2")
        assert (ids[idx[:-1]] == 0).all() and (np.delete(ids, idx[:-1]) != 0).all()  # BOS exactly at starts


def test_tiny_corpus_moves_a_document_like_split_documents(tmp_path):
    """Two documents that both hash to one split: one moves over, as split_documents does."""
    for val_fraction in (0.001, 0.5):
        docs = ["alpha document", "beta document"]
        train, val = split_documents(docs, val_fraction)
        out = tmp_path / f"d{val_fraction}"
        write_jsonl(tmp_path / "two.jsonl", docs)
        run_prepare(tmp_path / "two.jsonl", out, val_fraction=val_fraction)
        assert read_back(out) == {"train": train, "val": val}
        assert read_manifest(out)["counts"]["documents"] == 2


# ---------------------------------------------------------------------------- dtype
def test_dtype_rule():
    assert dtype_for(256) == "uint16" and dtype_for(65536) == "uint16"
    assert dtype_for(65537) == "uint32" and dtype_for(200_000) == "uint32"


def test_uint16_for_bytes_uint32_for_a_big_vocabulary(tmp_path):
    docs = make_docs(20, seed=9)
    write_jsonl(tmp_path / "c.jsonl", docs)
    small = run_prepare(tmp_path / "c.jsonl", tmp_path / "small")
    m = read_manifest(small)
    assert m["dtype"] == "uint16"
    assert sum((small / f"{sh['name']}.bin").stat().st_size for sh in m["shards"]) == 2 * m["counts"]["tokens"]

    # a BPE whose ids all sit above 65535: uint32 shards, and the ids survive the round trip
    tok = BPETokenizer.train(docs, 300)
    tok.save(tmp_path / "t.json")
    j = json.loads((tmp_path / "t.json").read_text())
    shift = 70_000
    j["model"]["vocab"] = {
        **{f"<filler{i}>": i for i in range(shift)},
        **{k: v + shift for k, v in j["model"]["vocab"].items()},
    }
    for t in j["added_tokens"]:
        t["id"] += shift
    (tmp_path / "big.json").write_text(json.dumps(j))
    big = run_prepare(tmp_path / "c.jsonl", tmp_path / "big", tokenizer=str(tmp_path / "big.json"))
    m = read_manifest(big)
    assert m["dtype"] == "uint32" and m["tokenizer"]["vocab_size"] > 65536
    assert (big / "tokenizer.json").read_bytes() == (tmp_path / "big.json").read_bytes()  # copied as it is
    ids = np.fromfile(big / f"{m['shards'][0]['name']}.bin", dtype="<u4")
    assert ids.min() >= shift
    _check(big, docs, 0.05)


# ---------------------------------------------------------------------------- resume, no-op, refusal
def test_resume_after_interrupt_equals_fresh(tmp_path, monkeypatch):
    """An interrupt after the 3rd chunk: the next run continues and ends with the same shards as a run
    without interruption (also with another worker count)."""
    import genlab.data.shards as shards

    docs = make_docs(300, seed=10)
    write_jsonl(tmp_path / "c.jsonl", docs)
    spec = {"val_fraction": VAL, "shard_tokens": 4000}
    fresh = run_prepare(tmp_path / "c.jsonl", tmp_path / "fresh", **spec)

    real, calls = shards._close_chunk, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(shards, "_close_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(tmp_path / "c.jsonl", tmp_path / "resumed", **spec)
    monkeypatch.setattr(shards, "_close_chunk", real)
    m = read_manifest(tmp_path / "resumed", allow_incomplete=True)
    assert not m["complete"] and len([s for s in m["shards"] if s["name"].startswith("train")]) == 3
    assert list((tmp_path / "resumed").glob("*.tmp"))  # the chunk being written stayed a .tmp
    with pytest.raises(Exception, match="did not finish"):
        ShardSet(tmp_path / "resumed", "train")
    run_prepare(tmp_path / "c.jsonl", tmp_path / "resumed", workers=2, **spec)
    assert shard_summary(tmp_path / "resumed") == shard_summary(fresh)
    assert not list((tmp_path / "resumed").glob("*.tmp"))
    assert len(read_manifest(fresh)["shards"]) > 6


def test_rerun_is_a_no_op_and_another_spec_is_refused(tmp_path, capsys):
    docs = make_docs(30, seed=11)
    write_jsonl(tmp_path / "c.jsonl", docs)
    out = tmp_path / "d"
    argv = ["prepare", str(tmp_path / "c.jsonl"), "--out", str(out), "--tokenizer", "byte", "--no-progress"]
    assert main([*argv, "--workers", "2"]) == 0
    first = capsys.readouterr().out
    assert "30 documents" in first and "bytes per token" in first and "MB/s" in first
    before = {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in out.iterdir()}
    assert main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in out.iterdir()} == before

    code = main([*argv[:-1], "--val-fraction", "0.3", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "other sources or settings" in err and str(out) in err
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "changed"}) + "\n")  # same path, other contents
    assert main(argv) == 2
    assert "other sources or settings" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in out.iterdir()} == {k: v[1] for k, v in before.items()}


def test_tokenizer_from_a_directory_is_copied(tmp_path):
    """--tokenizer DIR (a Hugging Face model dir / run dir): DIR/tokenizer.json, byte for byte."""
    docs = make_docs(20, seed=12)
    write_jsonl(tmp_path / "c.jsonl", docs)
    (tmp_path / "model").mkdir()
    BPETokenizer.train(docs, 300).save(tmp_path / "model" / "tokenizer.json")
    out = run_prepare(tmp_path / "c.jsonl", tmp_path / "d", tokenizer=str(tmp_path / "model"))
    assert (out / "tokenizer.json").read_bytes() == (tmp_path / "model" / "tokenizer.json").read_bytes()
    _check(out, docs, 0.05)


def test_prepare_writes_nothing_outside_out(tmp_path):
    docs = make_docs(10, seed=13)
    write_jsonl(tmp_path / "c.jsonl", docs)
    out = tmp_path / "d"
    prepare(PrepareSpec(sources=(str(tmp_path / "c.jsonl"),), tokenizer="byte"), out, progress=False, log=print)
    names = sorted(os.listdir(out))
    assert names[0] == MANIFEST and "tokenizer.json" in names
    assert all(n.endswith((".bin", ".idx", ".json")) for n in names)
