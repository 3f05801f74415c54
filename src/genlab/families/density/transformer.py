"""genlab's Transformer as an autoregressive model over D binary positions.

Example x becomes one sequence of D tokens: [BOS, x_order[0], ..., x_order[D-2]] (vocabulary
{0, 1, BOS = 2}); the causal model's output at position k gives the conditional of x_order[k]:
logit = head_1 - head_0, i.e. the softmax restricted to the two real symbols, so every factor is
a normalised Bernoulli. A batch of B examples is one packed stream of B * D tokens with
cu_seqlens = 0, D, 2D, ..., exactly the flat layout the language models train on.
"""

from __future__ import annotations

import torch

from genlab.families.density.base import AutoregressiveModel, check_order
from genlab.families.lm.args import LMArgs
from genlab.families.lm.transformer import Transformer

BOS = 2


class BinaryTransformer(AutoregressiveModel):
    def __init__(self, cfg, n_dims: int, order=None):
        super().__init__()
        self.n_dims = n_dims
        self.register_buffer("order", check_order(order, n_dims))
        self.net = Transformer(LMArgs(d_model=cfg.d_model, n_layer=cfg.n_layer, n_head=cfg.n_head), 3, max(2, n_dims))

    def logits(self, x, mask_id=0):
        B, D = x.shape
        xo = x[:, self.order].long()  # (B, D) in step order
        tokens = torch.cat([torch.full((B, 1), BOS, dtype=torch.long, device=x.device), xo[:, :-1]], 1)
        pos = torch.arange(D, device=x.device).repeat(B)  # (B * D,) restarting at 0 per example
        cu = torch.arange(0, B * D + 1, D, dtype=torch.int32, device=x.device)  # (B + 1,)
        h = self.net(tokens.reshape(-1), pos, cu, D)  # (B * D, d_model)
        lg = self.net.head(h).view(B, D, 3).to(x.dtype)
        lo = lg[..., 1] - lg[..., 0]  # (B, D) by step
        return lo[:, torch.argsort(self.order)]
