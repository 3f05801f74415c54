"""LatentDiffusion: the autoencoder, the text encoder, the UNet and their EMA copy in one module.

The trainer and the checkpoints see one nn.Module; the task decides which part a batch trains
(autoencoder first, then the denoiser on the frozen autoencoder's latents). `scale_factor` is a
buffer: 0 until the denoiser phase starts, then 1 / std of the training latents (the role of SD's
0.18215, computed from the data). Latents are posterior samples z = mean + std * eps of the frozen
autoencoder, for the scale factor and for the denoiser's training data alike, as CompVis LDM
(`encode_first_stage(x).sample()`) and diffusers' training scripts (`latent_dist.sample() *
scaling_factor`) do.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from genlab.families.diffusion.schedulers import SAMPLERS, guided
from genlab.families.diffusion.text_encoder import TextEncoder, encode_prompts
from genlab.families.diffusion.unet import UNet
from genlab.families.diffusion.vae import KLAutoencoder


class Denoiser(nn.Module):
    """Text encoder + UNet: ε̂ = unet(z_t, t, text(prompt))."""

    def __init__(self, text: TextEncoder, unet: UNet):
        super().__init__()
        self.text, self.unet = text, unet

    def forward(self, z: torch.Tensor, t: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        context, mask = self.text(ids)
        return self.unet(z, t, context, mask)


class LatentDiffusion(nn.Module):
    def __init__(
        self,
        image_channels: int,
        image_size: int,
        latent_channels: int,
        vae_channels: int,
        downsample: int,
        unet_channels: int,
        channel_mult: tuple[int, ...],
        res_blocks: int,
        d_text: int,
        text_layers: int,
        n_head: int,
    ):
        super().__init__()
        self.image_channels, self.image_size = image_channels, image_size
        self.latent_channels, self.latent_size = latent_channels, image_size // downsample
        self.vae = KLAutoencoder(image_channels, latent_channels, vae_channels, downsample)
        unet = UNet(latent_channels, unet_channels, channel_mult, res_blocks, d_text, n_head, self.latent_size)
        self.denoiser = Denoiser(TextEncoder(d_text, text_layers, n_head), unet)
        self.ema = copy.deepcopy(self.denoiser).requires_grad_(False)
        self.register_buffer("scale_factor", torch.zeros(()))
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def posterior_sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Unscaled latents of images (B, C, H, W) -> (B, c, H/f, W/f): one draw from N(mean, exp(logvar)).
        eps comes from `generator` (on CPU), else from the global RNG (training: saved with checkpoints)."""
        mean, logvar = self.vae.encode(x)
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        return mean + (0.5 * logvar).exp() * eps

    @torch.no_grad()
    def latents(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents: a posterior sample times scale_factor."""
        return self.posterior_sample(x, generator) * self.scale_factor

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.scale_factor).clamp(-1, 1)

    @torch.no_grad()
    def sample(
        self,
        prompts: list[str],
        scheduler,
        steps: int = 50,
        guidance: float = 3.0,
        seed: int = 0,
        eta: float = 0.0,
        use_ema: bool = True,
        batch: int = 256,
    ) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1], one per prompt. Guidance runs the conditional and the
        unconditional ("" prompt) halves as one doubled batch; guidance 1 skips the second half."""
        net = self.ema if use_ema else self.denoiser
        device = self.scale_factor.device
        g = torch.Generator().manual_seed(seed)
        shape = (len(prompts), self.latent_channels, self.latent_size, self.latent_size)
        z_all = torch.randn(shape, generator=g) * scheduler.init_noise_sigma
        out = []
        for s in range(0, len(prompts), batch):
            chunk = prompts[s : s + batch]
            z = z_all[s : s + len(chunk)].to(device)
            double = guidance != 1.0
            ids = encode_prompts(chunk + [""] * len(chunk) if double else chunk).to(device)
            scheduler.set_timesteps(steps)
            for t in scheduler.timesteps:
                zin = scheduler.scale_model_input(torch.cat([z, z]) if double else z, t)
                tt = torch.full((zin.shape[0],), int(t), dtype=torch.int64, device=device)
                eps = net(zin, tt, ids)
                if double:
                    eps_cond, eps_uncond = eps.chunk(2)  # the batch is [prompts, ""s]
                    eps = guided(eps_uncond, eps_cond, guidance)
                kw = {"eta": eta} if isinstance(scheduler, SAMPLERS["ddim"]) else {}
                z = scheduler.step(eps, t, z, generator=g, **kw).prev_sample
            out.append(self.decode(z).cpu())
        return torch.cat(out)
