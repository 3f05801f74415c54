"""NADE's teacher-forced pass as one fused CPU kernel (C++, in genlab.ops.cpu_ext, built on first use
with torch's `cpp_extension`), for binary x in step order.

Per example, in step order, the kernel keeps the running pre-activation a (H,) and the current hidden
vector h = sigmoid(a) in cache, and reads each step's row of V once:

    forward   logit[k] = bias[k] + V[k] . h;   after a one at step k: a += W[:, k], h = sigmoid(a)
    backward  the same sweep forward keeps the n1 + 1 hidden vectors of the example ((n1 + 1) x H, in
              L2), then a sweep backward over the steps accumulates
                  dV[k] += g[k] h_s,   dh_s += g[k] V[k]
              and, where segment s ends (at a one, or at step 0), da_s = dh_s h_s (1 - h_s),
              suffix += da_s, dW[:, k] += suffix (k the step of the one that opened s), dc += suffix
              at step 0.

The segment form (`families/density/nade_fast.py`) computes the same quantities with PyTorch ops,
each streaming a (B, n1 + 1, H) tensor through memory; here nothing of that size exists. Examples run
in parallel (ATen's parallel_for); dV, dW and dc are summed per thread, then over threads. float32
and float64. The hidden vectors are recomputed from W and c in backward (exact: the same additions in
the same order as forward), so forward saves nothing but its inputs.

The build, its cache and the fallback are genlab.ops.cpu_ext's (callers run the segment form when
`cpu_ext.load()` returns None).
"""

from __future__ import annotations

import torch

from genlab.ops import cpu_ext


class FusedNADE(torch.autograd.Function):
    """logits (B, D) in step order for xo (B, D) of exact 0/1 in step order (see the module docstring)."""

    @staticmethod
    def forward(ctx, xo, W, c, V, bias):
        ext = cpu_ext.load()
        x8 = xo.to(torch.uint8).contiguous()
        Wt = W.detach().T.contiguous()  # (D, H): the column of step k is one contiguous row
        Vc = V.detach().contiguous()
        out = ext.nade_forward(x8, Wt, c.detach(), Vc, bias.detach())
        ctx.save_for_backward(x8, Wt, c.detach(), Vc)
        return out

    @staticmethod
    def backward(ctx, g):
        x8, Wt, c, V = ctx.saved_tensors
        dWt, dc, dV = cpu_ext.load().nade_backward(x8, Wt, c, V, g.contiguous())
        db = g.sum(0) if ctx.needs_input_grad[4] else None
        return None, dWt.T, dc, dV, db


def fused_logits(xo: torch.Tensor, W, c, V, bias) -> torch.Tensor:
    """(B, D) logits in step order; call only after `cpu_ext.load()` returned the module."""
    return FusedNADE.apply(xo, W, c, V, bias)
