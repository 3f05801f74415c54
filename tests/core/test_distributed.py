"""Data parallel through torchrun (gloo, CPU). Batch semantics: train.batch_rows and train.grad_accum
are per process, global batch = rows x grad_accum x processes, so a 2-process run with grad_accum 1
equals the 1-process run with grad_accum 2 within 1e-5 in loss over 20 steps; rank 0 alone writes
metrics; checkpoints resume on a different number of processes (2 -> 1, 1 -> 2, grad_accum adjusted to
keep the global batch); the ranks read disjoint micro-batches and nothing is dropped; 2 nodes x 1
process (two torchrun agents on the loopback) equal 1 node x 2 processes; FSDP2 with
torch.distributed.checkpoint shards, consolidated to one safetensors file."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genlab.cli import main
from genlab.config import resolve
from genlab.train import checkpoint
from genlab.train.trainer import train

STEPS = 20
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
QUIET = dict(progress=False, log=lambda *a, **k: None)
PER_RANK = ["train.grad_accum=1"]  # 2 processes x 1 micro-batch = the reference's 1 x 2

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny shapes, 1 thread


@pytest.fixture(scope="module")
def overrides(tiny_overrides):
    """`overrides(corpus, extra=())`: the tiny run of this module (STEPS steps, 2 rows x 2 micro-batches
    per process: the 1-process reference; 2-process runs add PER_RANK to keep its global batch)."""

    def make(corpus, extra=()):
        return tiny_overrides(
            corpus,
            steps=STEPS,
            extra=[
                "train.batch_rows=2",
                "train.grad_accum=2",
                "train.ckpt_every=10",
                "train.keep_ckpts=3",
                "train.eval_every=1000",
                "train.peak_flops=1e12",
                "train.device=cpu",
                *extra,
            ],
        )

    return make


def _losses(run_dir):
    return [(r["step"], r["loss"]) for r in map(json.loads, Path(run_dir, "metrics.jsonl").read_text().splitlines())]


def _nproc(n, *args):
    r = subprocess.run(
        [sys.executable, "-m", "genlab", "train", "--no-progress", "--nproc", str(n), *args],
        capture_output=True,
        env=ENV,
        timeout=300,
    )
    assert r.returncode == 0, (r.stdout + r.stderr).decode()[-3000:]
    return r


def _sets(overrides):
    return [f"--set={o}" for o in overrides]


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(checkpoint.latest_valid(Path(run_dir)) / "model.safetensors"))


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _close(a, b, tol=1e-5):
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, STEPS + 1))  # every step logged once
    worst = max(abs(x - y) for (_, x), (_, y) in zip(a, b))
    assert worst <= tol, worst


@pytest.fixture(scope="module")
def runs(tmp_path_factory, overrides):
    """The 1-process reference (in this process) and a 2-process run through `genlab train --nproc 2`."""
    root = tmp_path_factory.mktemp("ddp")
    texts = [f"document {i}: " + "the quick brown fox jumps over the lazy dog. " * (1 + i % 5) for i in range(40)]
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    single, _ = train(resolve(None, None, overrides(corpus)), root / "single", **QUIET)
    _nproc(2, "--out", str(root / "two"), *_sets(overrides(corpus, PER_RANK)))
    return corpus, single.path, root / "two"


@pytest.mark.slow
def test_two_process_gloo_equals_single_process(runs, overrides):
    """2 processes x grad_accum 1 == 1 process x grad_accum 2; both log the same global batch in tokens
    at every step (2 rows x 2 micro-batches x 64 token slots; less at an epoch's end, where a
    micro-batch is short: batches never span epochs)."""
    corpus, single, two = runs
    _close(_losses(two), _losses(single))
    assert json.loads((two / "run.json").read_text())["status"] == "finished"
    tokens = [
        [json.loads(line)["global_batch_tokens"] for line in Path(run, "metrics.jsonl").read_text().splitlines()]
        for run in (single, two)
    ]
    assert tokens[0] == tokens[1] and max(tokens[0]) == 2 * 2 * 64 and min(tokens[0]) > 0
    # a different global batch (one micro-batch per step) does differ: the comparison can fail
    other, _ = train(
        resolve(None, None, overrides(corpus, ["train.grad_accum=1", "train.steps=3"])), two.parent / "other", **QUIET
    )
    assert abs(_losses(other.path)[1][1] - _losses(single)[1][1]) > 1e-3


@pytest.mark.slow
def test_ddp_checkpoint_resumes_on_one_process(runs, tmp_path):
    """2 -> 1: the 2-process run's step-10 checkpoint continues on 1 process with grad_accum doubled (the
    same global batch) and matches the uninterrupted 2-process run; the data cursor is global."""
    corpus, single, two = runs
    dst = tmp_path / "two_to_one"
    shutil.copytree(two, dst)
    shutil.rmtree(dst / checkpoint.CKPT_DIR / f"step_{STEPS:08d}")  # resume from step 10
    train(None, dst, resume=True, overrides=["train.grad_accum=2"], **QUIET)  # 2 -> 1
    _close(_losses(dst), _losses(two))
    _close(_losses(dst), _losses(single))


@pytest.mark.slow
def test_ddp_checkpoint_resumes_on_two_processes(runs, tmp_path):
    """1 -> 2: the 1-process run's step-10 checkpoint continues on 2 processes with grad_accum halved and
    matches both uninterrupted runs; a resume that changes the global batch says so."""
    corpus, single, two = runs
    dst = tmp_path / "one_to_two"
    shutil.copytree(single, dst)
    shutil.rmtree(dst / checkpoint.CKPT_DIR / f"step_{STEPS:08d}")
    r = _nproc(2, "--resume", "--out", str(dst), *_sets(PER_RANK))  # 1 -> 2
    assert b"global batch changes" not in r.stdout + r.stderr
    _close(_losses(dst), _losses(two))
    _close(_losses(dst), _losses(single))
    told = []
    shutil.rmtree(dst / checkpoint.CKPT_DIR / f"step_{STEPS:08d}")
    train(None, dst, resume=True, progress=False, log=told.append)  # 2 -> 1 keeping grad_accum 1: told
    assert any("global batch changes from 2 to 1 micro-batches" in m for m in told), told


def test_ranks_read_disjoint_micro_batches_and_every_span_once(tiny_overrides, tiny_corpus, tmp_path, monkeypatch):
    """Ranks simulated in one process (distributed.world_size/rank patched, no process group): every
    token read goes through ShardStore.tokens, recorded per rank and step. Per step the 2 ranks'
    reads are disjoint and together exactly the micro-batches of the 1-process run with the same global
    batch; over the first epoch every document span is read exactly once, and the spans of each
    document tile it (nothing dropped)."""
    from collections import Counter

    from genlab.data import corpus
    from genlab.train import distributed
    from genlab.train.trainer import prepare_training

    reads: list = []
    real_tokens = corpus.ShardStore.tokens

    def tokens(self, k, start, end):
        reads.append((k, start, end))
        return real_tokens(self, k, start, end)

    monkeypatch.setattr(corpus.ShardStore, "tokens", tokens)
    ov = tiny_overrides(tiny_corpus, steps=1000, extra=["train.batch_rows=1"])

    def per_step(world, r, accum, steps):
        monkeypatch.setattr(distributed, "world_size", lambda: world)
        monkeypatch.setattr(distributed, "rank", lambda: r)
        cfg = resolve(None, None, [*ov, f"train.grad_accum={accum}"])
        _, trainer = prepare_training(cfg, tmp_path / f"w{world}_r{r}_{steps}", **QUIET)
        try:
            out = []
            for _ in range(steps):
                reads.clear()
                trainer.train_step()
                out.append(list(reads))
            return out, trainer
        finally:
            trainer.run.release()

    # micro-batches in epoch 0 (the stream's layout; no tokens read)
    _, ref_trainer = per_step(1, 0, 4, 0)
    stream, state, k = ref_trainer.task.train_data, (0, 0, 0), 0
    while state[0] == 0 and state[1] < stream.n_blocks(0):
        _, state = stream.layout_at(state)
        k += 1
    steps = -(-k // 4)  # 4 micro-batches per step: 1 process x 4, or 2 processes x 2
    ref, _ = per_step(1, 0, 4, steps)
    ranks = [per_step(2, r, 2, steps)[0] for r in (0, 1)]
    for step in range(steps):
        a, b = set(ranks[0][step]), set(ranks[1][step])
        assert a and b and not a & b, step  # each rank trains on something, never the same span
        assert Counter(ranks[0][step]) + Counter(ranks[1][step]) == Counter(ref[step]), step

    # the first epoch: rank r reads global micro-batches r, r+2, ... in order; keep those below k
    rows = stream.epoch_rows(0)
    spans_of = {}  # global micro-batch index -> its spans (batch_rows = 1: one row each)
    state, g = (0, 0, 0), 0
    while g < k:
        lay, state = stream.layout_at(state)
        spans_of[g] = [sp for row in lay for sp in row]
        g += 1
    epoch = Counter()
    for r in (0, 1):
        flat = [sp for step in ranks[r] for sp in step]
        own = [sp for g in range(r, k, 2) for sp in spans_of[g]]
        assert flat[: len(own)] == own  # the rank read exactly its micro-batches, in stream order
        epoch.update(own)
    expected = Counter(sp for row in rows for sp in row)
    assert epoch == expected and set(epoch.values()) == {1}
    lengths = stream.store.lengths
    by_doc: dict = {}
    for d, s, e in epoch:
        by_doc.setdefault(d, []).append((s, e))
    assert sorted(by_doc) == list(range(len(lengths)))  # every document
    for d, parts in by_doc.items():
        parts.sort()
        assert parts[0][0] == 0 and parts[-1][1] == lengths[d]
        assert all(p[1] == q[0] for p, q in zip(parts, parts[1:]))  # contiguous: no gap, no overlap


def test_nproc_bad_input_is_one_line(tiny_overrides, tiny_corpus, tmp_path, capsys):
    sets = _sets(tiny_overrides(tiny_corpus, extra=["train.grad_accum=3"]))  # any grad_accum is fine now
    assert main(["train", "--nproc", "2", *sets]) == 2
    assert "--nproc needs --out" in capsys.readouterr().err
    assert main(["train", "--nproc", "0", "--out", str(tmp_path / "r")]) == 2
    for argv, says in [
        (["--nnodes", "2", "--node-rank", "2", "--master-addr", "127.0.0.1"], "--node-rank 2 is not below --nnodes 2"),
        (["--node-rank", "1"], "--node-rank 1 is not below --nnodes 1"),
        (["--nnodes", "2", "--node-rank", "1"], "--nnodes 2 needs --master-addr"),
        (["--nnodes", "2", "--master-addr", "x"], "--nnodes needs --out"),
        (["--nnodes", "2", "--master-addr", "x", "--master-port", "70000"], "is not a TCP port"),
    ]:
        capsys.readouterr()
        assert main(["train", *argv, *sets] + ["--out", str(tmp_path / "r")] * ("--out" not in says)) == 2, argv
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_two_nodes_on_the_loopback_equal_two_processes_on_one(runs, overrides, tmp_path):
    """Two `genlab train --nnodes 2 --node-rank R --master-addr 127.0.0.1` (each a torchrun agent with
    one process, static rendezvous) write one run (node 0's rank 0) equal to the 1-node x 2-process run:
    the same losses and final weights within 1e-5."""
    corpus, single, two = runs
    out, port = tmp_path / "nodes", str(_free_port())
    args = ["--out", str(out), "--master-addr", "127.0.0.1", "--master-port", port, "--nnodes", "2"]
    cmd = [sys.executable, "-m", "genlab", "train", "--no-progress", *args, *_sets(overrides(corpus, PER_RANK))]
    procs = [
        subprocess.Popen([*cmd, "--node-rank", str(r)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        for r in (0, 1)
    ]
    try:
        res = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (o, e) in zip(procs, res):
        assert p.returncode == 0, (o + e).decode()[-3000:]
    assert b"run dir:" in res[0][0] and b"run dir:" not in res[1][0]  # node 0 alone talks and writes
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    _close(_losses(out), _losses(two))
    a, b = _weights(out), _weights(two)
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5


@pytest.mark.slow
def test_presets_run_unchanged_on_two_processes(tmp_path):
    """Every preset runs on N processes as it is (grad_accum is per process): lm-tiny through plain
    torchrun and a density preset through `genlab train --nproc 2`; `genlab info` states the semantics."""
    lm = tmp_path / "lm"
    cmd = [sys.executable, "-m", "genlab.train.torchrun", "--standalone", "--nproc-per-node", "2", "-m", "genlab"]
    r = subprocess.run(
        [*cmd, "train", "--preset", "lm-tiny", "--steps", "2", "--out", str(lm), "--no-progress"],
        capture_output=True,
        env=ENV,
        timeout=300,
    )
    assert r.returncode == 0, (r.stdout + r.stderr).decode()[-3000:]
    recs = [json.loads(line) for line in (lm / "metrics.jsonl").read_text().splitlines()]
    cfg = resolve("lm-tiny", None, [])
    assert recs[-1]["step"] == 2
    assert recs[-1]["global_batch_tokens"] == cfg.train.batch_rows * cfg.train.grad_accum * 2 * cfg.data.packing_length
    _nproc(2, "--preset", "made-digits", "--steps", "2", "--out", str(tmp_path / "made"))
    assert json.loads((tmp_path / "made" / "run.json").read_text())["status"] == "finished"
    info = subprocess.run([sys.executable, "-m", "genlab", "info", str(lm)], capture_output=True, env=ENV).stdout
    assert b"# batch: 8 rows x 1 accumulation x N processes = global 8 x N rows = " in info


@pytest.mark.slow
def test_fsdp2_resume_1_to_2_sharded_checkpoints_2_to_1_and_consolidation(runs, tmp_path):
    """The 1-process run's whole checkpoint of step 10 resumes as FSDP2 (fully_shard per block) on 2 gloo
    ranks with the same losses; its sharded dcp/ checkpoints (steps 15, 20) resume on 1 process; the
    shards consolidate to the checkpoint's model.safetensors; a corrupted shard is detected."""
    from safetensors.torch import load_file

    from genlab.train import sharded_checkpoint

    corpus, single, _ = runs
    fsdp = tmp_path / "fsdp"
    shutil.copytree(single, fsdp)
    shutil.rmtree(fsdp / checkpoint.CKPT_DIR / f"step_{STEPS:08d}")
    fsdp_sets = ["--set", "train.parallel=fsdp", "--set", "train.ckpt_every=5", *_sets(PER_RANK)]
    _nproc(2, "--resume", "--out", str(fsdp), *fsdp_sets)  # 1 -> 2
    _close(_losses(fsdp), _losses(single))
    ck15 = fsdp / checkpoint.CKPT_DIR / "step_00000015"
    assert sorted(p.name for p in (ck15 / "dcp").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    sharded_checkpoint.consolidate(ck15, tmp_path / "whole.safetensors")
    whole, saved = load_file(str(tmp_path / "whole.safetensors")), load_file(str(ck15 / "model.safetensors"))
    assert whole.keys() == saved.keys() and all(torch.equal(whole[k], saved[k]) for k in whole)

    back = tmp_path / "fsdp_to_one"
    shutil.copytree(fsdp, back)
    shutil.rmtree(back / checkpoint.CKPT_DIR / f"step_{STEPS:08d}")
    train(None, back, resume=True, overrides=["train.grad_accum=2"], **QUIET)  # 2 -> 1 through step 15's shards
    _close(_losses(back), _losses(single))

    shard = ck15 / "dcp" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert "corrupted" in checkpoint.verify(ck15)
    shutil.rmtree(fsdp / checkpoint.CKPT_DIR / f"step_{STEPS:08d}")
    assert checkpoint.latest_valid(fsdp, warn=lambda m: None).name == "step_00000010"  # 15 is skipped


@pytest.mark.slow
def test_ctrl_c_under_torchrun_stops_every_rank_at_one_step_with_a_checkpoint(overrides, tiny_corpus, tmp_path):
    """A terminal Ctrl-C reaches the whole process group (genlab, torchrun, both workers; torchrun
    forwards it to the workers once more): both ranks stop after the same step, a complete
    checkpoint of that step is written, the exit status is 130 without a traceback, and the run
    resumes on 2 processes."""
    import signal
    import time

    out = tmp_path / "run"
    sets = [f"--set={o}" for o in overrides(tiny_corpus)] + [
        "--set=train.steps=100000",
        "--set=train.ckpt_every=100000",
        # the run lasts until the Ctrl-C: long enough on a tiny corpus that the loss-spike guard can end it
        # first (near-zero grad norms, then an epoch's short last micro-batch); this test is about Ctrl-C
        "--set=train.spike_window=0",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "genlab", "train", "--no-progress", "--nproc", "2", "--out", str(out), *sets],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
        start_new_session=True,
    )
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    try:
        _, err = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = err.decode()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err
    status = json.loads((out / "run.json").read_text())
    stopped = status["step"]
    assert status["status"] == "interrupted" and 3 <= stopped < 100000
    assert checkpoint.latest_valid(out).name == f"step_{stopped:08d}"
    assert _losses(out)[-1][0] == stopped  # the last step logged is the one saved
    _nproc(2, "--resume", "--out", str(out), "--steps", str(stopped + 2))
    assert [s for s, _ in _losses(out)][-3:] == [stopped, stopped + 1, stopped + 2]


@pytest.mark.slow
def test_fsdp2_early_stopping_saves_the_best_whole_model(overrides, tiny_corpus, tmp_path):
    """FSDP2 + train.early_stop_patience: the best weights go to RUN/best/ as one whole-model
    checkpoint (gathered from the shards by every rank, written by rank 0); `genlab eval`'s loader
    picks them, and they reproduce the best val_loss that metrics.jsonl recorded."""
    from genlab.train.rundir import BEST_DIR, load_run

    out = tmp_path / "run"
    _nproc(
        2,
        "--out",
        str(out),
        *[
            f"--set={o}"
            for o in overrides(
                tiny_corpus, ["train.parallel=fsdp", "train.eval_every=4", "train.early_stop_patience=2"]
            )
        ],
    )
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["val_loss"], r["step"]) for r in recs if "val_loss" in r]
    best_loss, best_step = min(evals)
    ck = checkpoint.latest_valid(out / BEST_DIR)
    assert ck is not None and ck.name == f"step_{best_step:08d}" and not (ck / "dcp").exists()
    run, cfg, task, model = load_run(str(out))
    assert run.checkpoint_used == ck
    task.prepare(run.path, fresh=False)  # the run's validation split, as the trainer evaluated it
    got = task.evaluate(model, max_batches=cfg.train.eval_batches)["val_loss"]
    assert abs(got - best_loss) <= 1e-5, (got, best_loss)
