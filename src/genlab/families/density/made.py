"""MADE (Germain et al., ICML 2015): an autoencoder whose weights are masked so that output d sees
only the inputs before d in an ordering; one pass gives all D conditionals.

Degrees (0-based here; the paper counts from 1):
- input / output degree of dimension d: its step in the ordering (a permutation of 0..D-1);
- hidden unit k of layer l: drawn uniformly from {min degree of layer l-1, ..., D-2}
  (never D-1: such a unit could feed no output; never below the previous minimum: no inputs);
- hidden mask: unit k of layer l reads unit k' of layer l-1 iff m_l(k) >= m_{l-1}(k');
- output mask: output d reads last-hidden unit k iff deg(d) > m_L(k) (strict);
- direct input -> output weights (optional): output d reads input d' iff deg(d) > deg(d') (strict).

Connectivity- and order-agnostic training: S masks are drawn once and stored as degree buffers
(saved with the weights); training batch i uses mask i mod S; evaluation averages the probabilities
of all S: log p(x) = logsumexp_s log p_s(x) - log S. Mask 0's ordering is a random permutation too,
as in the reference code (karpathy/pytorch-made `natural_ordering=False`), so order-agnostic
training never gives the natural order a mask of its own; `natural_order=True` (model.made_order =
natural) makes mask 0 the identity ordering instead. `mask_resample` says what differs between
masks: "full" (ordering and hidden degrees), "ordering" (hidden degrees of mask 0 reused),
"connectivity" (mask 0's ordering everywhere).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from genlab.families.density.base import AutoregressiveModel, logit

RESAMPLE = ("full", "ordering", "connectivity")


def made_degrees(n_dims: int, hidden: list[int], n_masks: int, resample: str, seed: int, natural_order: bool = False):
    """(in_deg (S, D), [hidden degrees (S, H_l) per layer]) as long tensors."""
    if resample not in RESAMPLE:
        raise ValueError(f"resample must be one of {RESAMPLE}")
    g = torch.Generator().manual_seed(seed)
    in_deg = torch.empty(n_masks, n_dims, dtype=torch.long)
    hid = [torch.empty(n_masks, h, dtype=torch.long) for h in hidden]
    for s in range(n_masks):
        if s == 0:
            perm = torch.arange(n_dims) if natural_order else torch.randperm(n_dims, generator=g)
        elif resample in ("full", "ordering"):
            perm = torch.randperm(n_dims, generator=g)
        else:  # connectivity: mask 0's ordering
            perm = torch.argsort(in_deg[0])
        in_deg[s, perm] = torch.arange(n_dims)  # the dimension at step k gets degree k
        lo = 0
        for layer, h in enumerate(hidden):
            if s > 0 and resample == "ordering":
                hid[layer][s] = hid[layer][0]
            else:  # uniform on {lo, ..., D-2}; with D = 1 the single choice 0 feeds no output
                hi = max(lo, n_dims - 2)
                hid[layer][s] = torch.randint(lo, hi + 1, (h,), generator=g)
            lo = int(hid[layer][s].min())
    return in_deg, hid


class MADE(AutoregressiveModel):
    def __init__(
        self,
        n_dims: int,
        hidden: list[int],
        n_masks: int = 1,
        resample: str = "full",
        direct: bool = False,
        seed: int = 0,
        activation: str = "relu",
        natural_order: bool = False,
    ):
        super().__init__()
        self.n_dims, self.n_masks = n_dims, n_masks
        self.act = {"relu": F.relu, "tanh": torch.tanh}[activation]
        sizes = [n_dims, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = nn.Linear(sizes[-1], n_dims)
        self.direct = nn.Linear(n_dims, n_dims, bias=False) if direct else None
        in_deg, hid = made_degrees(n_dims, list(hidden), n_masks, resample, seed, natural_order)
        self.register_buffer("in_degrees", in_deg)  # (S, D)
        for layer, deg in enumerate(hid):
            self.register_buffer(f"hidden_degrees_{layer}", deg)  # (S, H_l)
        for lin in (*self.layers, self.out, *([self.direct] if direct else [])):
            nn.init.orthogonal_(lin.weight)  # as the official code's best runs
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def degrees(self, mask_id: int) -> list[torch.Tensor]:
        return [self.in_degrees[mask_id]] + [
            getattr(self, f"hidden_degrees_{i}")[mask_id] for i in range(len(self.layers))
        ]

    def masks(self, mask_id: int = 0) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Hidden masks (H_l, H_{l-1}), output mask (D, H_L), direct mask (D, D); 1 = connected."""
        deg = self.degrees(mask_id)
        dtype = self.out.weight.dtype
        hidden = [(deg[i + 1][:, None] >= deg[i][None, :]).to(dtype) for i in range(len(self.layers))]
        out = (deg[0][:, None] > deg[-1][None, :]).to(dtype)
        direct = (deg[0][:, None] > deg[0][None, :]).to(dtype)
        return hidden, out, direct

    def order_of(self, mask_id: int = 0) -> torch.Tensor:
        return torch.argsort(self.in_degrees[mask_id])

    def logits(self, x, mask_id=0):
        hidden, out_mask, direct_mask = self.masks(mask_id)
        h = x
        for lin, m in zip(self.layers, hidden):
            h = self.act(F.linear(h, lin.weight * m, lin.bias))
        lo = F.linear(h, self.out.weight * out_mask, self.out.bias)
        if self.direct is not None:
            lo = lo + F.linear(x, self.direct.weight * direct_mask)
        return lo

    @torch.no_grad()
    def init_marginals(self, p):
        self.out.bias.copy_(logit(p))
