"""Latent diffusion: schedulers against their formulas, guidance, the VAE's KL, UNet shapes, a tiny run."""

import math

import pytest
import torch

from genlab.families.diffusion.schedulers import DDIMScheduler, DDPMScheduler, guided, make_betas
from genlab.families.diffusion.text_encoder import TextEncoder, encode_prompts
from genlab.families.diffusion.unet import UNet
from genlab.families.diffusion.vae import KLAutoencoder, kl_to_standard_normal

SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


# ------------------------------------------------------------------ schedules and the forward process
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_closed_form_q_equals_iterated_forward_process(schedule):
    """x_t = sqrt(α_t) x_{t-1} + sqrt(β_t) ε_t iterated from x_0 is N(sqrt(ᾱ_t) x_0, (1-ᾱ_t) I)."""
    s = DDPMScheduler(num_train_timesteps=200, beta_schedule=schedule, beta_start=1e-4, beta_end=0.05)
    betas = s.betas.double()
    coef, var = 1.0, 0.0  # exact moments of the iterated process, in float64
    for t in range(200):
        coef, var = coef * math.sqrt(1 - betas[t]), (1 - betas[t]) * var + betas[t]
        assert coef == pytest.approx(math.sqrt(float(s.alphas_cumprod[t])), rel=1e-4)
        assert var == pytest.approx(1 - float(s.alphas_cumprod[t]), rel=1e-4, abs=1e-6)
    # Monte Carlo: iterate with real noise, compare moments with add_noise's samples
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1), 0.7)
    x = x0.clone()
    for t in range(120):
        x = (1 - betas[t]).sqrt().float() * x + betas[t].sqrt().float() * torch.randn(x.shape, generator=g)
    closed = s.add_noise(x0, torch.randn(x0.shape, generator=g), torch.full((20000,), 119))
    assert float(x.mean()) == pytest.approx(float(closed.mean()), abs=0.03)
    assert float(x.std()) == pytest.approx(float(closed.std()), abs=0.03)


def test_beta_schedules_match_their_formulas():
    T = 1000
    assert torch.allclose(make_betas("linear", T, 1e-4, 0.02)[[0, -1]], torch.tensor([1e-4, 0.02]))
    sl = make_betas("scaled_linear", T, 0.00085, 0.012)
    assert torch.allclose(sl[[0, -1]], torch.tensor([0.00085, 0.012]))
    assert torch.allclose(sl.sqrt(), torch.linspace(0.00085**0.5, 0.012**0.5, T), atol=1e-7)
    ac = torch.cumprod(1 - make_betas("squaredcos_cap_v2", T).double(), 0)
    f = lambda s: math.cos((s / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 100, 500, 900):
        assert float(ac[t]) == pytest.approx(f(t + 1) / f(0), rel=1e-4)
    assert float(make_betas("squaredcos_cap_v2", T).max()) == pytest.approx(0.999)  # the cap


def test_set_timesteps_spacings():
    s = DDIMScheduler(num_train_timesteps=1000)
    assert s.timesteps[0] == 999 and len(s.timesteps) == 1000
    s.set_timesteps(50)
    assert s.timesteps.tolist() == list(range(980, -1, -20))
    s = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
    s.set_timesteps(50)
    assert s.timesteps.tolist() == list(range(999, 0, -20))
    s = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="linspace")
    s.set_timesteps(4)
    assert s.timesteps.tolist() == [999, 666, 333, 0]
    ddpm = DDPMScheduler(num_train_timesteps=1000, timestep_spacing="linspace")
    ddpm.set_timesteps(4)  # DDPM steps to the scheduled neighbour (diffusers), DDIM by T // N
    assert [ddpm.previous_timestep(int(t)) for t in ddpm.timesteps] == [666, 333, 0, -1]
    assert s.previous_timestep(666) == 666 - 250


# ------------------------------------------------------------------ samplers
def test_ddpm_step_matches_ho_eq11():
    """Full schedule, ε-prediction: mean = (x_t - β_t / sqrt(1-ᾱ_t) ε) / sqrt(α_t), σ² = β_t (1-ᾱ_{t-1}) / (1-ᾱ_t)."""
    s = DDPMScheduler(num_train_timesteps=100, beta_schedule="linear", beta_end=0.05, clip_sample=False)
    x, eps = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    for t in (0, 1, 50, 99):
        b, a, ab = s.betas[t], s.alphas[t], s.alphas_cumprod[t]
        mean = (x - b / (1 - ab).sqrt() * eps) / a.sqrt()
        out = s.step(eps, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
        if t == 0:
            assert torch.allclose(out, mean, atol=1e-5)
        else:
            sigma = (b * (1 - s.alphas_cumprod[t - 1]) / (1 - ab)).sqrt()
            z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
            assert torch.allclose(out, mean + sigma * z, atol=1e-5)


def test_ddim_eta0_is_deterministic_and_exact_for_an_oracle():
    s = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    s.set_timesteps(20)
    x0, eps = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    runs = []
    for seed in (0, 1):  # different generators: eta = 0 uses none
        x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(5))
        for t in s.timesteps:
            x = s.step(torch.tanh(x), t, x, eta=0.0, generator=torch.Generator().manual_seed(seed)).prev_sample
        runs.append(x)
    assert torch.equal(runs[0], runs[1])
    # a network that returns the true ε keeps x on the path sqrt(ᾱ) x0 + sqrt(1-ᾱ) ε, ending at x0
    x = s.add_noise(x0, eps, torch.full((2,), int(s.timesteps[0])))
    for t in s.timesteps:
        x = s.step(eps, t, x).prev_sample
    assert torch.allclose(x, x0, atol=1e-4)


def test_ddim_eta1_full_schedule_equals_ddpm():
    kw = dict(num_train_timesteps=50, beta_schedule="linear", beta_end=0.1, clip_sample=False)
    ddim, ddpm = DDIMScheduler(**kw), DDPMScheduler(**kw)
    ddim.set_timesteps(50)
    ddpm.set_timesteps(50)
    x, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    for t in (49, 20, 1):
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(t))
        a = ddim.step(eps, t, x, eta=1.0, variance_noise=z).prev_sample
        b = ddpm.step(eps, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        assert torch.allclose(a, b, atol=1e-5)


def test_guidance_formula():
    u, c = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.equal(guided(u, c, 1.0), c)
    w = 2.0  # the w-form: (1 + w) ε_c - w ε_u with s = 1 + w
    assert torch.allclose(guided(u, c, 1 + w), (1 + w) * c - w * u, atol=1e-6)
    assert torch.equal(guided(u, c, 0.0), u)


# ------------------------------------------------------------------ models
def test_vae_kl_matches_formula_and_shapes():
    mean, logvar = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    ref = (
        torch.distributions.kl_divergence(
            torch.distributions.Normal(mean, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
        )
        .flatten(1)
        .sum(1)
    )
    assert torch.allclose(kl_to_standard_normal(mean, logvar), ref, atol=1e-5)
    assert torch.allclose(kl_to_standard_normal(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2))
    for f in (1, 2, 4):
        vae = KLAutoencoder(in_channels=3, latent_channels=2, channels=8, downsample=f)
        x = torch.randn(2, 3, 16, 16)
        m, lv = vae.encode(x)
        assert m.shape == lv.shape == (2, 2, 16 // f, 16 // f)
        assert vae(x)[0].shape == x.shape


@pytest.mark.parametrize("size,mult", [(4, (1, 2)), (8, (1, 2)), (8, (1, 2, 2)), (16, (1, 1, 2)), (32, (1, 2))])
def test_unet_shapes_and_text_dependence(size, mult):
    torch.manual_seed(0)
    text = TextEncoder(d=16, n_layer=1, n_head=2)
    unet = UNet(in_channels=3, channels=8, mult=mult, res_blocks=1, d_context=16, n_head=2, sample_size=size)
    torch.nn.init.normal_(unet.conv_out.weight)  # zero-initialised output: perturb it to see the input
    for m in unet.modules():
        if hasattr(m, "proj_out"):
            torch.nn.init.normal_(m.proj_out.weight, std=0.1)
    x, t = torch.randn(2, 3, size, size), torch.tensor([3, 700])
    ids = encode_prompts(["a handwritten 3", "seven"])
    out = unet(x, t, *text(ids))
    assert out.shape == x.shape
    other = unet(x, t, *text(encode_prompts(["a handwritten 4", "eight"])))
    assert not torch.allclose(out, other)  # cross-attention reaches the output
    # padding is masked: the short prompt alone gives what it gave next to a longer one
    alone = unet(x[1:], t[1:], *text(encode_prompts(["seven"])))
    assert torch.allclose(alone, out[1:], rtol=1e-4, atol=1e-4)


def test_model_guidance_matches_separate_conditional_and_unconditional_passes():
    """LatentDiffusion.sample's doubled batch equals running ε(z, c) and ε(z, "") apart; scale 1 is ε(z, c)."""
    from genlab.families.diffusion.ldm import LatentDiffusion

    torch.manual_seed(0)
    m = LatentDiffusion(1, 8, 2, 8, 2, 8, (1, 2), 1, 8, 1, 2).eval()
    m.scale_factor.fill_(1.0)
    for mod in (m.ema.unet.conv_out, *[b.attn.proj_out for b in m.ema.unet.down if b.attn is not None]):
        torch.nn.init.normal_(mod.weight, std=0.3)  # zero-initialised outputs: make the text matter
    prompts = ["a handwritten 3", "seven"]

    def manual(scale):
        s = DDIMScheduler(num_train_timesteps=50, clip_sample=False)
        s.set_timesteps(5)
        z = torch.randn((2, 2, 4, 4), generator=torch.Generator().manual_seed(0))
        for t in s.timesteps:
            tt = torch.full((2,), int(t))
            c = m.ema(z, tt, encode_prompts(prompts))
            u = m.ema(z, tt, encode_prompts(["", ""]))
            z = s.step(u + scale * (c - u), t, z).prev_sample
        return m.decode(z)

    for scale in (1.0, 3.0):
        got = m.sample(prompts, DDIMScheduler(num_train_timesteps=50, clip_sample=False), steps=5, guidance=scale)
        assert torch.allclose(got, manual(scale), atol=1e-5), scale
    assert not torch.allclose(manual(1.0), manual(3.0), atol=1e-3)


@pytest.mark.slow  # ~5 s: the digits and a preset-sized model
def test_denoiser_trains_on_posterior_samples_and_their_scale():
    """As CompVis LDM and diffusers: the denoiser's data and the scale factor come from posterior samples
    mean + exp(logvar / 2) * eps of the frozen autoencoder, not from the mean; checked against the
    formula with the same random draws."""
    from genlab.config import resolve
    from genlab.families.diffusion.task import SCALE_IMAGES, DiffusionTask, ImageBatch

    torch.manual_seed(0)
    cfg = resolve("ldm-digits", None, ["model.vae_channels=8", "model.unet_channels=8", "model.d_model=8"])
    task = DiffusionTask(cfg)
    task.prepare(None)
    m = task.build_model()
    with torch.no_grad():  # a posterior with a visible spread; a denoiser whose output reads its input
        m.vae.encoder[-1].bias[m.latent_channels :].fill_(-1.0)
        torch.nn.init.normal_(m.denoiser.unet.conv_out.weight, std=0.3)
        x = task.train_data.images[:SCALE_IMAGES]
        mean, logvar = m.vae.encode(x)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(cfg.train.seed))
    assert float(logvar.exp().mean()) > 0.1
    task._start_denoiser_phase(m)
    want = 1.0 / float((mean + (0.5 * logvar).exp() * eps).std())
    assert float(m.scale_factor) == pytest.approx(want, rel=1e-5)
    assert float(m.scale_factor) != pytest.approx(1.0 / float(mean.std()), rel=1e-3)  # the mean's would differ

    images, ids = x[:4], encode_prompts(["a handwritten 1"] * 4)
    batch = ImageBatch(images, ids, "denoiser", 4 * m.latent_channels * m.latent_size**2)
    torch.manual_seed(7)
    got = task.loss(m, batch)[0].detach()
    torch.manual_seed(7)  # the same draws in the same order: posterior eps, noise, t
    with torch.no_grad():
        mu, lv = m.vae.encode(images)
        z0 = (mu + (0.5 * lv).exp() * torch.randn(mu.shape)) * m.scale_factor
        noise = torch.randn(z0.shape)
        t = torch.randint(0, cfg.model.diffusion_steps, (4,))
        eps_hat = m.denoiser(task.scheduler().add_noise(z0, noise, t), t, ids)
    assert float(got) == pytest.approx(float((eps_hat - noise).pow(2).sum()), rel=1e-5)
    z_mean = mu * m.scale_factor  # the old recipe gives another loss with the same draws
    with torch.no_grad():
        eps_mean = m.denoiser(task.scheduler().add_noise(z_mean, noise, t), t, ids)
    assert float(got) != pytest.approx(float((eps_mean - noise).pow(2).sum()), rel=1e-3)
