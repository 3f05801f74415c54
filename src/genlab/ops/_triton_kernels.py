"""Triton kernels behind genlab.ops.triton_flash (imported only when triton is wanted).

Shapes: Q (T, H, D), K (T, Hkv, D), V (T, Hkv, Dv), O (T, H, Dv), LSE / DELTA (T, H) fp32, CU (n_seq + 1,)
int32. Strides are passed for the token and head dims; the last dim is contiguous. D and Dv are padded
to powers of two (BD, BDV) with masked loads.
"""

import triton
import triton.language as tl


@triton.jit
def _mask(offs_m, offs_n, n, CAUSAL: tl.constexpr, WINDOW: tl.constexpr):
    ok = (offs_m[:, None] < n) & (offs_n[None, :] < n)
    d = offs_m[:, None] - offs_n[None, :]
    if CAUSAL:
        ok = ok & (d >= 0)
    if WINDOW > 0:
        ok = ok & (d < WINDOW)
        if not CAUSAL:
            ok = ok & (-d < WINDOW)
    return ok


@triton.jit
def _key_range(m0, n, BM: tl.constexpr, BN: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr):
    lo = 0
    hi = n
    if WINDOW > 0:
        lo = tl.maximum(0, m0 - WINDOW + 1)
        lo = (lo // BN) * BN
        if not CAUSAL:
            hi = tl.minimum(n, m0 + BM + WINDOW - 1)
    if CAUSAL:
        hi = tl.minimum(n, m0 + BM)
    return lo, hi


@triton.jit
def fwd(
    Q,
    K,
    V,
    O,
    LSE,
    CU,
    sq,
    sqh,
    sk,
    skh,
    sv,
    svh,
    so,
    soh,
    scale,
    REP: tl.constexpr,
    D: tl.constexpr,
    DV: tl.constexpr,
    BD: tl.constexpr,
    BDV: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    CAUSAL: tl.constexpr,
    WINDOW: tl.constexpr,
):
    pid_m, seq, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start = tl.load(CU + seq)
    n = tl.load(CU + seq + 1) - start
    m0 = pid_m * BM
    if m0 < n:
        hk = h // REP
        offs_m = m0 + tl.arange(0, BM)
        offs_d, offs_dv = tl.arange(0, BD), tl.arange(0, BDV)
        q = tl.load(
            Q + (start + offs_m)[:, None] * sq + h * sqh + offs_d[None, :],
            mask=(offs_m[:, None] < n) & (offs_d[None, :] < D),
            other=0.0,
        )
        m = tl.full([BM], float("-inf"), tl.float32)
        l = tl.zeros([BM], tl.float32)
        acc = tl.zeros([BM, BDV], tl.float32)
        lo, hi = _key_range(m0, n, BM, BN, CAUSAL, WINDOW)
        for n0 in range(lo, hi, BN):
            offs_n = n0 + tl.arange(0, BN)
            k = tl.load(
                K + (start + offs_n)[:, None] * sk + hk * skh + offs_d[None, :],
                mask=(offs_n[:, None] < n) & (offs_d[None, :] < D),
                other=0.0,
            )
            v = tl.load(
                V + (start + offs_n)[:, None] * sv + hk * svh + offs_dv[None, :],
                mask=(offs_n[:, None] < n) & (offs_dv[None, :] < DV),
                other=0.0,
            )
            s = tl.dot(q, tl.trans(k)) * scale
            s = tl.where(_mask(offs_m, offs_n, n, CAUSAL, WINDOW), s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # fully-masked-row guard
            p = tl.exp(s - ref[:, None])
            c = tl.exp(m - ref)
            l = l * c + tl.sum(p, 1)
            acc = acc * c[:, None] + tl.dot(p.to(v.dtype), v)
            m = m_new
        has = l > 0
        out = tl.where(has[:, None], acc / tl.where(has, l, 1.0)[:, None], 0.0)
        tl.store(
            O + (start + offs_m)[:, None] * so + h * soh + offs_dv[None, :],
            out.to(O.dtype.element_ty),
            mask=(offs_m[:, None] < n) & (offs_dv[None, :] < DV),
        )
        lse = tl.where(has, m + tl.log(tl.where(has, l, 1.0)), float("inf"))
        tl.store(LSE + (start + offs_m) * tl.num_programs(2) + h, lse, mask=offs_m < n)


@triton.jit
def bwd_dkdv(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV_,
    CU,
    sq,
    sqh,
    sk,
    skh,
    sv,
    svh,
    sdo,
    sdoh,
    H,
    scale,
    REP: tl.constexpr,
    D: tl.constexpr,
    DV: tl.constexpr,
    BD: tl.constexpr,
    BDV: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    CAUSAL: tl.constexpr,
    WINDOW: tl.constexpr,
):
    pid_n, seq, hk = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start = tl.load(CU + seq)
    n = tl.load(CU + seq + 1) - start
    n0 = pid_n * BN
    if n0 < n:
        offs_n = n0 + tl.arange(0, BN)
        offs_d, offs_dv = tl.arange(0, BD), tl.arange(0, BDV)
        kmask = offs_n[:, None] < n
        k = tl.load(
            K + (start + offs_n)[:, None] * sk + hk * skh + offs_d[None, :],
            mask=kmask & (offs_d[None, :] < D),
            other=0.0,
        )
        v = tl.load(
            V + (start + offs_n)[:, None] * sv + hk * svh + offs_dv[None, :],
            mask=kmask & (offs_dv[None, :] < DV),
            other=0.0,
        )
        dk = tl.zeros([BN, BD], tl.float32)
        dv = tl.zeros([BN, BDV], tl.float32)
        lo = 0
        hi = n
        if CAUSAL:
            lo = (n0 // BM) * BM
        if WINDOW > 0:
            hi = tl.minimum(n, n0 + BN + WINDOW - 1)
            if not CAUSAL:
                lo = (tl.maximum(0, n0 - WINDOW + 1) // BM) * BM
        for r in range(REP):
            h = hk * REP + r
            for m0 in range(lo, hi, BM):
                offs_m = m0 + tl.arange(0, BM)
                qmask = offs_m[:, None] < n
                q = tl.load(
                    Q + (start + offs_m)[:, None] * sq + h * sqh + offs_d[None, :],
                    mask=qmask & (offs_d[None, :] < D),
                    other=0.0,
                )
                do = tl.load(
                    DO + (start + offs_m)[:, None] * sdo + h * sdoh + offs_dv[None, :],
                    mask=qmask & (offs_dv[None, :] < DV),
                    other=0.0,
                )
                lse = tl.load(LSE + (start + offs_m) * H + h, mask=offs_m < n, other=float("inf"))
                delta = tl.load(DELTA + (start + offs_m) * H + h, mask=offs_m < n, other=0.0)
                s = tl.dot(q, tl.trans(k)) * scale
                s = tl.where(_mask(offs_m, offs_n, n, CAUSAL, WINDOW), s, float("-inf"))
                p = tl.exp(s - lse[:, None])  # (BM, BN) recomputed probabilities
                dv += tl.dot(tl.trans(p).to(do.dtype), do)
                dp = tl.dot(do, tl.trans(v))
                ds = p * (dp - delta[:, None]) * scale
                dk += tl.dot(tl.trans(ds).to(q.dtype), q)
        tl.store(
            DK + (start + offs_n)[:, None] * sk + hk * skh + offs_d[None, :],
            dk.to(DK.dtype.element_ty),
            mask=kmask & (offs_d[None, :] < D),
        )
        tl.store(
            DV_ + (start + offs_n)[:, None] * sv + hk * svh + offs_dv[None, :],
            dv.to(DV_.dtype.element_ty),
            mask=kmask & (offs_dv[None, :] < DV),
        )


@triton.jit
def bwd_dq(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    CU,
    sq,
    sqh,
    sk,
    skh,
    sv,
    svh,
    sdo,
    sdoh,
    H,
    scale,
    REP: tl.constexpr,
    D: tl.constexpr,
    DV: tl.constexpr,
    BD: tl.constexpr,
    BDV: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    CAUSAL: tl.constexpr,
    WINDOW: tl.constexpr,
):
    pid_m, seq, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start = tl.load(CU + seq)
    n = tl.load(CU + seq + 1) - start
    m0 = pid_m * BM
    if m0 < n:
        hk = h // REP
        offs_m = m0 + tl.arange(0, BM)
        offs_d, offs_dv = tl.arange(0, BD), tl.arange(0, BDV)
        qmask = offs_m[:, None] < n
        q = tl.load(
            Q + (start + offs_m)[:, None] * sq + h * sqh + offs_d[None, :],
            mask=qmask & (offs_d[None, :] < D),
            other=0.0,
        )
        do = tl.load(
            DO + (start + offs_m)[:, None] * sdo + h * sdoh + offs_dv[None, :],
            mask=qmask & (offs_dv[None, :] < DV),
            other=0.0,
        )
        lse = tl.load(LSE + (start + offs_m) * H + h, mask=offs_m < n, other=float("inf"))
        delta = tl.load(DELTA + (start + offs_m) * H + h, mask=offs_m < n, other=0.0)
        dq = tl.zeros([BM, BD], tl.float32)
        lo, hi = _key_range(m0, n, BM, BN, CAUSAL, WINDOW)
        for n0 in range(lo, hi, BN):
            offs_n = n0 + tl.arange(0, BN)
            k = tl.load(
                K + (start + offs_n)[:, None] * sk + hk * skh + offs_d[None, :],
                mask=(offs_n[:, None] < n) & (offs_d[None, :] < D),
                other=0.0,
            )
            v = tl.load(
                V + (start + offs_n)[:, None] * sv + hk * svh + offs_dv[None, :],
                mask=(offs_n[:, None] < n) & (offs_dv[None, :] < DV),
                other=0.0,
            )
            s = tl.dot(q, tl.trans(k)) * scale
            s = tl.where(_mask(offs_m, offs_n, n, CAUSAL, WINDOW), s, float("-inf"))
            p = tl.exp(s - lse[:, None])
            dp = tl.dot(do, tl.trans(v))
            ds = p * (dp - delta[:, None]) * scale
            dq += tl.dot(ds.to(k.dtype), k)
        tl.store(
            DQ + (start + offs_m)[:, None] * sq + h * sqh + offs_d[None, :],
            dq.to(DQ.dtype.element_ty),
            mask=qmask & (offs_d[None, :] < D),
        )
