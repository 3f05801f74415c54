"""What every density model over x in {0,1}^D offers, and the shared autoregressive machinery.

    log_prob(x)            x (B, D) float 0/1 -> (B,) exact log p(x) in nats
    train_log_prob(x, i)   what training maximises on batch i (MADE: one of its masks; others: log_prob)
    sample(num, seed)      (num, D) exact draws from p
    init_marginals(p)      optional: start the output biases at the data's per-dimension means

An autoregressive model gives, in one pass, the logit of every conditional
p(x_d = 1 | the dimensions before d in its order); the product of those Bernoullis is p(x).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, D) logits and 0/1 targets -> (B,) summed log-likelihood."""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def logit(p: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    p = p.clamp(eps, 1 - eps)
    return torch.log(p) - torch.log1p(-p)


class DensityModel(nn.Module):
    n_dims: int

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def train_log_prob(self, x: torch.Tensor, batch_index: int = 0) -> torch.Tensor:
        return self.log_prob(x)

    def sample(self, num: int, seed: int = 0) -> torch.Tensor:
        raise NotImplementedError

    def init_marginals(self, p: torch.Tensor) -> None:
        """p (D,): the training data's mean of each dimension. Default: nothing."""

    def _dtype_device(self):
        w = next(self.parameters())
        return w.dtype, w.device


class AutoregressiveModel(DensityModel):
    """Subclasses implement logits(x, mask_id) -> (B, D), indexed by dimension, and order_of(mask_id)."""

    n_masks = 1

    def logits(self, x: torch.Tensor, mask_id: int = 0) -> torch.Tensor:
        raise NotImplementedError

    def order_of(self, mask_id: int = 0) -> torch.Tensor:
        """(D,) long: order[k] is the dimension generated at step k."""
        return self.order

    def log_prob_mask(self, x: torch.Tensor, mask_id: int = 0) -> torch.Tensor:
        return bernoulli_log_prob(self.logits(x, mask_id), x)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact for one mask; with S masks, log of the mean probability: logsumexp_s - log S."""
        if self.n_masks == 1:
            return self.log_prob_mask(x, 0)
        lp = torch.stack([self.log_prob_mask(x, s) for s in range(self.n_masks)])  # (S, B)
        return torch.logsumexp(lp, 0) - math.log(self.n_masks)

    def train_log_prob(self, x: torch.Tensor, batch_index: int = 0) -> torch.Tensor:
        return self.log_prob_mask(x, batch_index % self.n_masks)

    @torch.no_grad()
    def sample_mask(self, num: int, generator: torch.Generator, mask_id: int = 0) -> torch.Tensor:
        """D sequential passes; pass k fixes the dimension at step k from its conditional."""
        dtype, device = self._dtype_device()
        x = torch.zeros(num, self.n_dims, dtype=dtype, device=device)
        for d in self.order_of(mask_id).tolist():
            p = torch.sigmoid(self.logits(x, mask_id)[:, d])
            u = torch.rand(num, generator=generator, dtype=torch.float64).to(device)
            x[:, d] = (u < p.double()).to(dtype)
        return x

    @torch.no_grad()
    def sample(self, num: int, seed: int = 0) -> torch.Tensor:
        """Exact draws; with S masks each draw first picks its mask uniformly (the mixture)."""
        g = torch.Generator().manual_seed(seed)
        if self.n_masks == 1:
            return self.sample_mask(num, g, 0)
        dtype, device = self._dtype_device()
        which = torch.randint(self.n_masks, (num,), generator=g)
        x = torch.zeros(num, self.n_dims, dtype=dtype, device=device)
        for s in which.unique().tolist():
            rows = (which == s).nonzero().squeeze(1)
            x[rows.to(device)] = self.sample_mask(len(rows), g, s)
        return x


def check_order(order: torch.Tensor | None, n_dims: int) -> torch.Tensor:
    if order is None:
        return torch.arange(n_dims)
    order = torch.as_tensor(order, dtype=torch.long)
    if sorted(order.tolist()) != list(range(n_dims)):
        raise ValueError(f"order must be a permutation of 0..{n_dims - 1}")
    return order.clone()
