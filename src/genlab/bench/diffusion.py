"""`genlab bench diffusion`: the ldm-digits pipeline end to end, timed.

Trains the `ldm-digits` preset in a temporary run dir (autoencoder phase, then the denoiser phase),
timing each phase; then runs what `genlab eval RUN --json` runs: the digit classifier's accuracy on
real held-out digits and on 50 DDIM samples (50 steps, guidance 3) per prompt, and the Fréchet
distance on the classifier's features against three references (class-mean images, uniform noise,
real training images). Also the DDIM sampling time for a 16-image grid at guidance 1 and 3.
`--steps N` trains N steps in all (a fifth of them autoencoder); `--quick` shrinks everything
to a smoke test.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from genlab.bench.common import machine_info, print_table
from genlab.config import apply_overrides, preset
from genlab.families.diffusion.presets import TINY_SHAPE

QUICK_OVERRIDES = TINY_SHAPE + [
    "train.batch_rows=16",
    "train.steps=6",
    "train.vae_steps=3",
    "train.eval_every=3",
    "train.ckpt_every=3",
    "train.warmup_steps=1",
]


def run(steps: int | None = None, quick: bool = False) -> dict:
    import genlab.families.diffusion.task as D
    from genlab.train.trainer import prepare_training

    overrides = list(QUICK_OVERRIDES) if quick else []
    if steps:
        overrides += [f"train.steps={steps}", f"train.vae_steps={max(1, steps // 5)}"]
    cfg = apply_overrides(preset("ldm-digits"), overrides).validate()
    saved = (D.EVAL_PER_PROMPT, D.EVAL_STEPS, D.CLASSIFIER_STEPS)
    if quick:
        D.EVAL_PER_PROMPT, D.EVAL_STEPS, D.CLASSIFIER_STEPS = 2, 2, 20
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run_dir, trainer = prepare_training(cfg, Path(tmp) / "run", progress=False, log=lambda *a: None)
            t0 = time.perf_counter()
            phase_t: dict[str, float] = {}
            t = cfg.train
            while trainer.step < t.steps:  # the trainer's own step, timed per phase
                phase = "vae" if trainer.step < t.vae_steps else "denoiser"
                s0 = time.perf_counter()
                trainer.train_step()
                phase_t[phase] = phase_t.get(phase, 0.0) + time.perf_counter() - s0
            train_s = time.perf_counter() - t0
            model = trainer.model.cpu().eval()
            report = trainer.task.eval_report(run_dir, model, None)
            sample_s = {}
            for g in (1.0, 3.0):
                s0 = time.perf_counter()
                model.sample(["a handwritten 3"] * 16, trainer.task.scheduler("ddim"), 50 if not quick else 2, g)
                sample_s[f"ddim50_16_images_guidance{g:g}_s"] = round(time.perf_counter() - s0, 2)
    finally:
        D.EVAL_PER_PROMPT, D.EVAL_STEPS, D.CLASSIFIER_STEPS = saved
    res = {
        "machine": machine_info(),
        "preset": "ldm-digits",
        "quick": quick,
        "train_steps": t.steps,
        "vae_steps": t.vae_steps,
        "train_wall_s": round(train_s, 1),
        "vae_phase_s": round(phase_t.get("vae", 0.0), 1),
        "denoiser_phase_s": round(phase_t.get("denoiser", 0.0), 1),
        "params_vae": sum(p.numel() for p in model.vae.parameters()),
        "params_denoiser": sum(p.numel() for p in model.denoiser.parameters()),
        **{k: v for k, v in report.items() if k != "sample_acc_per_prompt"},
        "sample_acc_per_prompt": report.get("sample_acc_per_prompt"),
        **sample_s,
        "threads": torch.get_num_threads(),
    }
    rows = [
        [k, f"{v:.4g}" if isinstance(v, float) else v]
        for k, v in res.items()
        if k not in ("machine", "sample_acc_per_prompt")
    ]
    print_table("latent diffusion on digits", ["metric", "value"], rows)
    return res
