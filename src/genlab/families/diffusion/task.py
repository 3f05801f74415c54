"""Latent diffusion task: captioned images -> KL autoencoder -> text-conditioned latent denoiser.

Two phases in one run, one trainer, one optimizer: the first train.vae_steps steps train the
autoencoder (the denoiser gets no gradient), the rest train the text encoder + UNet on the frozen
autoencoder's latents (the autoencoder gets no gradient; AdamW skips parameters without one).
The phase is a function of the batch counter in the resumable data state, so resume is exact. At
the first denoiser batch the latent scale factor (1 / std of the training latents) is computed
and the EMA copy starts from the denoiser's weights; `after_step` updates the EMA.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genlab.config import RunConfig
from genlab.errors import GenlabError
from genlab.families.diffusion import metrics as E
from genlab.families.diffusion.data import ImageBatch, ImageSet, load_images, split
from genlab.families.diffusion.ema import ema_copy_, ema_decay, ema_update
from genlab.families.diffusion.ldm import LatentDiffusion
from genlab.families.diffusion.metrics import save_grid
from genlab.families.diffusion.schedulers import SAMPLERS
from genlab.families.diffusion.text_encoder import MAX_PROMPT_BYTES, encode_prompts
from genlab.train.loggers import tile
from genlab.train.task import Task

EVAL_GUIDANCE, EVAL_STEPS, EVAL_PER_PROMPT, EVAL_SAMPLER = 3.0, 50, 50, "ddim"  # `genlab eval` sampling
CLASSIFIER_STEPS = 400  # Adam steps of the eval classifier on the real training images
SCALE_IMAGES = 512  # training images whose latents set the scale factor


@dataclass(frozen=True)
class DiffusionSampleOptions:
    """`genlab sample` for diffusion runs."""

    prompt: str = ""
    num: int = 64
    steps: int = 50  # sampler steps
    sampler: str = "ddim"  # ddim | ddpm
    guidance: float = 3.0  # classifier-free guidance scale (1 = plain conditional, 0 = unconditional)
    eta: float = 0.0  # ddim noise (0 = deterministic)
    seed: int = 0
    out: str | None = None  # .png; default RUN/samples/SAMPLER-gG-sSEED-TIME.png


class DiffusionTask(Task):
    name = "diffusion"

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.train_data: ImageSet | None = None
        self.val_data: ImageSet | None = None

    # ------------------------------------------------------------------ data
    def prepare(self, run_dir: Path | None, fresh: bool = True) -> None:
        d = self.cfg.data
        self.train_data, self.val_data = split(load_images(d.path, d.image_size, d.image_channels), d.val_fraction)

    def save_artifacts(self, run_dir: Path) -> None:
        pass  # no tokenizer: prompts are bytes

    def load_for_inference(self, run_dir: Path) -> None:
        pass

    def scheduler(self, kind: str = "ddpm", clip: bool = False):
        m = self.cfg.model
        return SAMPLERS[kind](
            num_train_timesteps=m.diffusion_steps,
            beta_start=m.beta_start,
            beta_end=m.beta_end,
            beta_schedule=m.beta_schedule,
            clip_sample=clip,
        )

    # ------------------------------------------------------------------ model
    def build_model(self) -> LatentDiffusion:
        m, d = self.cfg.model, self.cfg.data
        return LatentDiffusion(
            d.image_channels,
            d.image_size,
            m.latent_channels,
            m.vae_channels,
            m.downsample,
            m.unet_channels,
            m.mult(),
            m.res_blocks,
            m.d_model,
            m.n_layer,
            m.n_head,
        )

    def initial_state(self):
        return (0, 0, 0)  # (epoch, position in the epoch's order, batches served)

    def next_batch(self, state):
        epoch, pos, k = state
        t, ds = self.cfg.train, self.train_data
        B = min(t.batch_rows, len(ds))
        if pos + B > len(ds):
            epoch, pos = epoch + 1, 0
        order = np.random.default_rng([t.seed, epoch]).permutation(len(ds))
        idx = order[pos : pos + B]
        rng = np.random.default_rng([t.seed, epoch, pos, 1])
        caps = [ds.caption(int(i), rng) for i in idx]
        caps = ["" if drop else c for c, drop in zip(caps, rng.random(B) < t.cond_drop)]
        phase = "vae" if k // t.grad_accum < t.vae_steps else "denoiser"
        images = ds.images[torch.from_numpy(idx)]
        m = self.cfg.model
        n = (
            images.numel()
            if phase == "vae"
            else B * m.latent_channels * (self.cfg.data.image_size // m.downsample) ** 2
        )
        return ImageBatch(images, encode_prompts(caps), phase, n), (epoch, pos + B, k + 1)

    @torch.no_grad()
    def _start_denoiser_phase(self, model: LatentDiffusion) -> None:
        x = self.train_data.images[:SCALE_IMAGES].to(model.scale_factor.device)
        z = model.posterior_sample(x, torch.Generator().manual_seed(self.cfg.train.seed))
        model.scale_factor.fill_(1.0 / float(z.float().std().clamp(min=1e-6)))
        ema_copy_(model.ema, model.denoiser)

    def batch_units(self, batch: ImageBatch) -> tuple[int, int]:
        n = batch.images.shape[0]
        return n, n  # images, reported as the run's "tokens"

    def loss(self, model: LatentDiffusion, batch: ImageBatch):
        """Summed loss and element count: the autoencoder's squared error + kl_weight KL, or the
        ε-prediction squared error ‖ε - ε_θ(z_t, t, text)‖² with t uniform on {0, ..., T-1}."""
        if batch.phase == "vae":
            loss_sum, _ = model.vae.loss(batch.images, self.cfg.train.kl_weight)
            return loss_sum, batch.n_targets
        if float(model.scale_factor) == 0.0:
            self._start_denoiser_phase(model)
        z0 = model.latents(batch.images)
        noise = torch.randn(z0.shape).to(z0.device)
        t = torch.randint(0, self.cfg.model.diffusion_steps, (z0.shape[0],)).to(z0.device)
        zt = self.scheduler().add_noise(z0, noise, t)
        eps = model.denoiser(zt, t, batch.ids)
        return (eps.float() - noise).pow(2).sum(), batch.n_targets

    def after_step(self, model: LatentDiffusion, step: int) -> None:
        """Called by the trainer after each optimizer step: EMA update in the denoiser phase."""
        if float(model.scale_factor) > 0:
            ema_update(model.ema, model.denoiser, ema_decay(self.cfg.train.ema_decay, int(model.ema_updates)))
            model.ema_updates += 1

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _denoise_mse(self, model: LatentDiffusion, net, images: torch.Tensor, captions: list[str]) -> float:
        """Held-out ε-prediction MSE at fixed noise and evenly spread t (seed 0), so runs compare."""
        g = torch.Generator().manual_seed(0)
        dev = model.scale_factor.device
        z0 = model.latents(images.to(dev), generator=g)
        noise = torch.randn(z0.shape, generator=g).to(dev)
        T = self.cfg.model.diffusion_steps
        t = (torch.arange(len(z0)) * T // len(z0)).to(dev)
        eps = net(self.scheduler().add_noise(z0, noise, t), t, encode_prompts(captions).to(dev))
        return float((eps - noise).pow(2).mean())

    @torch.no_grad()
    def evaluate(self, model, data: ImageSet | None = None, max_batches: int | None = None, device="cpu") -> dict:
        data = data if data is not None else self.val_data
        if data is None:
            return {}
        was = model.training
        model.eval()
        n = min(len(data), (max_batches or 1 << 30) * self.cfg.train.batch_rows)
        x = data.images[:n].to(device)
        recon, mean, logvar = model.vae(x, generator=torch.Generator().manual_seed(0))
        mse = float((model.vae.decode(mean) - x).pow(2).mean())
        out = {"val_recon_mse": mse, "val_recon_psnr": 10 * math.log10(4.0 / max(mse, 1e-12))}  # range 2 -> peak² 4
        if float(model.scale_factor) == 0.0:
            loss, _ = model.vae.loss(x, self.cfg.train.kl_weight)
            out["val_loss"] = float(loss) / x.numel()
        else:
            rng = np.random.default_rng(0)
            caps = [data.caption(i, rng) for i in range(n)]
            out["val_loss"] = self._denoise_mse(model, model.denoiser, x, caps)
            out["val_loss_ema"] = self._denoise_mse(model, model.ema, x, caps)
        model.train(was)
        return out

    EVAL_IMAGES, EVAL_IMAGE_STEPS = 8, 20  # the eval-step grid of train.log tensorboard / wandb

    @torch.no_grad()
    def eval_images(self, model, device="cpu") -> dict:
        """Autoencoder phase: 4 images over their reconstructions; denoiser phase: 8 DDIM samples
        (20 steps, guidance 3, seed 0) of the class prompts (or captions). Own generators only."""
        was = model.training
        model.eval()
        if float(model.scale_factor) == 0.0:
            x = (self.val_data or self.train_data).images[: self.EVAL_IMAGES // 2].to(device)
            mean, _ = model.vae.encode(x)
            out = {"reconstructions": torch.cat([x, model.vae.decode(mean)])}
        else:
            ds, rng = self.train_data, np.random.default_rng(0)
            prompts = ds.class_prompts or [ds.caption(i % len(ds), rng) for i in range(self.EVAL_IMAGES)]
            prompts = [prompts[i % len(prompts)] for i in range(self.EVAL_IMAGES)]
            sched = self.scheduler(EVAL_SAMPLER)
            out = {"samples": model.sample(prompts, sched, self.EVAL_IMAGE_STEPS, EVAL_GUIDANCE, seed=0)}
        model.train(was)
        px = {k: ((v.float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8) for k, v in out.items()}
        hwc = {k: v.permute(0, 2, 3, 1).numpy() for k, v in px.items()}  # (N, H, W, C)
        return {k: tile(a[..., 0] if a.shape[-1] == 1 else a) for k, a in hwc.items()}

    def eval_report(self, run, model, data_path: str | None) -> dict:
        d = self.cfg.data
        self.prepare(None)
        train_set, test_set = self.train_data, self.val_data
        if data_path:
            test_set = load_images(data_path, d.image_size, d.image_channels)
        if test_set is None:
            raise GenlabError(f"{run.path}: the run has no held-out images (data.val_fraction = 0); pass --data PATH")
        if float(model.scale_factor) == 0.0:
            raise GenlabError(
                f"{run.path}: the checkpoint is still in the autoencoder phase; train past "
                f"train.vae_steps = {self.cfg.train.vae_steps}"
            )
        device = model.scale_factor.device  # genlab eval --device
        res = {
            "data": data_path or "validation split",
            "images": len(test_set),
            **self.evaluate(model, test_set, device=device),
        }
        if test_set.labels is None or train_set.labels is None or len(train_set.class_prompts) < 2:
            return res  # free-text captions: no classes to score
        if test_set.class_prompts != train_set.class_prompts:
            raise GenlabError(
                f"{data_path}: its classes {test_set.class_prompts[:3]}... differ from the run's "
                f"{train_set.class_prompts[:3]}..."
            )
        t0 = time.perf_counter()
        K = len(train_set.class_prompts)
        clf = E.train_classifier(train_set.images, train_set.labels, K, CLASSIFIER_STEPS)
        pred_real, f_real = E.predict(clf, test_set.images)
        prompts = [p for p in train_set.class_prompts for _ in range(EVAL_PER_PROMPT)]
        labels = torch.arange(K).repeat_interleave(EVAL_PER_PROMPT)
        gen = model.sample(prompts, self.scheduler(EVAL_SAMPLER), EVAL_STEPS, EVAL_GUIDANCE, seed=0)
        pred_gen, f_gen = E.predict(clf, gen)
        per_prompt = {
            p: float((pred_gen[labels == k] == k).float().mean()) for k, p in enumerate(train_set.class_prompts)
        }
        # baselines: each image its class's training mean; uniform noise; real training images
        means = torch.stack([train_set.images[train_set.labels == k].mean(0) for k in range(K)])
        base_noise = torch.rand(len(prompts), *gen.shape[1:], generator=torch.Generator().manual_seed(0)) * 2 - 1
        res.update(
            {
                "classifier_acc_real": float((pred_real == test_set.labels).float().mean()),
                "sample_acc": float((pred_gen == labels).float().mean()),
                "sample_acc_per_prompt": per_prompt,
                "fid": E.fid_from_features(f_real, f_gen),
                "fid_baseline_class_means": E.fid_from_features(f_real, E.predict(clf, means[labels])[1]),
                "fid_baseline_noise": E.fid_from_features(f_real, E.predict(clf, base_noise)[1]),
                "fid_real_train_vs_test": E.fid_from_features(f_real, E.predict(clf, train_set.images)[1]),
                "samples": len(prompts),
                "guidance": EVAL_GUIDANCE,
                "sampler": EVAL_SAMPLER,
                "sampler_steps": EVAL_STEPS,
                "eval_seconds": round(time.perf_counter() - t0, 1),
            }
        )
        return res

    def info_lines(self, run_dir: Path | None) -> list[str]:
        """For `genlab info`: parameters per part and the latent shape."""
        m, d = self.build_model(), self.cfg.data
        count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
        return [
            f"image {d.image_channels}x{d.image_size}x{d.image_size} -> latent "
            f"{m.latent_channels}x{m.latent_size}x{m.latent_size} (f = {self.cfg.model.downsample})",
            f"parameters: autoencoder {count(m.vae):,}, text encoder {count(m.denoiser.text):,}, "
            f"UNet {count(m.denoiser.unet):,} (+ the same again as EMA copy)",
            f"phases: autoencoder steps 1-{self.cfg.train.vae_steps}, denoiser steps "
            f"{self.cfg.train.vae_steps + 1}-{self.cfg.train.steps}",
        ]

    # ------------------------------------------------------------------ sampling
    sample_options = DiffusionSampleOptions

    def sample(self, run, model, o: DiffusionSampleOptions) -> None:
        prompt, n, steps, sampler, guidance, eta = o.prompt, o.num, o.steps, o.sampler, o.guidance, o.eta
        if len(prompt.encode("utf-8")) > MAX_PROMPT_BYTES:
            raise GenlabError(f"--prompt is {len(prompt.encode())} bytes; at most {MAX_PROMPT_BYTES} are allowed")
        if sampler not in SAMPLERS:
            raise GenlabError(f"--sampler {sampler!r} is not known; choose one of: {', '.join(SAMPLERS)}")
        if not 1 <= steps <= self.cfg.model.diffusion_steps:
            raise GenlabError(
                f"--steps {steps} must be from 1 to {self.cfg.model.diffusion_steps} (the run's model.diffusion_steps)"
            )
        if float(model.scale_factor) == 0.0:
            raise GenlabError(f"{run.path}: the checkpoint is still in the autoencoder phase; nothing to sample")
        out = o.out
        if out is None:
            out = Path(run.path) / "samples" / f"{sampler}-g{guidance:g}-s{o.seed}-{time.strftime('%H%M%S')}.png"
        if Path(out).suffix.lower() != ".png":
            raise GenlabError(f"--out {out!r} must end in .png")
        images = model.sample([prompt] * n, self.scheduler(sampler), steps, guidance, seed=o.seed, eta=eta)
        print(save_grid(images, out))
