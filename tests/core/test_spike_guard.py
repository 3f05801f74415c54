"""The loss-spike guard: unit behaviour, and inside the trainer an injected 100x loss spike is skipped
(no weight change, a metrics record with "skipped": true) while every other step updates; resume
with an active guard stays bitwise exact."""

import json
import shutil
from pathlib import Path

import pytest

from genlab.config import resolve
from genlab.errors import GenlabError
from genlab.train import checkpoint
from genlab.train.guards import SpikeGuard
from genlab.train.trainer import prepare_training, train

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny shapes, 1 thread


def test_guard_unit():
    g = SpikeGuard(window=3, factor=10.0)
    assert [g.check(x, 1.0) for x in (5.0, 4.0, 4.5)] == [None] * 3  # filling the window: never a spike
    assert g.check(49.0, 1.0) is None  # 49 < 10 x 5
    assert "loss" in g.check(500.0, 1.0)  # 500 > 10 x max(4, 4.5, 49)
    assert "grad norm" in g.check(4.0, 11.0)  # grad norm 11 > 10 x 1
    assert g.skipped == 2 and g.loss.max == 49.0  # spikes never enter the windows
    assert "non-finite loss" in g.check(float("nan"), 1.0)  # skipped (tests/test_reliability.py)
    off = SpikeGuard(window=0, factor=10.0)
    assert not off.enabled and off.check(1e9, 1e9) is None
    h = SpikeGuard(window=3, factor=10.0)
    h.load_state_dict(g.state_dict())
    assert h.check(600.0, 1.0) is not None and h.loss.max == 49.0
    with pytest.raises(GenlabError, match="in a row"):
        for _ in range(5):
            g.check(1e6, 1.0)


def test_injected_spike_is_skipped_and_nothing_else(tiny_overrides, watch_updates, tiny_corpus, tmp_path):
    spike_step = 6  # the 6th update (after steps 0..4 and a full window of 4)
    cfg = resolve(
        None, None, tiny_overrides(tiny_corpus, steps=9, extra=["train.spike_window=4", "train.spike_factor=10"])
    )
    run, trainer = prepare_training(cfg, tmp_path / "r", progress=False, log=lambda *a: None)
    loss_fn = trainer.task.loss

    def spiky_loss(model, batch):
        loss_sum, n = loss_fn(model, batch)
        return (loss_sum * 100 if trainer.step == spike_step - 1 else loss_sum), n

    trainer.task.loss = spiky_loss
    changed = watch_updates(trainer)
    told = []  # what a model's per-step hook (the MoE bias update) hears about each step
    trainer.model.on_optimizer_step = lambda lr_factor, skipped: told.append(skipped) or {}
    trainer.fit()
    assert changed == {s: s != spike_step for s in range(1, 10)}
    assert told == [s == spike_step for s in range(1, 10)]
    records = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    skipped = [r["step"] for r in records if r.get("skipped")]
    assert skipped == [spike_step] and "loss" in records[spike_step - 1]["skip_reason"]
    assert trainer.guard.skipped == 1


def _losses(run_dir):
    return [
        (r["step"], r["loss"], r.get("skipped", False))
        for r in map(json.loads, Path(run_dir, "metrics.jsonl").read_text().splitlines())
    ]


def test_resume_with_an_active_guard_is_bitwise_exact(tiny_overrides, tiny_corpus, tmp_path):
    # A hair-trigger guard (window 2, factor 2.5) skips many steps; resuming from step 4 must make the
    # same decisions, which needs the saved windows (fresh windows would judge nothing for 2 steps).
    # (Tighter factors skip 5 steps in a row on this data order, which stops the run by design.)
    extra = ["train.spike_window=2", "train.spike_factor=2.5", "train.ckpt_every=4", "train.keep_ckpts=5"]
    extra.append("train.lr=3e-2")
    cfg = resolve(None, None, tiny_overrides(tiny_corpus, steps=10, extra=extra))
    full, _ = train(cfg, tmp_path / "full", progress=False, log=lambda *a: None)
    part = tmp_path / "part"
    shutil.copytree(full.path, part)
    for ck in checkpoint.list_checkpoints(part):
        if ck.name != "step_00000004":
            shutil.rmtree(ck)
    train(None, part, resume=True, progress=False, log=lambda *a: None)
    ref = _losses(full.path)
    assert _losses(part) == ref
    assert any(s for _, _, s in ref[4:6]) and not all(s for _, _, s in ref)  # the guard acted right after resume
