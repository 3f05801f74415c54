"""Latent diffusion: image data (digits, folders, captions.jsonl) and its errors, FID, the CLI end to end."""

import json
import shutil

import numpy as np
import pytest
import torch

from genlab.cli import main
from genlab.config import resolve
from genlab.errors import GenlabError
from genlab.families.diffusion import metrics as E
from genlab.families.diffusion.data import load_digits_set, load_images, split
from genlab.train import checkpoint
from genlab.train.trainer import train
from tests import tiny

TINY = [
    "task=diffusion",
    "model.arch=unet",
    *tiny.LDM,
    "model.diffusion_steps=50",
    "data.val_fraction=0.2",
    "train.batch_rows=8",
    "train.steps=4",
    "train.vae_steps=2",
    "train.log_every=1",
    "train.eval_every=2",
    "train.eval_batches=1",
    "train.ckpt_every=2",
    "train.warmup_steps=1",
    "train.spike_window=0",
]


def _png(path, size=(8, 8), value=128, mode="L"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


def _one_line_error(capsys, argv, *words):
    code = main(argv)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("genlab: error:"), err
    for w in words:
        assert w in lines[0], (w, lines[0])


# ------------------------------------------------------------------ data
def test_digits_are_upsampled_with_label_prompts():
    ds = load_digits_set(16, 1)
    assert ds.images.shape == (1797, 1, 16, 16)
    assert float(ds.images.min()) >= -1 and float(ds.images.max()) <= 1
    assert ds.class_prompts[7] == "a handwritten digit seven"
    rng = np.random.default_rng(0)
    i = int((ds.labels == 3).nonzero()[0])
    caps = {ds.caption(i, rng) for _ in range(100)}
    assert len(caps) > 3 and all(("3" in c) or ("three" in c) for c in caps)
    tr, va = split(ds, 0.2)
    assert len(tr) + len(va) == 1797 and len(va) == 359


def test_folder_of_caption_subfolders_and_captions_jsonl(tmp_path):
    for cap, v in (("red_circle", 10), ("blue square", 200)):
        for i in range(3):
            _png(tmp_path / "sub" / cap / f"{i}.png", (12, 10), v)
    ds = load_images(str(tmp_path / "sub"), 8, 1)
    assert ds.images.shape == (6, 1, 8, 8) and ds.class_prompts == ["blue square", "red circle"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert float(ds.images[0].mean()) == pytest.approx(200 / 127.5 - 1, abs=1e-2)
    d = tmp_path / "flat"
    _png(d / "a.png", mode="RGB", value=(255, 0, 0))
    _png(d / "b.jpg", mode="RGB", value=(0, 0, 255))
    (d / "captions.jsonl").write_text('{"file": "a.png", "caption": "red"}\n\n{"file": "b.jpg", "caption": "blue"}\n')
    ds = load_images(str(d), 8, 3)
    assert ds.images.shape == (2, 3, 8, 8) and ds.labels is None
    assert ds.caption(0, None) == "red" and float(ds.images[0, 0].mean()) == pytest.approx(1.0)


def test_bad_images_empty_folders_and_missing_captions(tmp_path):
    cases = []
    (tmp_path / "empty").mkdir()
    cases.append(("empty", "no images found"))
    (tmp_path / "emptysubs" / "a cat").mkdir(parents=True)
    cases.append(("emptysubs", "no images found"))
    _png(tmp_path / "bad" / "ok" / "1.png")
    (tmp_path / "bad" / "ok" / "2.png").write_bytes(b"not an image at all")
    cases.append(("bad", "2.png: not a readable image"))
    _png(tmp_path / "loose" / "x.png")
    cases.append(("loose", "has no caption"))
    _png(tmp_path / "nocap" / "x.png")
    _png(tmp_path / "nocap" / "y.png")
    (tmp_path / "nocap" / "captions.jsonl").write_text('{"file": "x.png", "caption": "a"}\n')
    cases.append(("nocap", "'y.png' has no caption in captions.jsonl"))
    _png(tmp_path / "badline" / "x.png")
    (tmp_path / "badline" / "captions.jsonl").write_text('{"file": "x.png"}\n')
    cases.append(("badline", 'captions.jsonl:1: needs string fields "file" and "caption"'))
    _png(tmp_path / "gone" / "x.png")
    (tmp_path / "gone" / "captions.jsonl").write_text(
        '{"file": "x.png", "caption": "a"}\n{"file": "z.png", "caption": "b"}\n'
    )
    cases.append(("gone", "'z.png' does not exist"))
    (tmp_path / "file.txt").write_text("hello")
    cases.append(("file.txt", "is a file"))
    for name, words in cases:
        with pytest.raises(GenlabError, match=words.replace(".", r"\.").replace("(", r"\(")):
            load_images(str(tmp_path / name), 8, 1)


def test_cli_bad_diffusion_input_leaves_no_run_dir(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "run"
    base = ["train", "--no-progress", "--out", str(out)] + [f"--set={s}" for s in TINY]
    _one_line_error(capsys, base + [f"--set=data.path={tmp_path / 'empty'}"], "no images found", ".png")
    _one_line_error(
        capsys, base + ["--set=model.arch=transformer"], "is not allowed for task 'diffusion'; choose one of: unet"
    )
    _one_line_error(capsys, base + ["--set=data.image_size=10"], "data.image_size", "multiple")
    _one_line_error(capsys, base + ["--set=train.vae_steps=4"], "train.vae_steps")
    _one_line_error(capsys, base + ["--set=model.channel_mult=1,x"], "model.channel_mult")
    _one_line_error(capsys, base + ["--set=model.beta_schedule=cosine"], "squaredcos_cap_v2")
    _one_line_error(capsys, base + ["--set=model.downsample=3"], "power of two")
    assert not out.exists()


# ------------------------------------------------------------------ FID
def test_frechet_distance_against_scipy_sqrtm():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(sqrtm(s1 @ s2)))
    assert E.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)
    f = rng.normal(size=(500, 4))
    assert E.fid_from_features(f, f) == pytest.approx(0.0, abs=1e-6)
    assert E.fid_from_features(f, f + 1.0) == pytest.approx(4.0, rel=1e-6)  # a shift of 1 in 4 dims


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ldm") / "run"
    assert main(["train", "--no-progress", "--out", str(out)] + [f"--set={s}" for s in TINY]) == 0
    return out


def test_sample_writes_png_grid_and_checks_arguments(capsys, tiny_run, tmp_path):
    from PIL import Image

    png = tmp_path / "g.png"
    argv = [
        "sample",
        str(tiny_run),
        "--prompt",
        "a handwritten 3",
        "-n",
        "4",
        "--steps",
        "3",
        "--sampler",
        "ddim",
        "--guidance",
        "3",
        "--seed",
        "0",
        "--out",
        str(png),
    ]
    assert main(argv) == 0
    im = np.asarray(Image.open(png))
    assert im.shape == (2 * (2 * 9 + 1), 2 * (2 * 9 + 1))  # 2x2 grid of 8x8, 1-pixel gaps, scaled 2x
    first = png.read_bytes()
    assert main(argv) == 0 and png.read_bytes() == first  # same seed, eta 0: the same image
    assert main(argv[:-1] + [str(tmp_path / "h.png"), "--sampler", "ddpm"]) == 0
    capsys.readouterr()
    _one_line_error(capsys, argv[:2] + ["--steps", "51"], "--steps 51", "1 to 50")
    _one_line_error(capsys, argv[:2] + ["--out", str(tmp_path / "x.jpg")], ".png")
    _one_line_error(capsys, argv[:2] + ["--sampler", "plms"], "invalid choice")


def test_eval_json_reports_accuracy_per_prompt_and_fid(capsys, tiny_run, monkeypatch):
    import genlab.families.diffusion.task as D

    monkeypatch.setattr(D, "EVAL_PER_PROMPT", 2)
    monkeypatch.setattr(D, "EVAL_STEPS", 2)
    monkeypatch.setattr(D, "CLASSIFIER_STEPS", 30)
    capsys.readouterr()
    assert main(["eval", str(tiny_run), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["sample_acc_per_prompt"]) == 10 and "a handwritten digit seven" in res["sample_acc_per_prompt"]
    assert 0 <= res["sample_acc"] <= 1 and res["samples"] == 20
    for k in ("fid", "fid_baseline_class_means", "fid_baseline_noise", "fid_real_train_vs_test", "val_recon_mse"):
        assert np.isfinite(res[k]) and res[k] >= -1e-6, k


def test_resume_across_the_phase_switch_is_exact(tmp_path):
    cfg = resolve(None, None, TINY)
    full, _ = train(cfg, tmp_path / "full", progress=False, log=lambda *a: None)
    part = tmp_path / "part"
    shutil.copytree(full.path, part)
    for ck in checkpoint.list_checkpoints(part):
        if ck.name != "step_00000002":
            shutil.rmtree(ck)
    train(None, part, resume=True, progress=False, log=lambda *a: None)
    losses = lambda p: [(r["step"], r["loss"]) for r in map(json.loads, (p / "metrics.jsonl").read_text().splitlines())]  # noqa: E731
    assert losses(part) == losses(full.path) and len(losses(part)) == 4
    a = torch.load(checkpoint.list_checkpoints(part)[-1] / "state.pt", weights_only=True)
    b = torch.load(checkpoint.list_checkpoints(full.path)[-1] / "state.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
