"""Run directory ownership (RUN/.lock): a second `genlab train` on a run in use is refused with one
line naming the holder's PID; a holder killed with SIGKILL leaves a stale lock that the next run takes
over; the lock goes away when a run ends, and a refused fresh run leaves nothing behind."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from genlab.config import resolve
from genlab.errors import GenlabError
from genlab.train import runlock
from genlab.train.rundir import RunDir
from genlab.train.trainer import prepare_training, train

QUIET = dict(progress=False, log=lambda *a, **k: None)


def child_env() -> dict:
    """The spawned processes' environment, read at call time (after conftest.py set GENLAB_CACHE)."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH", "")]),
    }


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny shapes, 1 thread


def _sets(corpus, steps=3):
    return [
        f"data.path={corpus}",
        "data.tokenizer=byte",
        "data.packing_length=64",
        "model.d_model=32",
        "model.n_layer=2",
        "model.n_head=4",
        "model.n_kv_head=2",
        f"train.steps={steps}",
        "train.batch_rows=4",
        "train.eval_every=1000",
        "train.ckpt_every=3",
        "train.warmup_steps=1",
    ]


def _genlab_train(*args):
    return subprocess.run(
        [sys.executable, "-m", "genlab", "train", "--no-progress", *args],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )


def _hold(path: Path):
    """A second process that holds RUN/.lock (taken as the trainer takes it) until killed."""
    code = (
        "import sys, time; from genlab.train import runlock; "
        "runlock.RunLock.acquire(sys.argv[1]); print('held', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True, env=child_env())
    assert proc.stdout.readline().strip() == "held"
    return proc


def _refused(r, path: Path, pid: int):
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == [
        f"genlab: error: {path} is in use by genlab process {pid} ({path / '.lock'}); wait for it to finish or stop it"
    ]


@pytest.mark.slow
def test_resume_of_a_run_in_use_is_refused_then_a_dead_holders_lock_is_taken_over(tiny_corpus, tmp_path):
    run, _ = train(resolve(None, None, _sets(tiny_corpus)), tmp_path / "run", **QUIET)
    assert not (run.path / ".lock").exists()  # released at the end of the run
    holder = _hold(run.path)
    try:
        _refused(_genlab_train("--out", str(run.path), "--resume", "--steps", "6"), run.path, holder.pid)
        fresh = _genlab_train("--out", str(run.path), *[f"--set={s}" for s in _sets(tiny_corpus)])
        _refused(fresh, run.path, holder.pid)  # not "already exists": the holder is named first
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run.path / ".lock").read_text().strip() == str(holder.pid)  # stale: the OS dropped the flock
    r = _genlab_train("--out", str(run.path), "--resume", "--steps", "6")
    assert r.returncode == 0, r.stderr
    assert f"left by process {holder.pid}, which is no longer running" in r.stderr
    assert RunDir(run.path).status()["status"] == "finished" and not (run.path / ".lock").exists()


def test_fresh_run_on_a_locked_dir_is_refused_and_leaves_it_alone(tiny_corpus, tmp_path):
    out = tmp_path / "new"
    out.mkdir()
    holder = _hold(out)  # e.g. another fresh run between taking the lock and writing config.toml
    try:
        cfg = resolve(None, None, _sets(tiny_corpus))
        with pytest.raises(GenlabError, match=f"in use by genlab process {holder.pid}"):
            prepare_training(cfg, out, **QUIET)
        assert [p.name for p in out.iterdir()] == [".lock"]  # nothing of ours written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_same_process_second_trainer_is_refused_and_lock_released_on_error(tiny_corpus, tmp_path):
    run, _ = train(resolve(None, None, _sets(tiny_corpus)), tmp_path / "run", **QUIET)
    _, first = prepare_training(None, run.path, resume=True, overrides=["train.steps=6"], **QUIET)
    with pytest.raises(GenlabError, match=f"in use by genlab process {os.getpid()}"):
        prepare_training(None, run.path, resume=True, **QUIET)
    first.task.loss = lambda *a: (_ for _ in ()).throw(GenlabError("boom"))  # the run fails mid-way
    with pytest.raises(GenlabError, match="boom"):
        first.fit()
    assert RunDir(run.path).status()["status"] == "failed" and not (run.path / ".lock").exists()
    _, again = prepare_training(None, run.path, resume=True, **QUIET)  # free again
    again.fit()


def test_bad_input_leaves_no_run_dir(tiny_corpus, tmp_path):
    with pytest.raises(GenlabError):
        cfg = resolve(None, None, _sets(tiny_corpus) + ["data.path=" + str(tmp_path / "missing.jsonl")])
        prepare_training(cfg, tmp_path / "run", **QUIET)
    assert not (tmp_path / "run").exists()


def test_without_flock_the_recorded_pid_decides(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "fcntl", None)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (tmp_path / ".lock").write_text(f"{live.pid}\n")
        with pytest.raises(GenlabError, match=f"in use by genlab process {live.pid}"):
            runlock.RunLock.acquire(tmp_path)
        assert runlock.holder(tmp_path) == live.pid
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()
    lock = runlock.RunLock.acquire(tmp_path)  # the recorded holder is dead: taken over
    assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    lock.release()
    assert not (tmp_path / ".lock").exists() and runlock.holder(tmp_path) is None
