"""Output head + cross-entropy in chunks, with the gradient formed during the forward pass.

    loss = sum_i CE(h_i W^T, t_i)   over tokens with t_i != IGNORE        h (T, d), W (V, d)

The plain path materialises the (T, V) logits, a float copy, the softmax and its gradient: four
logits-sized tensors (128 MB each at 4096 x 8192). Here each chunk of tokens makes its logits,
turns them in place into dloss/dlogits = softmax - onehot, and immediately folds them into dh and
dW; backward only scales those by the incoming gradient. Same matmul FLOPs, one chunk of logits
alive at a time. Used on CPU for training; the reference is F.cross_entropy on model.head(h).
"""

from __future__ import annotations

import torch

IGNORE = -100


class _ChunkedHeadCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, chunk: int, tok_weights=None):
        T = h.shape[0]
        loss = torch.zeros((), dtype=torch.promote_types(h.dtype, torch.float32), device=h.device)
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros_like(weight)
        rows = torch.arange(min(chunk, T), device=h.device)
        # two chunk-sized buffers reused by every chunk: a fresh logits-sized tensor per chunk costs
        # page faults on CPU comparable to the arithmetic done on it
        logits = h.new_empty(min(chunk, T), weight.shape[0])
        logp = torch.empty_like(logits)
        for s in range(0, T, chunk):
            hs, ts = h[s : s + chunk], targets[s : s + chunk]
            n = hs.shape[0]
            torch.mm(hs, weight.t(), out=logits[:n])  # (n, V)
            valid = ts != IGNORE
            tt = torch.where(valid, ts, 0)
            if tok_weights is not None:  # per-token loss weights (any-order objective)
                valid = valid * tok_weights[s : s + chunk].to(logits.dtype)
            # one fused pass (max, sum of exp, subtract) instead of logsumexp + subtract
            lp = torch.ops.aten._log_softmax.out(logits[:n], -1, False, out=logp[:n])
            loss -= (lp[rows[:n], tt] * valid).sum()
            probs = lp.exp_()  # softmax, in place
            probs[rows[:n], tt] -= 1.0  # dloss/dlogits = softmax - onehot
            probs.mul_(valid[:, None])  # ignored tokens contribute nothing
            torch.mm(probs, weight, out=grad_h[s : s + n])
            grad_w.addmm_(probs.t(), hs)
        ctx.save_for_backward(grad_h, grad_w)
        return loss

    @staticmethod
    def backward(ctx, g):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * g, grad_w * g, None, None, None


def weighted_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, tok_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """The plain reference: sum over tokens of w_i * CE(logits_i, t_i), IGNORE skipped."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if tok_weights is None:
        return torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")
    ce = torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="none")
    return (ce * tok_weights.to(ce.dtype)).sum()


def head_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk: int = 1024,
    tok_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Summed (optionally per-token weighted) cross-entropy of logits h @ weight^T against targets
    (IGNORE skipped)."""
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _ChunkedHeadCE.apply(h, weight, targets, chunk, tok_weights)
    return weighted_cross_entropy(h @ weight.t(), targets, tok_weights)


def head_loss(
    head: torch.nn.Module, h: torch.Tensor, targets: torch.Tensor, tok_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Summed cross-entropy of head(h) against targets. On CPU with a plain bias-free Linear head: the
    chunked head + CE above (no logits-sized tensor kept for backward; equal to the plain path,
    tests/test_models.py); otherwise (GPUs, CPU autocast: train.precision = bf16) the logits and the plain
    reference."""
    if (
        h.device.type == "cpu"
        and type(head) is torch.nn.Linear
        and head.bias is None
        and not torch.is_autocast_enabled("cpu")
        and h.dtype == head.weight.dtype
    ):
        return head_cross_entropy(h, head.weight, targets, tok_weights=tok_weights)
    return weighted_cross_entropy(head(h), targets, tok_weights)
