import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from genlab.config import TrainConfig, resolve
from genlab.train import checkpoint
from genlab.train.optim import lr_factor
from genlab.train.trainer import train


def _losses(run_dir):
    return [(r["step"], r["loss"]) for r in map(json.loads, Path(run_dir, "metrics.jsonl").read_text().splitlines())]


@pytest.mark.parametrize("objective", ["causal", "masked", "any-order"])
def test_resume_is_bitwise_exact(tiny_overrides, tiny_corpus, tmp_path, objective):
    cfg = resolve(
        None, None, tiny_overrides(tiny_corpus, steps=6, extra=["train.grad_accum=2", f"train.objective={objective}"])
    )
    full, _ = train(cfg, tmp_path / "full", progress=False, log=lambda *a: None)
    # Make a copy that stopped at step 3: drop the later checkpoint and metrics, then resume.
    part = tmp_path / "part"
    shutil.copytree(full.path, part)
    for ck in checkpoint.list_checkpoints(part):
        if ck.name != "step_00000003":
            shutil.rmtree(ck)
    (part / "metrics.jsonl").write_text(
        "".join(
            line + "\n" for line in (part / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= 3
        )
    )
    train(None, part, resume=True, progress=False, log=lambda *a: None)
    assert _losses(part) == _losses(full.path)  # exact float equality, every step
    assert len(_losses(full.path)) == 6


def test_corrupted_latest_checkpoint_is_skipped(tiny_overrides, tiny_corpus, tmp_path):
    cfg = resolve(None, None, tiny_overrides(tiny_corpus, steps=6))
    run, _ = train(cfg, tmp_path / "r", progress=False, log=lambda *a: None)
    cks = checkpoint.list_checkpoints(run.path)
    assert [c.name for c in cks] == ["step_00000003", "step_00000006"]
    with open(cks[-1] / "model.safetensors", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01garbage")
    assert "corrupted" in checkpoint.verify(cks[-1])
    warnings = []
    assert checkpoint.latest_valid(run.path, warn=warnings.append) == cks[0]
    assert warnings and "skipping" in warnings[0]
    # truncated
    p = cks[0] / "state.pt"
    p.write_bytes(p.read_bytes()[:50])
    assert "truncated" in checkpoint.verify(cks[0])
    assert checkpoint.latest_valid(run.path, warn=lambda m: None) is None


def test_temporary_checkpoint_folder_is_never_listed(tmp_path):
    (tmp_path / "checkpoints" / "step_00000009.tmp").mkdir(parents=True)
    assert checkpoint.list_checkpoints(tmp_path) == []


def test_multistep_schedule():
    t = TrainConfig(steps=100, warmup_steps=10, schedule="multistep")
    assert lr_factor(0, t) == pytest.approx(0.1) and lr_factor(9, t) == 1.0
    assert lr_factor(79, t) == 1.0 and lr_factor(80, t) == 0.316 and lr_factor(89, t) == 0.316
    assert lr_factor(90, t) == 0.1 and lr_factor(99, t) == 0.1
    c = TrainConfig(steps=100, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(10, c) == pytest.approx(1.0) and lr_factor(99, c) == pytest.approx(0.1)


def test_weight_decay_only_on_matrices():
    from genlab.families import build_lm
    from genlab.families.lm.args import LMArgs
    from genlab.train.optim import build_optimizer

    model = build_lm(LMArgs(d_model=32, n_layer=1, n_head=4), 40, 8)
    opt = build_optimizer(model, TrainConfig())
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])
    assert opt.defaults["betas"] == (0.9, 0.95)


@pytest.mark.slow
def test_ctrl_c_writes_checkpoint_and_resume_matches(tiny_overrides, tiny_corpus, tmp_path):
    """A real process gets SIGINT mid-run, saves, exits 130; resuming gives the uninterrupted losses."""
    steps = 400
    args = [
        f"--set={o}"
        for o in tiny_overrides(tiny_corpus, steps=steps, extra=["train.ckpt_every=1000", "train.eval_every=1000"])
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "genlab", "train", "--no-progress", *args]
    proc = subprocess.Popen(
        cmd + ["--out", str(tmp_path / "int")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    metrics = tmp_path / "int" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 20):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert b"Traceback" not in err
    status = json.loads((tmp_path / "int" / "run.json").read_text())
    assert status["status"] == "interrupted" and 0 < status["step"] < steps
    r = subprocess.run(
        [sys.executable, "-m", "genlab", "train", "--no-progress", "--resume", "--out", str(tmp_path / "int")],
        capture_output=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr.decode()
    r = subprocess.run(cmd + ["--out", str(tmp_path / "full")], capture_output=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    assert _losses(tmp_path / "int") == _losses(tmp_path / "full")


def test_stop_on_signal_close_repeats_are_one_request():
    """Under torchrun a Ctrl-C reaches each worker twice at once (from genlab's launcher and forwarded
    by the torchrun agent): that is one request; a signal REPEAT_S later (a second Ctrl-C) interrupts
    at once."""
    from genlab.train.trainer import StopOnSignal

    stop = StopOnSignal()
    stop.REPEAT_S = 0.2
    stop._handler(signal.SIGINT, None)
    assert stop.requested
    stop._handler(signal.SIGINT, None)  # the forwarded copy: still only a request
    time.sleep(0.25)
    with pytest.raises(KeyboardInterrupt):
        stop._handler(signal.SIGTERM, None)
