"""Training opens shards with verify="once": SHA-256s at first use (recorded), sizes after; a shard file
rewritten since is hashed again. `genlab data stats --verify` / verify="full" always hash."""

import json
import os

import pytest

from genlab.data import shards
from genlab.data.corpus import open_stream
from genlab.data.shards import VERIFIED, ShardSet
from genlab.errors import GenlabError

from .helpers import make_docs, run_prepare, write_jsonl


@pytest.fixture
def data_dir(tmp_path):
    write_jsonl(tmp_path / "c.jsonl", make_docs(40, seed=2))
    return run_prepare(tmp_path / "c.jsonl", tmp_path / "data", val_fraction=0.2)


def _count_hashes(monkeypatch) -> list:
    seen = []
    real = shards.sha256_file
    monkeypatch.setattr(shards, "sha256_file", lambda p: seen.append(p.name) or real(p))
    return seen


def test_hashed_once_then_sizes(data_dir, monkeypatch):
    seen = _count_hashes(monkeypatch)
    assert not (data_dir / VERIFIED).exists()
    open_stream(data_dir, "train", 64, 2, 0, 50, True)
    assert seen == ["train-00000.bin", "train-00000.idx"]
    assert "train-00000" in json.loads((data_dir / VERIFIED).read_text())
    seen.clear()
    open_stream(data_dir, "train", 64, 2, 0, 50, True)
    ShardSet(data_dir, "train", verify="once")
    assert seen == []  # recorded: not hashed again
    ShardSet(data_dir, "train", verify="full")
    assert seen == ["train-00000.bin", "train-00000.idx"]  # full always hashes


def test_rewritten_shard_is_hashed_again(data_dir):
    ShardSet(data_dir, "train", verify="once")
    shard = data_dir / "train-00000.bin"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    shard.write_bytes(bytes(raw))  # same size, new mtime
    with pytest.raises(GenlabError, match="SHA-256 does not match"):
        ShardSet(data_dir, "train", verify="once")


def test_read_only_dir_still_opens(data_dir, monkeypatch):
    seen = _count_hashes(monkeypatch)
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(PermissionError("read-only")))
    for _ in range(2):
        ShardSet(data_dir, "val", verify="once")
    assert seen.count("val-00000.bin") == 2  # nothing recorded: hashed at every open
    assert not (data_dir / VERIFIED).exists() and not list(data_dir.glob("*.tmp"))
