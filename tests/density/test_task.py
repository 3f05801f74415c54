"""The density task through the shared trainer and the CLI: train on a user .npz, early stopping
with the best weights kept, exact resume, `genlab eval --json`, `genlab sample -n`, optimizers."""

import json

import numpy as np
import pytest
import torch

from genlab.cli import main
from genlab.config import TrainConfig, resolve
from genlab.train import checkpoint
from genlab.train.optim import build_optimizer, lr_factor
from genlab.train.rundir import BEST_DIR
from genlab.train.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny shapes, 1 thread


def _quiet(*a):
    pass


def _cfg(path, *extra):
    return resolve(
        "made-digits",
        None,
        [
            f"data.path={path}",
            "model.d_model=24",
            "model.n_masks=3",
            "train.batch_rows=20",
            "train.eval_every=5",
            "train.log_every=5",
            "train.ckpt_every=5",
            *extra,
        ],
    )


def test_train_eval_sample_cli(npz16, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--no-progress",
            "--preset",
            "made-digits",
            "--set",
            f"data.path={npz16}",
            "--set",
            "model.d_model=24",
            "--set",
            "train.batch_rows=20",
            "--set",
            "train.eval_every=10",
            "--steps",
            "30",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    capsys.readouterr()
    assert json.loads((out / "density.json").read_text())["n_dims"] == 16
    assert main(["eval", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_examples"] == 60 and res["n_dims"] == 16 and BEST_DIR in res["checkpoint"]
    assert res["test_bits_per_dim"] == pytest.approx(res["test_nll_nats"] / (16 * np.log(2)))
    assert 0 < res["test_nll_nats"] < 16 * np.log(2)  # better than uniform after 30 steps
    assert main(["sample", str(out), "-n", "10", "--seed", "3"]) == 0
    png = out / "samples.png"
    assert png.stat().st_size > 100
    import matplotlib.image

    img = matplotlib.image.imread(png)
    assert img.shape[0] > 4 * 3 and img.shape[1] > 4 * 4  # a grid of 4x4 images, upscaled
    assert main(["sample", str(out), "-n", "5", "--out", str(tmp_path / "s.npy")]) == 0
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (5, 16) and set(np.unique(s)) <= {0, 1}
    capsys.readouterr()
    code = main(["sample", str(out), "--out", str(tmp_path / "s.txt")])
    err = capsys.readouterr().err
    assert code == 2 and ".png" in err and err.count("\n") == 1
    # eval --data on another file with the wrong dimensions: one line, exit 2
    np.save(tmp_path / "wrong.npy", np.zeros((4, 9), dtype=np.float32))
    code = main(["eval", str(out), "--data", str(tmp_path / "wrong.npy")])
    assert code == 2 and "9 dimensions" in capsys.readouterr().err
    np.save(tmp_path / "rows.npy", np.load(npz16)["test_data"][:7])
    assert main(["eval", str(out), "--data", str(tmp_path / "rows.npy"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_examples"] == 7
    assert main(["info", str(out)]) == 0 and "MADE" in capsys.readouterr().out


def test_early_stopping_keeps_best_and_eval_uses_it(npz16, tmp_path):
    # lr 0: validation NLL never improves after the first evaluation -> stop after 1 + patience evaluations
    cfg = _cfg(npz16, "train.lr=0", "train.early_stop_patience=2", "train.steps=100")
    run, _ = train(cfg, tmp_path / "r", progress=False, log=_quiet)
    status = json.loads((run.path / "run.json").read_text())
    assert status["status"] == "finished" and status["step"] == 15
    best = checkpoint.list_checkpoints(run.path / BEST_DIR)
    assert [c.name for c in best] == ["step_00000005"]
    # a real run: the kept weights are those of the lowest val_loss on record
    cfg = _cfg(npz16, "train.early_stop_patience=3", "train.steps=60", "train.lr=0.02")
    run, _ = train(cfg, tmp_path / "r2", progress=False, log=_quiet)
    rows = [r for r in run.metrics() if "val_loss" in r]
    best_row = min(rows, key=lambda r: r["val_loss"])
    (ck,) = checkpoint.list_checkpoints(run.path / BEST_DIR)
    assert ck.name == f"step_{best_row['step']:08d}"
    from genlab.train.rundir import load_run

    r, _, task, model = load_run(str(run.path))
    assert r.checkpoint_used == ck
    task.prepare(None)
    assert task.evaluate(model)["val_loss"] == pytest.approx(best_row["val_loss"], rel=1e-6)


def test_resume_is_exact_with_masks(npz16, tmp_path):
    cfg = _cfg(npz16, "train.steps=10", "train.early_stop_patience=0")
    full, _ = train(cfg, tmp_path / "full", progress=False, log=_quiet)
    part, _ = train(
        _cfg(npz16, "train.steps=5", "train.early_stop_patience=0"), tmp_path / "part", progress=False, log=_quiet
    )
    train(None, part.path, resume=True, progress=False, overrides=["train.steps=10"], log=_quiet)
    losses = lambda run: [(r["step"], r["loss"]) for r in run.metrics()]  # noqa: E731
    assert losses(part) == losses(full) and len(losses(full)) == 2


def test_epochs_cover_every_example_once(npz16):
    from genlab.families.density.task import DensityTask

    task = DensityTask(_cfg(npz16, "train.batch_rows=64"))
    task.prepare(None)
    state, seen = task.initial_state(), []
    for _ in range(4):  # 200 rows: batches of 64, 64, 64, 8 -> one epoch
        batch, state = task.next_batch(state)
        seen.append(batch.x)
    assert [len(b) for b in seen] == [64, 64, 64, 8] and state == (1, 0, 4)
    assert torch.equal(torch.cat(seen).sum(0), task._train.sum(0))


def test_optimizers_and_inverse_schedule():
    model = torch.nn.Linear(3, 2)
    kinds = {
        "adamw": torch.optim.AdamW,
        "adagrad": torch.optim.Adagrad,
        "adadelta": torch.optim.Adadelta,
        "sgd": torch.optim.SGD,
    }
    for name, cls in kinds.items():
        assert type(build_optimizer(model, TrainConfig(optimizer=name))) is cls
    ada = build_optimizer(model, TrainConfig(optimizer="adadelta", beta2=0.95, eps=1e-5))
    assert ada.defaults["rho"] == 0.95 and ada.defaults["eps"] == 1e-5
    t = TrainConfig(schedule="inverse", lr_decay=0.01, warmup_steps=0, steps=1000)
    assert lr_factor(0, t) == 1.0 and lr_factor(100, t) == pytest.approx(0.5)
