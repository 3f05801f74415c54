"""DDPM and DDIM schedulers with the diffusers API: `add_noise`, `set_timesteps`, `step`.

Conventions follow diffusers (see shared/reference/diffusion.md, section 4-5), so the objects can be
used the way diffusers' are:

    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    sched.set_timesteps(50)                       # sched.timesteps: (50,) int64, descending
    x = torch.randn(shape) * sched.init_noise_sigma
    for t in sched.timesteps:
        eps = model(sched.scale_model_input(x, t), t)
        x = sched.step(eps, t, x, eta=0.0).prev_sample

A `timestep` is the integer training-step index t in [0, T), not a noise level. Only
prediction_type "epsilon" | "sample" | "v_prediction" and variance_type "fixed_small" | "fixed_large"
are implemented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from genlab.errors import GenlabError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def make_betas(schedule: str, T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """(T,) float32 betas.
    linear: linspace(beta_start, beta_end); scaled_linear: linspace(sqrt(start), sqrt(end))^2 (Stable
    Diffusion); squaredcos_cap_v2: beta_i = min(1 - abar((i+1)/T) / abar(i/T), 0.999) with
    abar(s) = cos^2((s + 0.008) / 1.008 * pi / 2) (Nichol & Dhariwal's cosine schedule)."""
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2
    if schedule == "squaredcos_cap_v2":

        def abar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        return torch.tensor([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)], dtype=torch.float32)
    raise GenlabError(f"beta schedule {schedule!r} is not known; choose one of: {', '.join(BETA_SCHEDULES)}")


@dataclass
class SchedulerOutput:
    prev_sample: torch.Tensor  # x_{t'}, same shape as the sample
    pred_original_sample: torch.Tensor  # x̂_0


class _Scheduler:
    order = 1
    init_noise_sigma = 1.0

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
    ):
        if prediction_type not in PREDICTION_TYPES:
            raise GenlabError(f"prediction_type {prediction_type!r}; choose one of: {', '.join(PREDICTION_TYPES)}")
        if timestep_spacing not in SPACINGS:
            raise GenlabError(f"timestep_spacing {timestep_spacing!r}; choose one of: {', '.join(SPACINGS)}")
        self.num_train_timesteps = T = num_train_timesteps
        self.betas = make_betas(beta_schedule, T, beta_start, beta_end)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)  # (T,) ᾱ_t
        self.one = torch.tensor(1.0)
        self.clip_sample, self.clip_sample_range = clip_sample, clip_sample_range
        self.prediction_type, self.timestep_spacing, self.steps_offset = prediction_type, timestep_spacing, steps_offset
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(T - 1, -1, -1, dtype=torch.int64)  # all T steps until set_timesteps

    # ------------------------------------------------------------------ training side
    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) in closed form: sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε, one t per sample (B,)."""
        ac = self.alphas_cumprod.to(original_samples.device, original_samples.dtype)[timesteps.long()]
        shape = (-1,) + (1,) * (original_samples.dim() - 1)
        return ac.sqrt().view(shape) * original_samples + (1 - ac).sqrt().view(shape) * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """v = sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x_0 (the v_prediction training target)."""
        ac = self.alphas_cumprod.to(sample.device, sample.dtype)[timesteps.long()]
        shape = (-1,) + (1,) * (sample.dim() - 1)
        return ac.sqrt().view(shape) * noise - (1 - ac).sqrt().view(shape) * sample

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample  # identity for DDPM and DDIM; kept so sampling loops look like diffusers'

    # ------------------------------------------------------------------ inference side
    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        T, N = self.num_train_timesteps, num_inference_steps
        if not 1 <= N <= T:
            raise GenlabError(f"{N} inference steps is not possible with {T} training steps; allowed: 1 to {T}")
        self.num_inference_steps = N
        if self.timestep_spacing == "leading":
            ts = (np.arange(0, N) * (T // N)).round()[::-1].copy().astype(np.int64) + self.steps_offset
        elif self.timestep_spacing == "trailing":
            ts = np.round(np.arange(T, 0, -T / N)).astype(np.int64) - 1
        else:  # linspace
            ts = np.linspace(0, T - 1, N).round()[::-1].copy().astype(np.int64)
        self.timesteps = torch.from_numpy(ts).to(device)

    def previous_timestep(self, timestep: int) -> int:
        if self.num_inference_steps is None:
            return timestep - 1
        return timestep - self.num_train_timesteps // self.num_inference_steps

    def _x0_eps(self, model_output: torch.Tensor, sample: torch.Tensor, a: torch.Tensor):
        """(x̂_0, ε̂) from the network output at a cumulative alpha `a` (scalar tensor)."""
        if self.prediction_type == "epsilon":
            eps = model_output
            x0 = (sample - (1 - a).sqrt() * eps) / a.sqrt()
        elif self.prediction_type == "sample":
            x0 = model_output
            eps = (sample - a.sqrt() * x0) / (1 - a).sqrt()
        else:  # v_prediction
            x0 = a.sqrt() * sample - (1 - a).sqrt() * model_output
            eps = a.sqrt() * model_output + (1 - a).sqrt() * sample
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        return x0, eps

    def _alphas(self, timestep, final: torch.Tensor):
        t = int(timestep)
        prev_t = self.previous_timestep(t)
        a = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else final
        return t, a, a_prev


class DDPMScheduler(_Scheduler):
    """Ancestral sampling (Ho et al. 2020) over the full or a strided schedule."""

    def __init__(self, *args, variance_type: str = "fixed_small", **kw):
        super().__init__(*args, **kw)
        if variance_type not in ("fixed_small", "fixed_large"):
            raise GenlabError(f"variance_type {variance_type!r}; choose one of: fixed_small, fixed_large")
        self.variance_type = variance_type

    def previous_timestep(self, timestep: int) -> int:
        """The next entry of `timesteps` (-1 after the last): with "linspace" spacing the stride is
        not uniform, and diffusers' DDPM steps to the scheduled neighbour, not t - T // N."""
        if self.num_inference_steps is None:
            return timestep - 1
        idx = (self.timesteps == timestep).nonzero()
        if len(idx) == 0:
            raise GenlabError(f"timestep {timestep} is not in this scheduler's timesteps")
        i = int(idx[0, 0])
        return int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else -1

    def step(
        self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None, return_dict: bool = True
    ):
        t, a, a_prev = self._alphas(timestep, self.one)
        a, a_prev = a.to(sample.device), a_prev.to(sample.device)
        alpha_t = a / a_prev  # effective α over the stride
        beta_t = 1 - alpha_t
        x0, _ = self._x0_eps(model_output, sample, a)
        # posterior mean, Ho et al. eq. 7
        mean = (a_prev.sqrt() * beta_t / (1 - a)) * x0 + (alpha_t.sqrt() * (1 - a_prev) / (1 - a)) * sample
        if t > 0:
            if self.variance_type == "fixed_small":
                var = ((1 - a_prev) / (1 - a) * beta_t).clamp(min=1e-20)
            else:
                var = beta_t
            noise = torch.randn(sample.shape, generator=generator, dtype=sample.dtype).to(sample.device)
            mean = mean + var.sqrt() * noise
        out = SchedulerOutput(mean, x0)
        return out if return_dict else (out.prev_sample, out.pred_original_sample)


class DDIMScheduler(_Scheduler):
    """Song et al. 2021: eta = 0 is deterministic; eta = 1 has DDPM-like variance."""

    def __init__(self, *args, set_alpha_to_one: bool = True, **kw):
        super().__init__(*args, **kw)
        self.final_alpha_cumprod = self.one if set_alpha_to_one else self.alphas_cumprod[0]

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator=None,
        variance_noise=None,
        return_dict: bool = True,
    ):
        if self.num_inference_steps is None:
            raise GenlabError("DDIMScheduler.step needs set_timesteps(N) first")
        _, a, a_prev = self._alphas(timestep, self.final_alpha_cumprod)
        a, a_prev = a.to(sample.device), a_prev.to(sample.device)
        x0, eps = self._x0_eps(model_output, sample, a)
        var = (1 - a_prev) / (1 - a) * (1 - a / a_prev)
        std = eta * var.sqrt()
        if use_clipped_model_output:
            eps = (sample - a.sqrt() * x0) / (1 - a).sqrt()
        prev = a_prev.sqrt() * x0 + (1 - a_prev - std**2).clamp(min=0).sqrt() * eps
        if eta > 0:
            if variance_noise is None:
                variance_noise = torch.randn(sample.shape, generator=generator, dtype=sample.dtype).to(sample.device)
            prev = prev + std * variance_noise
        out = SchedulerOutput(prev, x0)
        return out if return_dict else (out.prev_sample, out.pred_original_sample)


SAMPLERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}


def guided(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ε̂ = ε(z, ∅) + s (ε(z, c) - ε(z, ∅)); s = 1 is the conditional ε."""
    if scale == 1.0:
        return eps_cond
    return eps_uncond + scale * (eps_cond - eps_uncond)
