"""A write error (ENOSPC, EIO) inside a checkpoint: the last complete checkpoint stays valid, no
partial folder is left, the CLI ends with one line naming the path and the OS error, run.json says
"failed", and `genlab train --resume` then ends with the weights of an uninterrupted run, bit for bit."""

import errno
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genlab import cli
from genlab.errors import GenlabError
from genlab.train import checkpoint
from genlab.train.rundir import RunDir

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny shapes, 1 thread

STEPS, FAULT_STEP = 12, 8


def _sets(corpus):
    return [
        f"--set={s}"
        for s in (
            f"data.path={corpus}",
            "data.tokenizer=byte",
            "data.packing_length=64",
            "model.d_model=32",
            "model.n_layer=2",
            "model.n_head=4",
            "model.n_kv_head=2",
            f"train.steps={STEPS}",
            "train.batch_rows=4",
            "train.log_every=1",
            "train.eval_every=1000",
            "train.ckpt_every=4",
            "train.warmup_steps=2",
        )
    ]


def _disk_error(monkeypatch, code: int, step: int):
    """state.pt of checkpoint `step` fails half-way with OSError(code), as a full or failing disk does."""
    real = checkpoint.write_state

    def write_state(state, path):
        if Path(path).parent.name == f"step_{step:08d}.tmp":
            Path(path).write_bytes(b"\0" * 100)
            raise OSError(code, os.strerror(code), str(path))
        real(state, path)

    monkeypatch.setattr(checkpoint, "write_state", write_state)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_write_error_in_a_checkpoint_then_resume_exactly(tiny_corpus, tmp_path, monkeypatch, capsys, code):
    out, ref = tmp_path / "run", tmp_path / "ref"
    with monkeypatch.context() as m:
        _disk_error(m, code, FAULT_STEP)
        assert cli.main(["train", "--no-progress", "--out", str(out), *_sets(tiny_corpus)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"genlab: error: checkpoint step {FAULT_STEP} could not be written to {out / 'checkpoints'}: "
        f"{os.strerror(code)}; the last complete checkpoint (step 4) is intact; free space and run "
        f"`genlab train --out {out} --resume`"
    ]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000004"]  # no .tmp left
    assert checkpoint.verify(out / "checkpoints" / "step_00000004") is None
    assert RunDir(out).status() | {"time": None} == {"status": "failed", "step": FAULT_STEP, "time": None}
    assert not (out / ".lock").exists()

    assert cli.main(["train", "--no-progress", "--out", str(out), "--resume"]) == 0
    assert cli.main(["train", "--no-progress", "--out", str(ref), *_sets(tiny_corpus)]) == 0
    got, want = (load_file(str(checkpoint.latest_valid(d) / "model.safetensors")) for d in (out, ref))
    assert checkpoint.latest_valid(out).name == f"step_{STEPS:08d}" and got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    losses = [[(r["step"], r["loss"]) for r in RunDir(d).metrics()] for d in (out, ref)]
    assert losses[0] == losses[1] and len(losses[0]) == STEPS  # metrics after step 4 were rewritten


def test_staging_failure_keeps_earlier_checkpoints(tmp_path):
    model = torch.nn.Linear(3, 2)
    checkpoint.save(tmp_path, 1, model, {"step": 1}, keep=2)
    with pytest.raises(
        GenlabError,
        match=r"checkpoint step 2 could not be written to .*: Input/output error; "
        r"the last complete checkpoint \(step 1\) is intact",
    ):
        with checkpoint.staging(tmp_path, 2, keep=2) as tmp:
            (tmp / "model.safetensors").write_bytes(b"x")
            raise OSError(errno.EIO, os.strerror(errno.EIO))
    with pytest.raises(ValueError):  # not a write error: raised as it is, still cleaned up
        with checkpoint.staging(tmp_path, 3, keep=2):
            raise ValueError("a bug")
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000001"]
    assert checkpoint.verify(tmp_path / "checkpoints" / "step_00000001") is None
