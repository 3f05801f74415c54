"""Presets of the diffusion family (`genlab presets`)."""

from __future__ import annotations

from genlab.config import Preset

_PRESETS = {
    "ldm-digits": (
        "latent diffusion on scikit-learn's digits (16x16 -> 4x4x4 latents): KL autoencoder, then a text UNet",
        {
            "task": "diffusion",
            "data": {"image_size": 16, "image_channels": 1, "val_fraction": 0.2},
            "model": {
                "arch": "unet",
                "d_model": 32,
                "n_layer": 2,
                "n_head": 4,
                "latent_channels": 4,
                "vae_channels": 16,
                "downsample": 4,
                "unet_channels": 32,
                "channel_mult": "1,2",
                "res_blocks": 1,
                "beta_schedule": "squaredcos_cap_v2",
                "diffusion_steps": 1000,
            },
            "train": {
                "steps": 2000,
                "vae_steps": 400,
                "batch_rows": 64,
                "lr": 1e-3,
                "warmup_steps": 50,
                "schedule": "cosine",
                "min_lr_ratio": 0.1,
                "weight_decay": 0.0,
                "beta2": 0.999,
                "kl_weight": 1e-4,
                "cond_drop": 0.1,
                "ema_decay": 0.995,
                "log_every": 50,
                "eval_every": 500,
                "eval_batches": 8,
                "ckpt_every": 250,
                "keep_ckpts": 10,
                "spike_window": 0,
            },
        },
    ),
}

PRESETS = tuple(Preset(name, desc, settings) for name, (desc, settings) in _PRESETS.items())

# --set overrides that shrink a latent diffusion run to a few channels on 8x8 images, for runs that
# only need to work, not to learn (`genlab bench diffusion --quick`, the tests)
TINY_SHAPE = [
    "data.image_size=8",
    "model.downsample=2",
    "model.vae_channels=8",
    "model.unet_channels=8",
    "model.d_model=8",
    "model.n_layer=1",
    "model.n_head=2",
    "model.latent_channels=2",
]
