"""NADE's teacher-forced pass in O(B (n1 + 1) H + B D H) without a (B, H, D) tensor, for binary x.

h_k = sigmoid(c + W[:, <k] x_<k) changes only after a step whose bit is 1: between two ones every
conditional reads the same hidden vector. With n1 ones in an example its D conditionals read n1 + 1
distinct hidden vectors ("segments"; segment s = the steps after the s-th one, up to and including
the next one). So, per example b and segment s (everything in step order):

    a[b, 0] = c,  a[b, s] = a[b, s - 1] + W[:, j_s]        (j_s: the step of the s-th one)
    h[b, s] = sigmoid(a[b, s])                              (B, S, H), S = max n1 + 1
    logit[b, k] = V[k] . h[b, seg(b, k)] + bias[k]          seg(b, k) = ones before step k

The logits are a sampled product (`torch.sparse.sampled_addmm`: V @ h^T only at the B D pairs
(k, (b, seg))). Backward, with g = dL/dlogit (B, D):

    dV[k]     = sum_b g[b, k] h[b, seg(b, k)]               one embedding bag per step k
    dh[b, s]  = sum_{k in segment s} g[b, k] V[k]           one embedding bag per segment
    da        = dh * h * (1 - h);  dc = sum da
    dW[:, j_s] += sum_{s' >= s} da[b, s']                   reverse cumulative sum, at the ones

Work: sigmoids on B S H values (S is about the number of ones, not D) and B D H multiply-adds in
three fused kernels (sampled product, two weighted embedding bags); memory B S H for the saved
hidden states instead of several (B, H, D) tensors. The dense cumulative-sum form (classic.NADE's
`dense_logits`) stays as the reference and the path for x that needs a gradient or is not 0/1.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F


class Segments:
    """Where each example's ones are, for xo (B, D) of 0/1 in step order."""

    def __init__(self, xo: torch.Tensor):
        B, D = xo.shape
        ones = xo != 0
        cnt = ones.cumsum(1)  # (B, D) inclusive count of ones
        seg = cnt - ones.long()  # (B, D) the segment each step reads
        self.B, self.D = B, D
        self.S = S = int(cnt[:, -1].max()) + 1 if D else 1
        dev = xo.device
        self.rowid = seg + torch.arange(B, device=dev)[:, None] * S  # (B, D) row of the flat (B*S, H)
        # what segment (b, s) adds to the pre-activation: row D = c opens every example, then the
        # column of W of each one; rows past an example's last one add row D + 1 = 0 (padding)
        b1, j1 = ones.nonzero(as_tuple=True)
        self.add_row = torch.full((B, S), D + 1, dtype=torch.long, device=dev)
        self.add_row[:, 0] = D
        self.add_row[b1, cnt[b1, j1]] = j1
        # dW's bags: column j of W collects the suffix sums at the segments its ones open
        j2, b2 = ones.T.nonzero(as_tuple=True)  # the ones, step-major
        self.rows_by_step = b2 * S + cnt[b2, j2]
        per_step = ones.sum(0)
        self.step_offsets = torch.cumsum(per_step, 0) - per_step
        # the sampled product's CSR mask (D, B*S): row k holds column rowid[b, k] for every b (increasing in b)
        self.crow = torch.arange(0, B * D + 1, B, device=dev)
        self.col = self.rowid.T.reshape(-1)
        # embedding bags over the (b, k) flattening: bag (b, s) = its segment's steps, consecutive
        counts = torch.bincount(self.rowid.reshape(-1), minlength=B * S)
        self.seg_offsets = torch.cumsum(counts, 0) - counts  # start of each bag
        self.step_of = torch.arange(D, device=dev).repeat(B)  # (B*D,) step k of each (b, k)


def _sampled_logits(seg: Segments, V: torch.Tensor, hf: torch.Tensor) -> torch.Tensor:
    """(B, D): V[k] . hf[rowid[b, k]]."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        mask = torch.sparse_csr_tensor(
            seg.crow, seg.col, hf.new_ones(seg.B * seg.D), size=(seg.D, hf.shape[0]), check_invariants=False
        )
        out = torch.sparse.sampled_addmm(mask, V, hf.T, beta=0.0)
    return out.values().view(seg.D, seg.B).T


def _cumsum_segments_(a: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """In-place cumulative sum over dim 1 of (B, S, H): S slice additions beat torch.cumsum on a middle
    axis several times on CPU."""
    S = a.shape[1]
    steps = range(S - 2, -1, -1) if reverse else range(1, S)
    for s in steps:
        a[:, s].add_(a[:, s + 1 if reverse else s - 1])
    return a


class SegmentNADE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xo, W, c, V, bias):
        seg = Segments(xo)
        B, S, H = seg.B, seg.S, W.shape[0]
        table = torch.cat([W.T, c[None], W.new_zeros(1, H)])  # (D + 2, H): W's columns, c, 0
        a = F.embedding(seg.add_row, table)  # (B, S, H): what each segment adds
        h = torch.sigmoid_(_cumsum_segments_(a))  # (B, S, H)
        hf = h.view(B * S, H)
        logits = _sampled_logits(seg, V, hf) + bias
        ctx.seg = seg
        ctx.save_for_backward(h, V.detach())
        return logits

    @staticmethod
    def backward(ctx, g):
        seg: Segments = ctx.seg
        h, V = ctx.saved_tensors  # V: saved detached (a weight that requires grad slows embedding_bag)
        B, S, H = h.shape
        g = g.contiguous()
        hf = h.view(B * S, H)
        dV = dh = dW = dc = db = None
        need_w = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        if ctx.needs_input_grad[3]:  # bag k = the rows (b, seg(b, k)) weighted by g[b, k]
            dV = F.embedding_bag(
                seg.col,
                hf,
                seg.crow[:-1],
                mode="sum",
                per_sample_weights=g.T.reshape(-1),
            )
        if need_w:  # bag (b, s) = the steps k of segment s weighted by g[b, k]
            dh = F.embedding_bag(seg.step_of, V, seg.seg_offsets, mode="sum", per_sample_weights=g.reshape(-1))
            da = torch.ops.aten.sigmoid_backward(dh, hf).view(B, S, H)  # dh * h * (1 - h)
            suffix = _cumsum_segments_(da, reverse=True)  # sum_{s' >= s} da[b, s']
            dc = suffix[:, 0].sum(0)  # every segment reads c
            dWt = F.embedding_bag(seg.rows_by_step, suffix.view(B * S, H), seg.step_offsets, mode="sum")
            dW = dWt.T
        if ctx.needs_input_grad[4]:
            db = g.sum(0)
        return None, dW, dc, dV, db


def segment_logits(xo: torch.Tensor, W, c, V, bias) -> torch.Tensor:
    """(B, D) logits in step order for xo (B, D) of exact 0/1 in step order."""
    return SegmentNADE.apply(xo, W, c, V, bias)
