"""DeepSeekMoE: shared experts plus fine-grained routed SwiGLU experts, sigmoid routing with
group-limited top-k, auxiliary-loss-free balancing (a selection-only bias) and the optional
sequence-wise / batch-wise balance losses.

Shapes: x (T, d) is the flat packed token stream; E routed experts, k chosen per token, F the
expert width. Dispatch sorts the T*k (token, expert) pairs by expert, so each expert's tokens are
one contiguous slice and each expert runs as one matmul (torch._grouped_mm on CUDA; on CPU a
hand-written forward/backward over the active experts' slices, no padding, no token dropping).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from genlab.families.lm.transformer import SwiGLU, silu_mul
from genlab.ops.fp8 import FP8LinearFn
from genlab.ops.recompute import cheap


def _affinities(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.linear(x.float(), weight.float()).sigmoid()


def route(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, k: int, n_group: int, topk_group: int, scaling: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid affinities, group-limited top-k on the biased scores, gates from the unbiased ones.

    x (T, d), weight (E, d), bias (E,) fp32 -> scores (T, E) fp32, idx (T, k) int64, gates (T, k) fp32.
    """
    scores = cheap(_affinities, x, weight)  # (T, E)
    sel = scores.detach() + bias  # the bias only ever chooses experts
    T, E = sel.shape
    if n_group > 1 and topk_group < n_group:
        g = sel.view(T, n_group, E // n_group)
        per = min(2, E // n_group)
        gscore = g.topk(per, dim=-1).values.sum(-1)  # (T, n_group): sum of each group's top scores
        keep = gscore.topk(topk_group, dim=-1).indices
        dropped = torch.ones_like(gscore, dtype=torch.bool).scatter_(1, keep, False)
        # -inf, never 0: s + b may be negative and would then lose to a dropped group's 0
        sel = g.masked_fill(dropped[:, :, None], float("-inf")).view(T, E)
    idx = sel.topk(k, dim=-1).indices  # (T, k)
    gates = scores.gather(1, idx)
    gates = gates / (gates.sum(-1, keepdim=True) + 1e-20) * scaling
    return scores, idx, gates


class _Groups:
    """Matmuls over contiguous row groups (one group per expert, `counts` rows each). float32 runs
    torch._grouped_mm (one call per product; on CPU it loops over the groups in C++, measured 5-16% faster
    per product than the same loop of torch.mm from Python, bit-identical; a whole bench step +3% at 2
    threads, unchanged at 1); other dtypes (float64 in the gradient checks) and unaligned shapes loop over
    torch.mm here, each result written in place."""

    def __init__(self, counts: list[int], device: torch.device):
        self.counts = counts
        self.offs = torch.tensor(counts, dtype=torch.int32).cumsum(0, dtype=torch.int32).to(device)

    enabled = hasattr(torch, "_grouped_mm")  # False: always the loop (benchmarks compare the two)

    @classmethod
    def _fused(cls, *ts: torch.Tensor) -> bool:
        """torch._grouped_mm takes float32 whose data is 16-byte aligned, with exactly one unit stride and
        every other stride a multiple of 4 elements, whatever the sizes (it checks a size-1 dimension's
        stride too)."""
        return cls.enabled and all(cls._aligned(t) for t in ts)

    @staticmethod
    def _aligned(t: torch.Tensor) -> bool:
        if t.dtype != torch.float32 or t.data_ptr() % 16:
            return False
        unit = [i for i, st in enumerate(t.stride()) if st == 1]
        return len(unit) == 1 and all(st % 4 == 0 for i, st in enumerate(t.stride()) if i != unit[0])

    def rows(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a (N, K) rows grouped by expert, b (E, K, M) -> (N, M): group e's rows times b[e]."""
        if self._fused(a, b):
            return torch._grouped_mm(a, b, offs=self.offs)
        out, start = a.new_empty(a.shape[0], b.shape[2]), 0
        for e, n in enumerate(self.counts):
            if n:
                torch.mm(a[start : start + n], b[e], out=out[start : start + n])
                start += n
        return out

    def weights(self, a: torch.Tensor, b: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """a (N, P), b (N, Q) rows grouped by expert -> (E, P, Q): a_e^T b_e per group (zeros for an
        idle expert); `like` the (E, P, Q) weight whose gradient this is."""
        if self._fused(a, b):
            return torch._grouped_mm(a.t(), b, offs=self.offs)
        out, start = torch.empty_like(like), 0
        for e, n in enumerate(self.counts):
            if n:
                torch.mm(a[start : start + n].t(), b[start : start + n], out=out[e])
                start += n
            else:
                out[e] = 0
        return out


class _ExpertsFn(torch.autograd.Function):
    """y_e = (g * silu(x_e W1_e^T) * (x_e W3_e^T)) W2_e^T for each expert's contiguous token slice.

    x (T, d); token_of (N,) the token of each (token, expert) pair sorted by expert, or None when x
    is already the (N, d) sorted rows; w13 (E, 2F, d) [gate rows | up rows]; w2 (E, d, F); counts a
    list of E ints summing to N; g (N,) the routing gates or None. With token_of the rows are gathered
    here and each pair's output is summed back into its token: the result is (T, d), and neither the
    gathered (N, d) input nor the (N, d) expert outputs are kept for backward (the gather is redone
    there; N = k T, so each would cost k times the layer's input). The gate scales the F-wide
    activation before the down projection (the same product as scaling the d-wide output, on a
    tensor d/F times smaller). Saves x and the (N, 2F) pre-activation; each product is one grouped
    matmul over all experts (`_Groups`; no cat, no per-expert autograd graph)."""

    @staticmethod
    def forward(ctx, x, token_of, w13, w2, counts, g):
        xs = x if token_of is None else x.index_select(0, token_of)
        Fw = w2.shape[2]
        groups = _Groups(counts, x.device)
        h = groups.rows(xs, w13.transpose(-2, -1))  # (N, 2F) gate|up pre-activations
        act = silu_mul(*h.split(Fw, dim=1))
        if g is not None:
            act.mul_(g.to(act.dtype)[:, None])
        ys = groups.rows(act, w2.transpose(-2, -1))
        ctx.save_for_backward(x, token_of, w13, w2, h, g)
        ctx.groups = groups
        return ys if token_of is None else x.new_zeros(x.shape).index_add_(0, token_of, ys)

    @staticmethod
    def backward(ctx, dy):
        x, token_of, w13, w2, h, g = ctx.saved_tensors
        groups = ctx.groups
        xs = x if token_of is None else x.index_select(0, token_of)
        dys = dy.contiguous() if token_of is None else dy.index_select(0, token_of)
        Fw = w2.shape[2]
        gate, up = h.split(Fw, dim=1)
        sg = torch.ops.aten.silu.out(gate, out=torch.empty(gate.shape, dtype=h.dtype, device=h.device))
        act = sg * up  # recomputed, before the gate
        act_g = act * g.to(act.dtype)[:, None] if g is not None else act
        dact = groups.rows(dys, w2)  # (N, F): gradient of the gated activation, then of the activation
        dw2 = groups.weights(dys, act_g, w2)  # (E, d, F)
        dg = None
        if g is not None:
            dg = (dact * act).sum(-1).to(g.dtype) if ctx.needs_input_grad[5] else None
            dact.mul_(g.to(dact.dtype)[:, None])
        dh = torch.empty_like(h)
        d_gate, d_up = dh.split(Fw, dim=1)
        torch.mul(dact, sg, out=d_up)
        torch.mul(dact, up, out=d_gate)
        torch.ops.aten.silu_backward.grad_input(d_gate, gate, grad_input=d_gate)
        dxs = groups.rows(dh, w13)  # (N, d)
        dw13 = groups.weights(dh, xs, w13)  # (E, 2F, d)
        dx = dxs if token_of is None else torch.zeros_like(x).index_add_(0, token_of, dxs)
        return dx, None, dw13, dw2, None, dg


class _ScatterRows(torch.autograd.Function):
    """out[token_of[i]] += ys[i] into a (T, d) zero tensor; backward gathers. (index_add in plain
    autograd keeps the whole `ys` alive only to read its shape.)"""

    @staticmethod
    def forward(ctx, ys, token_of, T: int):
        ctx.save_for_backward(token_of)
        return ys.new_zeros(T, ys.shape[1]).index_add_(0, token_of, ys)

    @staticmethod
    def backward(ctx, dy):
        (token_of,) = ctx.saved_tensors
        return dy.index_select(0, token_of), None, None


def _gated_act(h: torch.Tensor, gates: torch.Tensor | None) -> torch.Tensor:
    """(N, 2F) gate|up pre-activations -> silu(gate) * up, each row scaled by its routing gate."""
    gate, up = h.chunk(2, dim=-1)
    act = F.silu(gate) * up  # plain autograd (silu_mul writes with out=, which autograd refuses)
    return act if gates is None else act * gates.to(act.dtype)[:, None]


def grouped_experts(xs, w13, w2, counts: torch.Tensor, gates: torch.Tensor | None = None) -> torch.Tensor:
    """Expert SwiGLU over tokens sorted by expert; counts (E,) tokens per expert; gates (N,) scale
    each row's output (applied to the activation before the down projection)."""
    if xs.is_cuda and hasattr(torch, "_grouped_mm"):
        offs = counts.cumsum(0).to(torch.int32)
        h = torch._grouped_mm(xs, w13.transpose(-2, -1), offs=offs)
        return torch._grouped_mm(_gated_act(h, gates), w2.transpose(-2, -1), offs=offs)
    return _ExpertsFn.apply(xs, None, w13, w2, counts.tolist(), gates)


def dispatch_experts(x, token_of, w13, w2, counts: torch.Tensor, gates: torch.Tensor, fp8: bool = False):
    """x (T, d) -> sum over each token's chosen experts of gate * expert(x_token), (T, d). token_of (N,)
    and gates (N,) list the (token, expert) pairs sorted by expert; counts (E,) pairs per expert."""
    if not fp8 and not x.is_cuda:  # gather, experts and combine in one function (see _ExpertsFn)
        return _ExpertsFn.apply(x, token_of, w13, w2, counts.tolist(), gates)
    experts = fp8_grouped_experts if fp8 else grouped_experts
    return _ScatterRows.apply(experts(x.index_select(0, token_of), w13, w2, counts, gates), token_of, x.shape[0])


def fp8_grouped_experts(xs, w13, w2, counts: torch.Tensor, gates: torch.Tensor | None = None) -> torch.Tensor:
    """The routed experts with FP8 GEMMs (train.precision = fp8): each expert's two projections run
    through genlab.ops.fp8's FP8 Linear function (1x128 activation tiles, 128x128 weight blocks for
    Fprop, Dgrad and Wgrad; the activation saved in FP8), on the expert's contiguous token slice."""
    outs, start = [], 0
    for e, n in enumerate(counts.tolist()):
        if n:
            h = FP8LinearFn.apply(xs[start : start + n], w13[e])
            g = gates[start : start + n] if gates is not None else None
            outs.append(FP8LinearFn.apply(_gated_act(h, g), w2[e]))
            start += n
    return torch.cat(outs) if outs else xs.new_zeros(0, w2.shape[1])


def loop_experts(x, idx, gates, w13, w2) -> torch.Tensor:
    """Reference: every expert in turn over the tokens that chose it (plain autograd)."""
    out = torch.zeros_like(x)
    for e in range(w13.shape[0]):
        tok, slot = (idx == e).nonzero(as_tuple=True)
        if len(tok) == 0:
            continue
        gate, up = F.linear(x[tok], w13[e]).chunk(2, dim=-1)
        y = F.linear(F.silu(gate) * up, w2[e])
        out = out.index_add(0, tok, y * gates[tok, slot, None].to(y.dtype))
    return out


def balance_loss(scores: torch.Tensor, idx: torch.Tensor, seg: torch.Tensor, n_seg: int) -> torch.Tensor:
    """sum_i f_i P_i per segment, averaged over segments (V3 Eqs. 17-20).

    scores (T, E) unbiased sigmoid affinities; idx (T, k) the unbiased top-k; seg (T,) segment id of
    each token. f_i = E / (k T_s) * #tokens choosing i (a count, no gradient); P_i = mean over the
    segment of the scores normalised over all experts."""
    T, E = scores.shape
    k = idx.shape[1]
    chosen = torch.zeros_like(scores).scatter_(1, idx, 1.0)
    fsum = scores.new_zeros(n_seg, E).index_add_(0, seg, chosen)
    psum = scores.new_zeros(n_seg, E).index_add_(0, seg, scores / scores.sum(-1, keepdim=True))
    lens = torch.bincount(seg, minlength=n_seg).clamp_min(1).to(scores.dtype)[:, None]
    f = fsum * (E / k) / lens
    p = psum / lens
    return (f * p).sum(-1).mean()


class MoE(nn.Module):
    """h -> shared(h) + sum over chosen experts of gate * expert(h)."""

    def __init__(
        self,
        d: int,
        n_experts: int,
        k: int,
        width: int,
        n_shared: int,
        n_group: int = 1,
        topk_group: int = 1,
        scaling: float = 1.0,
        balance: str = "aux_free",
        alpha: float = 0.0,
    ):
        super().__init__()
        self.n_experts, self.k, self.width = n_experts, k, width
        self.n_group, self.topk_group, self.scaling = n_group, topk_group, scaling
        self.balance, self.alpha = balance, alpha
        self.gate = nn.Parameter(torch.empty(n_experts, d))  # router E (E, d), kept fp32
        self.w13 = nn.Parameter(torch.empty(n_experts, 2 * width, d))  # gate|up rows, [out, in]
        self.w2 = nn.Parameter(torch.empty(n_experts, d, width))
        self.shared = SwiGLU(d, n_shared * width) if n_shared else None
        self.register_buffer("bias", torch.zeros(n_experts, dtype=torch.float32))  # selection only
        self.register_buffer("load", torch.zeros(n_experts, dtype=torch.float32), persistent=False)
        self.aux_loss: torch.Tensor | None = None  # set by training forwards that compute one
        self._routing: tuple[torch.Tensor, torch.Tensor] | None = None  # sequence-wise: for row_balance_loss
        self.use_reference = False  # tests: run loop_experts instead of the grouped dispatch
        self.fp8_experts = False  # set by genlab.ops.fp8.convert_to_fp8: routed-expert GEMMs in FP8

    def row_balance_loss(self, row_cu: torch.Tensor) -> torch.Tensor | None:
        """The sequence-wise balance loss of the last training forward with one segment per packed row
        (DeepSeek-V3 Eqs. 17-20: T = the tokens of one training sequence); the forward's own aux_loss has
        one segment per document chunk (all a bare MoE layer knows). None if the forward had none."""
        if self._routing is None:
            return self.aux_loss
        scores, unbiased = self._routing
        lens = (row_cu[1:] - row_cu[:-1]).long().to(scores.device)
        seg = torch.repeat_interleave(torch.arange(len(lens), device=scores.device), lens)
        return self.alpha * balance_loss(scores, unbiased, seg, len(lens))

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        T = x.shape[0]
        scores, idx, gates = route(x, self.gate, self.bias, self.k, self.n_group, self.topk_group, self.scaling)
        if self.training and torch._C._current_graph_task_id() == -1:
            # count once per real forward: an activation-checkpoint recompute runs inside backward
            with torch.no_grad():
                self.load += torch.bincount(idx.reshape(-1), minlength=self.n_experts).float()
        self.aux_loss, self._routing = None, None
        if self.training and self.alpha > 0 and self.balance != "none":
            unbiased = scores.detach().topk(self.k, dim=-1).indices
            if self.balance != "aux" and cu_seqlens is not None:  # sequence-wise: one segment per document
                lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
                seg = torch.repeat_interleave(torch.arange(len(lens), device=x.device), lens)
                n_seg = len(lens)
            else:  # batch-wise: the whole micro-batch is one segment
                seg, n_seg = torch.zeros(T, dtype=torch.long, device=x.device), 1
            self.aux_loss = self.alpha * balance_loss(scores, unbiased, seg, n_seg)
            self._routing = (scores, unbiased) if self.balance != "aux" else None
        if self.use_reference:
            y = loop_experts(x, idx, gates, self.w13, self.w2)
        else:
            flat = idx.reshape(-1)  # (T*k,)
            order = flat.argsort(stable=True)
            counts = torch.bincount(flat, minlength=self.n_experts)
            token_of = order // self.k
            y = dispatch_experts(x, token_of, self.w13, self.w2, counts, gates.reshape(-1)[order], self.fp8_experts)
        if self.shared is not None:
            y = y + self.shared(x)
        return y

    @torch.no_grad()
    def update_bias(self, gamma: float) -> dict:
        """Once per optimizer step: b += gamma * sign(mean load - load); reset the counts.
        Loads are summed over data-parallel ranks first so every rank applies the same change."""
        load = self.load.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(load)
        mean = load.mean()
        maxvio = float(load.max() / mean - 1) if mean > 0 else 0.0
        if gamma and self.balance == "aux_free" and mean > 0:
            self.bias += gamma * torch.sign(mean - load)
        self.load.zero_()
        return {"maxvio": maxvio, "load": [int(v) for v in load.tolist()]}
