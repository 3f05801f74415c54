"""Live logging (train.log, genlab/train/loggers.py): TensorBoard event files read back with the
values of metrics.jsonl, MoE load histograms, sample images, resume without duplicate steps, W&B
offline, and bad input (one line, exit 2, no run dir)."""

import io
import json
import shutil
import sys

import numpy as np
import pytest

from genlab.cli import main
from genlab.config import resolve
from genlab.train import checkpoint
from genlab.train.loggers import tile
from genlab.train.trainer import train

EventAccumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator").EventAccumulator

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny shapes, 1 thread

TB = ["train.log=jsonl,tensorboard"]


def _quiet(*a):
    pass


def _events(run_path):
    ea = EventAccumulator(str(run_path / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    ea.Reload()
    return ea


def _records(run_path):
    return [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines()]


def _assert_scalars_match(ea, records):
    """Every number of every metrics.jsonl record is the TensorBoard scalar of that key at that step
    (float32 in the event file), and TensorBoard holds no other steps."""
    expect: dict[str, dict[int, float]] = {}
    for r in records:
        for k, v in r.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                expect.setdefault(k, {})[r["step"]] = float(v)
    assert set(ea.Tags()["scalars"]) == set(expect)
    for tag, by_step in expect.items():
        got = [(e.step, e.value) for e in ea.Scalars(tag)]
        assert [s for s, _ in got] == sorted(by_step), tag  # each step once, in order
        for step, value in got:
            assert value == pytest.approx(by_step[step], rel=1e-6, abs=1e-30), (tag, step)


def test_tensorboard_scalars_equal_metrics_jsonl_and_resume_purges(tiny_overrides, tiny_corpus, tmp_path):
    cfg = resolve(None, None, tiny_overrides(tiny_corpus, steps=6, extra=TB))
    run, _ = train(cfg, tmp_path / "r", progress=False, log=_quiet)
    records = _records(run.path)
    ea = _events(run.path)
    tags = set(ea.Tags()["scalars"])
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "val_loss", "val_bpb"} <= tags
    _assert_scalars_match(ea, records)
    assert [e.step for e in ea.Scalars("val_loss")] == [3, 6]

    # resume from step 3 after the step-6 checkpoint is lost: steps 4..6 are logged again into a new
    # event file whose purge_step (4) hides the first file's steps 4..6 -> no duplicates
    shutil.rmtree(checkpoint.list_checkpoints(run.path)[-1])
    train(None, run.path, resume=True, progress=False, log=_quiet)
    assert len(list((run.path / "tensorboard").glob("events.out.tfevents.*"))) == 2
    after = _records(run.path)
    assert [r["step"] for r in after] == [1, 2, 3, 4, 5, 6]
    _assert_scalars_match(_events(run.path), after)


def test_jsonl_only_writes_no_tensorboard_dir(tiny_overrides, tiny_corpus, tmp_path):
    cfg = resolve(None, None, tiny_overrides(tiny_corpus, steps=2))
    run, _ = train(cfg, tmp_path / "r", progress=False, log=_quiet)
    assert not (run.path / "tensorboard").exists() and len(_records(run.path)) == 2


DEEPSEEK = [
    "model.arch=deepseek",
    "model.q_lora_rank=16",
    "model.kv_lora_rank=16",
    "model.qk_nope_head_dim=8",
    "model.qk_rope_head_dim=4",
    "model.v_head_dim=8",
    "model.ffn_hidden=64",
    "model.n_routed_experts=4",
    "model.num_experts_per_tok=2",
    "model.moe_intermediate_size=16",
]


def test_deepseek_writes_expert_load_histograms(tiny_overrides, tiny_corpus, tmp_path):
    cfg = resolve(None, None, tiny_overrides(tiny_corpus, steps=3, extra=DEEPSEEK + TB))
    run, _ = train(cfg, tmp_path / "r", progress=False, log=_quiet)
    records = _records(run.path)
    loads = sorted(k for k in records[-1] if k.startswith("load/"))
    assert loads, records[-1].keys()
    ea = _events(run.path)
    assert set(ea.Tags()["histograms"]) == set(loads)
    assert {f"maxvio/{k[5:]}" for k in loads} <= set(ea.Tags()["scalars"])
    for tag in loads:
        events = ea.Histograms(tag)
        assert [e.step for e in events] == [1, 2, 3]
        for e, r in zip(events, records):  # bucket i = expert i's tokens at that step
            h = e.histogram_value
            assert list(h.bucket) == [float(v) for v in r[tag]]
            assert h.num == sum(r[tag]) and h.bucket_limit == pytest.approx([0.5, 1.5, 2.5, 3.5])


def _density(path, *extra):
    return resolve(
        "made-digits",
        None,
        [
            f"data.path={path}",
            "model.d_model=24",
            "model.n_masks=3",
            "train.batch_rows=20",
            "train.steps=4",
            "train.eval_every=2",
            "train.log_every=1",
            "train.ckpt_every=4",
            *extra,
        ],
    )


def test_density_logs_sample_images_without_changing_the_run(npz16, tmp_path):
    from PIL import Image

    run, _ = train(_density(npz16, *TB), tmp_path / "tb", progress=False, log=_quiet)
    plain, _ = train(_density(npz16), tmp_path / "plain", progress=False, log=_quiet)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu")} for r in rs]  # noqa: E731
    assert strip(_records(run.path)) == strip(_records(plain.path))  # sampling leaves the RNG alone
    ea = _events(run.path)
    assert ea.Tags()["images"] == ["samples"]
    events = ea.Images("samples")
    assert [e.step for e in events] == [2, 4]
    img = np.asarray(Image.open(io.BytesIO(events[-1].encoded_image_string)))
    # 16 samples of 4x4 in a 4x4 grid with 1-pixel gutters (21 px), each pixel repeated 8x (cells >= 32 px)
    assert img.shape[:2] == (21 * 8, 21 * 8) and set(np.unique(img)) <= {0, 128, 255}


def test_diffusion_logs_reconstructions_then_samples(tmp_path):
    sets = [
        "train.steps=4",
        "train.vae_steps=2",
        "train.batch_rows=8",
        "train.eval_every=2",
        "train.eval_batches=1",
        "train.log_every=1",
        "train.ckpt_every=4",
        "train.warmup_steps=1",
        *TB,
    ]
    run, _ = train(resolve("ldm-digits", None, sets), tmp_path / "r", progress=False, log=_quiet)
    ea = _events(run.path)
    assert sorted(ea.Tags()["images"]) == ["reconstructions", "samples"]
    assert [e.step for e in ea.Images("reconstructions")] == [2]
    assert [e.step for e in ea.Images("samples")] == [4]


def test_tile_grid():
    g = tile(np.full((5, 2, 3), 255, dtype=np.uint8), min_cell=1)
    assert g.shape == (2 * 3 + 1, 3 * 4 + 1) and g.dtype == np.uint8
    assert (g[1:3, 1:4] == 255).all() and g[0, 0] == 128 and (g[4:6, 9:12] == 128).all()  # 6th cell empty
    rgb = tile(np.zeros((4, 8, 8, 3), dtype=np.uint8))
    assert rgb.shape == (19 * 4, 19 * 4, 3)  # 2 x 2 cells of 8 + gutters, x4


def test_wandb_offline_histograms_and_resume(tiny_overrides, tiny_corpus, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    # a DeepSeek run: scalars and the expert-load histograms; a resume continues the same W&B run id
    cfg = resolve(None, None, tiny_overrides(tiny_corpus, steps=3, extra=DEEPSEEK + ["train.log=wandb"]))
    run, _ = train(cfg, tmp_path / "r", progress=False, log=_quiet)
    assert len(list((run.path / "wandb").glob("offline-run-*"))) == 1 and len(_records(run.path)) == 3
    run_id = (run.path / "wandb" / "genlab-run-id").read_text().strip()
    train(None, run.path, resume=True, progress=False, overrides=["train.steps=4"], log=_quiet)
    offline = sorted((run.path / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(p.name.endswith(run_id) for p in offline)


# ---------------------------------------------------------------------- bad input
def _cli_train(tmp_path, out, *sets, resume=False):
    args = ["train", "--no-progress"]
    if not resume:
        args += ["--preset", "lm-tiny", "--set", "train.steps=2", "--set", f"data.path={tmp_path / 'corpus.jsonl'}"]
    for s in sets:
        args += ["--set", s]
    return main(args + ["--out", str(out)] + (["--resume"] if resume else []))


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("genlab: error:"), err
    for w in words:
        assert w in err, err


def test_unknown_logger_is_one_line_and_no_run_dir(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "r"
    assert _cli_train(tmp_path, out, "train.log=jsonl,tensorbord") == 2
    _one_line_error(capsys, "'tensorbord'", "jsonl, tensorboard, wandb")
    assert not out.exists()


def test_missing_packages_name_the_extra(tiny_corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    for name in ("wandb", "tensorboard"):
        out = tmp_path / name
        assert _cli_train(tmp_path, out, f"train.log=jsonl,{name}") == 2
        _one_line_error(capsys, f"genlab[{name}]")
        assert not out.exists()


def test_unwritable_log_dir_is_one_line(tiny_corpus, tmp_path, capsys):
    # --out beneath a file: the run dir cannot be made
    (tmp_path / "file").write_text("x")
    assert _cli_train(tmp_path, tmp_path / "file" / "r", *TB) == 2
    _one_line_error(capsys, "cannot create the run directory")
    # a run whose RUN/tensorboard is a file: resume with tensorboard stops before touching the run
    out = tmp_path / "r"
    assert _cli_train(tmp_path, out) == 0
    capsys.readouterr()
    (out / "tensorboard").write_text("not a directory")
    before = (out / "metrics.jsonl").read_text()
    assert _cli_train(tmp_path, out, "train.steps=3", *TB, resume=True) == 2
    _one_line_error(capsys, "tensorboard log dir is a file")
    assert (out / "metrics.jsonl").read_text() == before and not (out / ".lock").exists()
