"""`genlab data stats`: counts agree with the documents, per-source shares, length quantiles within
the histogram's resolution, and a PNG."""

import json

import numpy as np
import pytest

from genlab.cli import main
from genlab.data.stats import BINS_PER_OCTAVE, data_stats
from genlab.data.text import split_documents

from .helpers import make_docs, run_prepare, write_jsonl


@pytest.fixture
def two_sources(tmp_path):
    a, b = make_docs(60, seed=1), make_docs(20, seed=2)
    write_jsonl(tmp_path / "a.jsonl", a)
    (tmp_path / "b.txt").write_text("\f".join(b))
    out = run_prepare([tmp_path / "a.jsonl", tmp_path / "b.txt"], tmp_path / "data", val_fraction=0.2)
    return out, a, b


def test_counts_shares_and_lengths(two_sources):
    out, a, b = two_sources
    s = data_stats(out)
    docs = a + b
    nbytes = [len(d.encode()) for d in docs]  # byte tokenizer: a document's tokens are its bytes
    assert s["documents"] == len(docs) and s["tokens"] == s["bytes"] == sum(nbytes)
    assert s["bytes_per_token"] == 1.0 and s["dtype"] == "uint16"
    train, val = split_documents(docs, 0.2)
    assert s["splits"]["train"]["documents"] == len(train) and s["splits"]["val"]["documents"] == len(val)
    assert s["splits"]["val"]["tokens"] == sum(len(d.encode()) for d in val)
    src_a, src_b = s["sources"]
    assert src_a["path"].endswith("a.jsonl") and src_a["documents"] == len(a)
    assert src_b["tokens"] == sum(len(d.encode()) for d in b)
    assert src_a["token_share"] + src_b["token_share"] == pytest.approx(1.0)
    assert src_b["document_share"] == pytest.approx(len(b) / len(docs))
    L = s["lengths"]
    assert L["min"] == min(nbytes) and L["max"] == max(nbytes) and L["mean"] == pytest.approx(np.mean(nbytes))
    step = 2 ** (1 / BINS_PER_OCTAVE)
    for q in (50, 90, 99):
        exact = np.quantile(nbytes, q / 100, method="inverted_cdf")
        assert exact / step <= L[f"p{q}"] <= exact * step, (q, exact, L[f"p{q}"])
    h = s["histogram"]
    assert sum(h["train"]) == len(train) and sum(h["val"]) == len(val) and len(h["edges"]) == len(h["train"]) + 1


def test_cli_text_json_and_png(two_sources, capsys, tmp_path):
    out, a, b = two_sources
    assert main(["data", "stats", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"{len(a) + len(b)} documents" in text and "bytes per token" in text and "a.jsonl" in text
    png = out / "length_hist.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["data", "stats", str(out), "--json", "--out", str(tmp_path / "h.png"), "--verify"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["plot"] == str(tmp_path / "h.png") and (tmp_path / "h.png").is_file()
    assert s["documents"] == len(a) + len(b)


def test_moved_document_counted_once(tmp_path):
    """A two-document corpus whose documents both hash to training: one is copied to validation and
    excluded from training; every count takes it once."""
    write_jsonl(tmp_path / "two.jsonl", ["alpha document", "beta document"])
    out = run_prepare(tmp_path / "two.jsonl", tmp_path / "d", val_fraction=0.001)
    s = data_stats(out)
    assert s["documents"] == 2 and s["sources"][0]["documents"] == 2
    assert s["splits"]["train"]["documents"] == 1 and s["splits"]["val"]["documents"] == 1
    assert s["tokens"] == len("alpha document") + len("beta document") == s["sources"][0]["tokens"]
    assert sum(s["histogram"]["train"]) == 1 and sum(s["histogram"]["val"]) == 1


def test_bad_png_path(two_sources, capsys, tmp_path):
    out, _, _ = two_sources
    capsys.readouterr()
    assert main(["data", "stats", str(out), "--out", str(tmp_path / "h.jpg")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "h.jpg" in err and ".png" in err
