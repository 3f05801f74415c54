"""Exponential moving average of weights: ema = d * ema + (1 - d) * current, with the warm-up
d_n = min(decay, (1 + n) / (10 + n)) after n updates so short runs are not dominated by the init."""

from __future__ import annotations

import torch
import torch.nn as nn


def ema_decay(decay: float, n_updates: int) -> float:
    return min(decay, (1 + n_updates) / (10 + n_updates))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """In place on ema's parameters and floating buffers; both modules have the same structure."""
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        if e.dtype.is_floating_point:
            e.copy_(b)


@torch.no_grad()
def ema_copy_(ema: nn.Module, model: nn.Module) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.copy_(p.detach())
