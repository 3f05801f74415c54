"""Self-speculative decoding's drafter: the first multi-token-prediction module drafts the token
after next from the main model's hidden states (the verification loop is genlab.generate's)."""

from __future__ import annotations

import torch

from genlab.errors import GenlabError
from genlab.families.deepseek.mla import MLACache


class MTPDrafter:
    """Drafts token n+1 with MTP module 1 for genlab.generate.speculative_greedy.

    Its own latent cache holds the pairs (h_i, token_{i+1}) it has seen; each call takes the pending
    pairs (hidden states of the main model and each one's next token) and drafts from the last."""

    def __init__(self, model, max_len: int):
        if not len(model.mtp):
            raise GenlabError("speculative decoding needs a deepseek run with model.mtp_depth >= 1")
        self.model, self.mtp = model, model.mtp[0]
        w = model.embed.weight
        self.cache = MLACache(model.cfg, 1, max_len, "latent", w.device, w.dtype)  # the MTP block's slot 0

    @torch.no_grad()
    def draft(self, pend_h: torch.Tensor, pend_tok: torch.Tensor) -> int:
        m, n = self.model, len(pend_tok)
        start = self.cache.len
        pos = torch.arange(start, start + n, device=pend_tok.device)
        cos, sin = m.rope(pos, start + n)
        cu = torch.tensor([0, n], dtype=torch.int32, device=pend_tok.device)
        hk = self.mtp(pend_h, m.embed(pend_tok), cos, sin, cu, n, self.cache)
        self.cache.len += n
        return int(m.head(self.mtp.norm(hk[-1])).argmax())
