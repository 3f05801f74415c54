"""FlashAttention in plain torch: tiled online-softmax forward, recomputing backward.

Same API as every backend in genlab.ops.attention (flash-attention's varlen layout):

    q (T, H, D), k (T, H_kv, D), v (T, H_kv, Dv), cu_seqlens (n_seq + 1,) int32, max_seqlen
    -> out (T, H, Dv)

Forward (per query tile I, FA2 order): keep a running row max m, running sum l and an
*unnormalised* accumulator acc over the key tiles J that the mask does not exclude entirely;
normalise once at the end and keep only out and LSE = m + log(l). Backward recomputes each
probability tile from LSE (P = exp(scale q k^T - LSE)) and never stores a (T, T) matrix, so
memory is O(T) (a few tiles of Br x Bc scores at a time).

Masking (the convention of genlab.ops.attention): a query sees only keys of its own sequence;
`causal`: j <= i; `window = W`: allowed iff 0 <= i - j < W (W keys including the query itself;
without causal, |i - j| < W). Rows that see no key (tokens past cu_seqlens[-1]) output zeros;
inside a tile, a row whose keys are all masked is guarded so that exp(-inf - (-inf)) never runs.

Grouped-query attention: query head h uses key/value head h // (H / H_kv) (repeat_interleave
order, as the naive backend). Dv may differ from D (MLA: D = 192, Dv = 128).
Sequences of equal length are processed together as a batch (a packed row of equal documents
costs one pass, not one per document).
"""

from __future__ import annotations

import math

import torch

BLOCK = 256  # query and key tile size (rows); large tiles = fewer python-level iterations on CPU


def _runs(cu: list[int]) -> list[tuple[int, int, int]]:
    """Consecutive sequences of equal length: (start token, count, length); empty ones dropped."""
    runs, i = [], 0
    while i < len(cu) - 1:
        n = cu[i + 1] - cu[i]
        j = i + 1
        while j < len(cu) - 1 and cu[j + 1] - cu[j] == n:
            j += 1
        if n > 0:
            runs.append((cu[i], j - i, n))
        i = j
    return runs


def _tiles(n: int, block: int, causal: bool, window: int | None):
    """For each query tile (i0, i1): the key tiles (j0, j1, needs_mask) it must visit."""
    out = []
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        lo = 0 if not window else max(0, i0 - window + 1)  # smallest key any row of the tile sees
        hi = i1 if causal else (n if not window else min(n, i1 + window - 1))  # one past the largest
        ks = []
        for j0 in range((lo // block) * block, hi, block):
            j1 = min(n, j0 + block)
            full = True  # every (i, j) in the tile allowed -> no mask needed
            if causal and j1 - 1 > i0:
                full = False
            if window and (i1 - 1) - j0 >= window:
                full = False
            if window and not causal and (j1 - 1) - i0 >= window:
                full = False
            ks.append((j0, j1, not full))
        out.append((i0, i1, ks))
    return out


def _mask(i0, i1, j0, j1, causal, window, device) -> torch.Tensor:
    """(Br, Bc) bool: allowed."""
    d = torch.arange(i0, i1, device=device)[:, None] - torch.arange(j0, j1, device=device)[None, :]
    m = torch.ones_like(d, dtype=torch.bool)
    if causal:
        m &= d >= 0
    if window:
        m &= d < window
        if not causal:
            m &= -d < window
    return m


def _q_tile(x, i0, i1, hkv):
    """(B, n, H, D) rows i0:i1 -> (B, Hkv, rep, Br, D)."""
    B, _, H, D = x.shape
    return x[:, i0:i1].reshape(B, i1 - i0, hkv, H // hkv, D).permute(0, 2, 3, 1, 4)


def _kv_tile(x, j0, j1):
    """(B, n, Hkv, D) rows j0:j1 -> (B, Hkv, 1, Bc, D)."""
    return x[:, j0:j1].permute(0, 2, 1, 3).unsqueeze(2)


def _forward_run(q, k, v, scale, causal, window, block, acc_dtype):
    """q (B, n, H, D), k (B, n, Hkv, D), v (B, n, Hkv, Dv) -> out (B, n, H, Dv), lse (B, n, H) fp32."""
    B, n, H, D = q.shape
    hkv, dv = k.shape[2], v.shape[3]
    out = q.new_empty(B, n, H, dv)
    lse = torch.empty(B, n, H, dtype=acc_dtype, device=q.device)
    for i0, i1, ks in _tiles(n, block, causal, window):
        qi = _q_tile(q, i0, i1, hkv).to(acc_dtype) * scale  # (B, Hkv, rep, Br, D)
        m = qi.new_full(qi.shape[:-1], -math.inf)  # running max (B, Hkv, rep, Br)
        l = qi.new_zeros(qi.shape[:-1])  # running sum
        acc = qi.new_zeros(*qi.shape[:-1], dv)  # unnormalised output (B, Hkv, rep, Br, Dv)
        for j0, j1, needs_mask in ks:
            kj = _kv_tile(k, j0, j1).to(acc_dtype)  # (B, Hkv, 1, Bc, D)
            vj = _kv_tile(v, j0, j1).to(acc_dtype)
            s = qi @ kj.transpose(-1, -2)  # (B, Hkv, rep, Br, Bc)
            if needs_mask:
                s.masked_fill_(~_mask(i0, i1, j0, j1, causal, window, q.device), -math.inf)
            m_new = torch.maximum(m, s.amax(-1))
            ref = torch.where(m_new == -math.inf, 0.0, m_new)  # fully-masked-row guard
            p = s.sub_(ref.unsqueeze(-1)).exp_()  # in place: one (Br, Bc) tile alive
            c = m.sub_(ref).exp_()  # rescale factor of the old state (0 when m = -inf); m is replaced below
            l.mul_(c).add_(p.sum(-1))
            acc.mul_(c.unsqueeze(-1)).add_(p @ vj)
            m = m_new
        safe = torch.where(l > 0, l, 1.0)
        o = torch.where((l > 0).unsqueeze(-1), acc / safe.unsqueeze(-1), 0.0)
        out[:, i0:i1] = o.permute(0, 3, 1, 2, 4).reshape(B, i1 - i0, H, dv).to(out.dtype)
        tile_lse = torch.where(l > 0, m + torch.log(safe), math.inf)  # +inf: P = exp(. - inf) = 0
        lse[:, i0:i1] = tile_lse.permute(0, 3, 1, 2).reshape(B, i1 - i0, H)
    return out, lse


def _backward_run(q, k, v, o, do, lse, scale, causal, window, block, acc_dtype):
    """All (B, n, ...) as in _forward_run; returns dq, dk, dv in acc_dtype."""
    B, n, H, D = q.shape
    hkv, dv_dim = k.shape[2], v.shape[3]
    rep = H // hkv
    dq = torch.zeros(B, n, H, D, dtype=acc_dtype, device=q.device)
    dk = torch.zeros(B, n, hkv, D, dtype=acc_dtype, device=q.device)
    dv = torch.zeros(B, n, hkv, dv_dim, dtype=acc_dtype, device=q.device)
    for i0, i1, ks in _tiles(n, block, causal, window):
        qi = _q_tile(q, i0, i1, hkv).to(acc_dtype)  # (B, Hkv, rep, Br, D)
        doi = _q_tile(do, i0, i1, hkv).to(acc_dtype)  # (B, Hkv, rep, Br, Dv)
        oi = _q_tile(o, i0, i1, hkv).to(acc_dtype)
        lsei = lse[:, i0:i1].reshape(B, i1 - i0, hkv, rep).permute(0, 2, 3, 1).unsqueeze(-1)
        dvec = (doi * oi).sum(-1, keepdim=True)  # rowsum(dO * O): (B, Hkv, rep, Br, 1)
        dqi = torch.zeros_like(qi)
        for j0, j1, needs_mask in ks:
            kj = _kv_tile(k, j0, j1).to(acc_dtype)  # (B, Hkv, 1, Bc, D)
            vj = _kv_tile(v, j0, j1).to(acc_dtype)
            s = (qi @ kj.transpose(-1, -2)).mul_(scale)  # (B, Hkv, rep, Br, Bc)
            if needs_mask:
                s.masked_fill_(~_mask(i0, i1, j0, j1, causal, window, q.device), -math.inf)
            p = torch.exp_(s.sub_(lsei))  # recomputed probabilities
            ds = (doi @ vj.transpose(-1, -2)).sub_(dvec).mul_(p).mul_(scale)  # P * (dP - rowsum(dO*O)) * scale
            dqi += ds @ kj
            # sum the query heads of each group: (B, Hkv, rep, Bc, *) -> (B, Bc, Hkv, *)
            dk[:, j0:j1] += (ds.transpose(-1, -2) @ qi).sum(2).permute(0, 2, 1, 3)
            dv[:, j0:j1] += (p.transpose(-1, -2) @ doi).sum(2).permute(0, 2, 1, 3)
        dq[:, i0:i1] = dqi.permute(0, 3, 1, 2, 4).reshape(B, i1 - i0, H, D)
    return dq, dk, dv


class FlashAttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, causal, window, scale, block):
        acc_dtype = torch.promote_types(q.dtype, torch.float32)
        runs = _runs(cu_seqlens.tolist())
        out = torch.zeros(q.shape[0], q.shape[1], v.shape[2], dtype=q.dtype, device=q.device)
        lse = torch.full(q.shape[:2], math.inf, dtype=acc_dtype, device=q.device)  # (T, H)
        for start, count, n in runs:
            end = start + count * n
            o, l = _forward_run(
                q[start:end].view(count, n, *q.shape[1:]),
                k[start:end].view(count, n, *k.shape[1:]),
                v[start:end].view(count, n, *v.shape[1:]),
                scale,
                causal,
                window,
                block,
                acc_dtype,
            )
            out[start:end] = o.reshape(end - start, *out.shape[1:])
            lse[start:end] = l.reshape(end - start, q.shape[1])
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (runs, causal, window, scale, block, acc_dtype)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        runs, causal, window, scale, block, acc_dtype = ctx.args
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        dout = dout.contiguous()
        for start, count, n in runs:
            end = start + count * n

            def run(x, start=start, end=end, count=count, n=n):
                return x[start:end].view(count, n, *x.shape[1:])

            gq, gk, gv = _backward_run(
                run(q), run(k), run(v), run(out), run(dout), run(lse), scale, causal, window, block, acc_dtype
            )
            dq[start:end] = gq.reshape(end - start, *q.shape[1:])
            dk[start:end] = gk.reshape(end - start, *k.shape[1:])
            dv[start:end] = gv.reshape(end - start, *v.shape[1:])
        return dq, dk, dv, None, None, None, None, None


def flash_attention(
    q, k, v, cu_seqlens, max_seqlen, causal=True, window=None, scale=None, block: int = BLOCK
) -> torch.Tensor:
    """The `flash` backend. q (T, H, D), k (T, Hkv, D), v (T, Hkv, Dv) -> (T, H, Dv)."""
    T, H, D = q.shape
    if k.shape[1] == 0 or H % k.shape[1]:
        raise ValueError(f"flash attention: {H} query heads is not a multiple of {k.shape[1]} key/value heads")
    scale = scale if scale is not None else D**-0.5
    window = int(window) if window else None
    return FlashAttentionFn.apply(q, k, v, cu_seqlens, causal, window, float(scale), int(block))
