"""A real interruption: `genlab prepare` killed (SIGINT = Ctrl-C, or SIGKILL) in the middle of a corpus;
the unfinished chunk stays a .tmp, the DATA_DIR is refused as unfinished, and running the same command
again ends with exactly the shards of an uninterrupted prepare."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from genlab.data.shards import MANIFEST, ShardSet, read_manifest
from genlab.errors import GenlabError

from .helpers import make_docs, run_prepare, shard_summary

SHARD_TOKENS = 1 << 15


def _argv(src, out):
    opts = f"--tokenizer byte --workers 2 --shard-tokens {SHARD_TOKENS} --val-fraction 0.1 --no-progress"
    return [sys.executable, "-m", "genlab", "prepare", str(src), "--out", str(out), *opts.split()]


def _finished_shards(out) -> int:
    try:
        return len(json.loads((out / MANIFEST).read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_killed_prepare_resumes_to_the_same_shards(tmp_path, sig):
    docs = make_docs(400, seed=3)
    src = tmp_path / "big.txt"
    src.write_text("\f".join(docs * 40), encoding="utf-8")  # ~ 8 MB, ~ 250 chunks
    out = tmp_path / "data"
    proc = subprocess.Popen(_argv(src, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while _finished_shards(out) < 4 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "prepare finished before it could be interrupted: make the corpus bigger"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err
        assert "Traceback" not in err and "run the same command again" in err
    else:
        assert proc.returncode == -signal.SIGKILL

    m = read_manifest(out, allow_incomplete=True)
    assert not m["complete"] and m["shards"]
    listed = {f"{sh['name']}.{ext}" for sh in m["shards"] for ext in ("bin", "idx")}
    on_disk = {f.name for f in out.iterdir() if f.suffix in (".bin", ".idx")}
    if sig == signal.SIGINT:  # Ctrl-C waits for a chunk's renames and manifest update (SIGKILL cannot)
        assert on_disk == listed
    with pytest.raises(GenlabError, match="did not finish"):
        ShardSet(out, "train")

    done = subprocess.run(_argv(src, out), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "continuing after" in done.stdout
    fresh = run_prepare(src, tmp_path / "fresh", val_fraction=0.1, shard_tokens=SHARD_TOKENS, workers=1)
    assert shard_summary(out) == shard_summary(fresh)
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
