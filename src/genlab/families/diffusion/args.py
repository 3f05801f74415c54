"""Config of the diffusion family: latent diffusion in miniature (KL autoencoder, text encoder, UNet)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genlab.config import DataConfig, ModelArgs, TrainConfig, opt
from genlab.errors import GenlabError


@dataclass
class DiffusionData(DataConfig):
    path: str = opt(
        "", "images: '' = scikit-learn's digits; a folder of class folders / captioned images, or an .npz (see docs)"
    )
    image_size: int = opt(16, "images are resized to image_size x image_size pixels", 4, 512)
    image_channels: int = opt(1, "1 = grayscale, 3 = RGB", 1, 3)


@dataclass
class DiffusionTrain(TrainConfig):
    vae_steps: int = opt(500, "the first vae_steps train the autoencoder, the rest the denoiser", 0)
    kl_weight: float = opt(1e-4, "weight of the autoencoder's KL term (per summed squared error)", 0.0, 100.0)
    cond_drop: float = opt(0.1, "probability a caption is replaced by '' (classifier-free guidance)", 0.0, 1.0)
    ema_decay: float = opt(0.999, "EMA of the denoiser's weights, used for sampling and eval", 0.0, 1.0)

    def check(self, cfg) -> None:
        super().check(cfg)
        if not 1 <= self.vae_steps < self.steps:
            raise GenlabError(
                f"train.vae_steps = {self.vae_steps} must be from 1 to train.steps - 1 "
                f"({self.steps - 1}): the autoencoder trains first, then the denoiser"
            )


@dataclass
class DiffusionArgs(ModelArgs):
    arch: Literal["unet"] = opt("unet", "text-conditioned UNet denoiser in the autoencoder's latent space")
    d_model: int = opt(256, "text encoder width", 1)
    n_layer: int = opt(4, "text encoder layers", 1)
    n_head: int = opt(4, "attention heads (text encoder and UNet)", 1)
    latent_channels: int = opt(4, "channels of the autoencoder's latent", 1, 64)
    vae_channels: int = opt(32, "autoencoder base width (a multiple of 8)", 8, 1024)
    downsample: int = opt(2, "autoencoder downsampling factor f (a power of two)", 1, 64)
    unet_channels: int = opt(64, "UNet base width (a multiple of 8)", 8, 4096)
    channel_mult: str = opt("1,2", "UNet width multipliers, one per resolution level, e.g. '1,2'")
    res_blocks: int = opt(1, "UNet residual blocks per level", 1, 16)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = opt(
        "squaredcos_cap_v2", "noise schedule (squaredcos_cap_v2 = cosine)"
    )
    beta_start: float = opt(1e-4, "first beta (linear, scaled_linear)", 1e-8, 0.5)
    beta_end: float = opt(0.02, "last beta (linear, scaled_linear)", 1e-8, 0.999)
    diffusion_steps: int = opt(1000, "training timesteps T", 2, 100_000)

    def mult(self) -> tuple[int, ...]:
        """channel_mult "1,2,2" -> (1, 2, 2), or a GenlabError."""
        try:
            mult = tuple(int(x) for x in self.channel_mult.split(","))
        except ValueError:
            mult = ()
        if not mult or len(mult) > 6 or min(mult) < 1 or max(mult) > 16:
            raise GenlabError(
                f"model.channel_mult = {self.channel_mult!r} must be 1 to 6 comma-separated integers "
                "from 1 to 16, e.g. '1,2'"
            )
        return mult

    def check(self, cfg) -> None:
        m, d = self, cfg.data
        if m.downsample & (m.downsample - 1):
            raise GenlabError(f"model.downsample = {m.downsample} must be a power of two (1, 2, 4, 8, ...)")
        mult = m.mult()
        unit = m.downsample << (len(mult) - 1)
        if d.image_size % unit:
            raise GenlabError(
                f"data.image_size = {d.image_size} must be a multiple of downsample x 2^(levels-1) = "
                f"{unit} (model.downsample {m.downsample}, {len(mult)} UNet levels)"
            )
        for key, v in (("vae_channels", m.vae_channels), ("unet_channels", m.unet_channels)):
            if v % 8:
                raise GenlabError(f"model.{key} = {v} must be a multiple of 8 (group norm)")
        for width in (m.d_model, *(m.unet_channels * k for k in mult)):
            if width % m.n_head:
                raise GenlabError(
                    f"width {width} (model.d_model or unet_channels x channel_mult) must be divisible "
                    f"by model.n_head ({m.n_head})"
                )
        if m.beta_schedule != "squaredcos_cap_v2" and not m.beta_start < m.beta_end:
            raise GenlabError(f"model.beta_start ({m.beta_start}) must be below model.beta_end ({m.beta_end})")
