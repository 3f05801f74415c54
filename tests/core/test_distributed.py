"""Data parallel through torchrun (gloo, CPU): a 2-process run equals the 1-process run with the same
config (train.grad_accum counts micro-batches over all ranks) within 1e-5 in loss over 20 steps;
rank 0 alone writes metrics; checkpoints resume on a different number of processes (2 -> 1, 1 -> 2);
FSDP2 with torch.distributed.checkpoint shards, consolidated to one safetensors file."""

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

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny shapes, 1 thread


@pytest.fixture(scope="module")
def overrides(tiny_overrides):
    """`overrides(corpus, extra=())`: the tiny run of this module (STEPS steps, 2 rows x 2 micro-batches)."""

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
    _nproc(2, "--out", str(root / "two"), *[f"--set={o}" for o in overrides(corpus)])
    return corpus, single.path, root / "two"


@pytest.mark.slow
def test_two_process_gloo_equals_single_process(runs, overrides):
    corpus, single, two = runs
    _close(_losses(two), _losses(single))
    assert json.loads((two / "run.json").read_text())["status"] == "finished"
    # a different global batch (one micro-batch per step) does differ: the comparison can fail
    other, _ = train(
        resolve(None, None, overrides(corpus, ["train.grad_accum=1", "train.steps=3"])), two.parent / "other", **QUIET
    )
    assert abs(_losses(other.path)[1][1] - _losses(single)[1][1]) > 1e-3


@pytest.mark.slow
def test_ddp_checkpoint_resumes_on_one_process(runs, tmp_path):
    corpus, single, two = runs
    dst = tmp_path / "two_to_one"
    shutil.copytree(two, dst)
    shutil.rmtree(dst / checkpoint.CKPT_DIR / f"step_{STEPS:08d}")  # resume from step 10
    train(None, dst, resume=True, **QUIET)  # 2 -> 1
    _close(_losses(dst), _losses(single))


def test_nproc_bad_input_is_one_line(tiny_overrides, tiny_corpus, tmp_path, capsys):
    sets = [f"--set={o}" for o in tiny_overrides(tiny_corpus, extra=["train.grad_accum=3"])]
    assert main(["train", "--nproc", "2", "--out", str(tmp_path / "r"), *sets]) == 2
    err = capsys.readouterr().err.strip()
    assert "grad_accum = 3 is not a multiple of --nproc 2" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()
    assert main(["train", "--nproc", "2", *sets]) == 2
    assert "--nproc needs --out" in capsys.readouterr().err
    assert main(["train", "--nproc", "0", "--out", str(tmp_path / "r")]) == 2


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
    _nproc(2, "--resume", "--out", str(fsdp), "--set", "train.parallel=fsdp", "--set", "train.ckpt_every=5")  # 1 -> 2
    _close(_losses(fsdp), _losses(single))
    ck15 = fsdp / checkpoint.CKPT_DIR / "step_00000015"
    assert sorted(p.name for p in (ck15 / "dcp").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    sharded_checkpoint.consolidate(ck15, tmp_path / "whole.safetensors")
    whole, saved = load_file(str(tmp_path / "whole.safetensors")), load_file(str(ck15 / "model.safetensors"))
    assert whole.keys() == saved.keys() and all(torch.equal(whole[k], saved[k]) for k in whole)

    back = tmp_path / "fsdp_to_one"
    shutil.copytree(fsdp, back)
    shutil.rmtree(back / checkpoint.CKPT_DIR / f"step_{STEPS:08d}")
    train(None, back, resume=True, **QUIET)  # 2 -> 1 through the sharded files of step 15
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
