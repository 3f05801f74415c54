"""Crash safety: NaN/inf steps are skipped and logged (and stop the run when repeated); a training
process killed with SIGKILL mid-run, or inside a checkpoint write (fault-injection hook), resumes with
--resume alone and ends with the losses of an uninterrupted run; a pickle that would run code is refused."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from genlab.config import resolve
from genlab.errors import GenlabError
from genlab.train import checkpoint
from genlab.train.trainer import prepare_training, train

QUIET = dict(progress=False, log=lambda *a, **k: None)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny shapes, 1 thread


def _records(run_dir):
    return [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]


def _poisoned(trainer, bad_steps, kind):
    """Make the loss (kind 'loss') or one gradient (kind 'grad') non-finite at the given 0-based steps."""
    loss_fn = trainer.task.loss

    def loss(model, batch):
        loss_sum, n = loss_fn(model, batch)
        if trainer.step in bad_steps:
            if kind == "loss":
                return loss_sum * float("nan"), n
            x = next(trainer.model.parameters()).flatten()[0]
            return loss_sum + torch.sqrt(x - x.detach()), n  # adds 0 to the loss, an infinite gradient
        return loss_sum, n

    trainer.task.loss = loss


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_nonfinite_step_is_skipped_and_logged(tiny_overrides, watch_updates, tiny_corpus, tmp_path, kind):
    cfg = resolve(None, None, tiny_overrides(tiny_corpus, steps=6, extra=["train.spike_window=0"]))
    run, trainer = prepare_training(cfg, tmp_path / "r", **QUIET)
    _poisoned(trainer, {2}, kind)
    changed = watch_updates(trainer)
    trainer.fit()
    assert changed == {s: s != 3 for s in range(1, 7)}  # the 3rd update (step index 2) left the weights alone
    recs = _records(run.path)
    assert [r["step"] for r in recs if r.get("skipped")] == [3]
    assert "non-finite " + ("loss" if kind == "loss" else "gradient") in recs[2]["skip_reason"]
    text = Path(run.path, "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON: non-finite values are written as null
    if kind == "loss":
        assert recs[2]["loss"] is None
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert trainer.guard.nonfinite == 1


def test_repeated_nonfinite_steps_stop_the_run(tiny_overrides, tiny_corpus, tmp_path):
    cfg = resolve(None, None, tiny_overrides(tiny_corpus, steps=8, extra=["train.nan_patience=3"]))
    run, trainer = prepare_training(cfg, tmp_path / "r", **QUIET)
    _poisoned(trainer, {1, 3, 4, 5, 6}, "loss")  # 1 alone is forgiven; 3, 4, 5 in a row stop it
    with pytest.raises(GenlabError, match="non-finite loss nan in 3 steps in a row"):
        trainer.fit()
    assert trainer.step == 5


# --------------------------------------------------------------------------- kill -9 and resume
STEPS = 24


def _env() -> dict:
    """os.environ when the test runs (conftest points GENLAB_CACHE at the session's tmp dir), one thread."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture
def overrides(tiny_overrides):
    """`overrides(corpus)`: the tiny run of the kill-and-resume test (STEPS steps, checkpoints every 4)."""

    def make(corpus):
        return tiny_overrides(
            corpus,
            steps=STEPS,
            extra=["train.ckpt_every=4", "train.keep_ckpts=3", "train.eval_every=1000", "train.peak_flops=1e12"],
        )

    return make


def _train_cmd(*args):
    return [sys.executable, "-m", "genlab", "train", "--no-progress", *args]


def _losses(run_dir):
    return [(r["step"], r["loss"]) for r in _records(run_dir)]


@pytest.mark.slow
def test_sigkill_in_a_checkpoint_write_and_mid_run_then_resume(overrides, tiny_corpus, tmp_path):
    """Killed inside the write of step 12 (fault hook), resumed, killed again mid-run (leaving a cut
    metrics line), resumed again: the losses are those of an uninterrupted run."""
    out, ckpts = tmp_path / "run", tmp_path / "run" / checkpoint.CKPT_DIR
    sets = [f"--set={o}" for o in overrides(tiny_corpus)]
    r = subprocess.run(
        _train_cmd("--out", str(out), *sets),
        capture_output=True,
        env={**_env(), checkpoint.FAULT_ENV: "12"},
        timeout=300,
    )
    assert r.returncode == -signal.SIGKILL
    assert (ckpts / "step_00000012.tmp" / "model.safetensors").is_file()  # killed half-way through the write
    assert not (ckpts / "step_00000012.tmp" / "manifest.json").exists()
    assert checkpoint.latest_valid(out).name == "step_00000008"

    metrics = out / "metrics.jsonl"
    proc = subprocess.Popen(
        _train_cmd("--resume", "--out", str(out)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env()
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(metrics.read_text().splitlines()) < 15:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    said = proc.communicate(timeout=60)[0]
    assert proc.returncode == -signal.SIGKILL and b"resumed from step_00000008" in said
    assert 15 <= len(metrics.read_text().splitlines()) < STEPS
    with open(metrics, "a") as f:  # what a kill inside append_metrics leaves behind
        f.write('{"step": 99, "lo')

    r = subprocess.run(_train_cmd("--resume", "--out", str(out)), capture_output=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    assert all(line.endswith("}") for line in metrics.read_text().splitlines())  # rewritten cleanly
    assert not (ckpts / "step_00000012.tmp").exists() and checkpoint.verify(ckpts / f"step_{STEPS:08d}") is None

    ref, _ = train(resolve(None, None, overrides(tiny_corpus)), tmp_path / "ref", **QUIET)
    assert _losses(out) == _losses(ref.path)


def test_pickle_that_runs_code_is_refused(tiny_overrides, tiny_corpus, tmp_path):
    cfg = resolve(None, None, tiny_overrides(tiny_corpus, steps=3))
    run, trainer = prepare_training(cfg, tmp_path / "r", **QUIET)
    trainer.fit()
    ckpt = checkpoint.latest_valid(run.path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"step": 3, "x": Evil()}, ckpt / "state.pt")
    # a forger can rewrite the manifest too: the refusal must come from the loader, not the checksum
    man = json.loads((ckpt / "manifest.json").read_text())
    man["files"]["state.pt"] = {
        "bytes": (ckpt / "state.pt").stat().st_size,
        "sha256": checkpoint._sha256(ckpt / "state.pt"),
    }
    (ckpt / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(GenlabError, match="state.pt cannot be loaded safely"):
        checkpoint.load(ckpt, trainer.model)
    from genlab.cli import main

    assert main(["train", "--no-progress", "--resume", "--out", str(run.path)]) == 2
    assert not marker.exists()
