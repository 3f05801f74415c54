"""AdamW with weight decay on matrices only, and the learning-rate schedules."""

from __future__ import annotations

import math

import torch

from genlab.config import TrainConfig


def build_optimizer(model: torch.nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if t.optimizer == "adagrad":  # MADE's MNIST setup (Germain et al. 2015)
        return torch.optim.Adagrad(groups, lr=t.lr, eps=t.eps)
    if t.optimizer == "adadelta":  # MADE's UCI setup; lr 1.0 is Zeiler's rule as written
        return torch.optim.Adadelta(groups, lr=t.lr, rho=t.beta2, eps=t.eps)
    if t.optimizer == "sgd":  # NADE (Larochelle & Murray 2011), with schedule = inverse
        return torch.optim.SGD(groups, lr=t.lr)
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps, fused=_fused_ok(decay + no_decay))


def _fused_ok(params: list[torch.Tensor]) -> bool:
    """torch's fused AdamW kernel applies: plain (not DTensor / FSDP-sharded) floating-point tensors on
    CPU or CUDA. On CPU torch's default is the per-tensor for-loop implementation (about a dozen small
    kernels per parameter per step): at small shapes that was a visible share of a step (issue 19)."""
    return bool(params) and all(
        type(p) is torch.nn.Parameter
        and p.device.type in ("cpu", "cuda")
        and p.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)
        for p in params
    )


def lr_factor(step: int, t: TrainConfig) -> float:
    """Multiplier of the peak lr for the update made at `step` (0-based).

    Linear warmup over warmup_steps, then:
    - multistep (DeepSeek LLM): 1.0 until 80% of training, 0.316 until 90%, then 0.1;
    - cosine: from 1.0 down to min_lr_ratio at the last step;
    - constant;
    - inverse: 1 / (1 + lr_decay * step), the "decrease constant" of the NADE and MADE papers' code.
    """
    if t.warmup_steps and step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    frac = step / max(1, t.steps)
    if t.schedule == "multistep":
        return 1.0 if frac < 0.8 else (0.316 if frac < 0.9 else 0.1)
    if t.schedule == "cosine":
        span = max(1, t.steps - t.warmup_steps - 1)
        p = min(1.0, (step - t.warmup_steps) / span)
        return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))
    if t.schedule == "inverse":
        return 1.0 / (1.0 + t.lr_decay * (step - t.warmup_steps))
    return 1.0


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr
