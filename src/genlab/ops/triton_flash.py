"""FlashAttention as Triton kernels (forward, backward), same algorithm and API as genlab.ops.flash.

    q (T, H, D), k (T, H_kv, D), v (T, H_kv, Dv), cu_seqlens (n_seq + 1,) int32, max_seqlen
    -> out (T, H, Dv)

Varlen (one program per (query tile, sequence, head)), causal, window (allowed iff 0 <= i - j < W;
|i - j| < W without causal), GQA (query head h reads key/value head h // (H / H_kv)), Dv != D.
Forward keeps O and LSE (T, H) fp32 only; the backward recomputes P tile by tile: one kernel for
dK, dV (a program per key tile and key/value head, looping over the group's query heads) and one for
dQ, so nothing is accumulated atomically. Rows that see no key give 0 and LSE = +inf.

Triton is imported lazily. `available(device)` says whether the kernels can run: on CUDA with
triton installed, or anywhere under TRITON_INTERPRET=1 (the interpreter, used by the CPU tests).
"""

from __future__ import annotations

import math
import os

import torch

_KERNELS = None


def available(device: torch.device | str | None = None) -> bool:
    dev = torch.device(device) if device is not None else None
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    if not interp and not (torch.cuda.is_available() and (dev is None or dev.type == "cuda")):
        return False
    try:
        import triton  # noqa: F401
    except Exception:  # absent, or broken for this torch
        return False
    return True


def _kernels():
    global _KERNELS
    if _KERNELS is None:
        import triton

        from genlab.ops import _triton_kernels as kern

        _KERNELS = (triton, kern.fwd, kern.bwd_dkdv, kern.bwd_dq)
    return _KERNELS


def _meta(q, k, v, causal, window, block):
    import triton

    H, D = q.shape[1], q.shape[2]
    bm = block or (16 if q.device.type == "cpu" else 64)
    return dict(
        REP=H // k.shape[1],
        D=D,
        DV=v.shape[2],
        BD=max(16, triton.next_power_of_2(D)),
        BDV=max(16, triton.next_power_of_2(v.shape[2])),
        BM=bm,
        BN=bm,
        CAUSAL=bool(causal),
        WINDOW=int(window or 0),
    )


class TritonFlashFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, max_seqlen, causal, window, scale, block):
        triton, fwd, _, _ = _kernels()
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        T, H, _ = q.shape
        cu = cu_seqlens.to(device=q.device, dtype=torch.int32).contiguous()
        out = torch.zeros(T, H, v.shape[2], dtype=q.dtype, device=q.device)
        lse = torch.full((T, H), math.inf, dtype=torch.float32, device=q.device)
        meta = _meta(q, k, v, causal, window, block)
        n_seq = cu.shape[0] - 1
        if T and n_seq and max_seqlen:
            grid = (triton.cdiv(int(max_seqlen), meta["BM"]), n_seq, H)
            fwd[grid](
                q,
                k,
                v,
                out,
                lse,
                cu,
                q.stride(0),
                q.stride(1),
                k.stride(0),
                k.stride(1),
                v.stride(0),
                v.stride(1),
                out.stride(0),
                out.stride(1),
                scale,
                **meta,
            )
        ctx.save_for_backward(q, k, v, out, lse, cu)
        ctx.args = (int(max_seqlen), scale, meta)
        return out

    @staticmethod
    def backward(ctx, dout):
        triton, _, bwd_dkdv, bwd_dq = _kernels()
        q, k, v, out, lse, cu = ctx.saved_tensors
        max_seqlen, scale, meta = ctx.args
        dout = dout.contiguous()
        delta = (dout.float() * out.float()).sum(-1).contiguous()  # rowsum(dO * O): (T, H)
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        T, H, _ = q.shape
        n_seq = cu.shape[0] - 1
        if T and n_seq and max_seqlen:
            strides = (
                q.stride(0),
                q.stride(1),
                k.stride(0),
                k.stride(1),
                v.stride(0),
                v.stride(1),
                dout.stride(0),
                dout.stride(1),
            )
            bwd_dkdv[(triton.cdiv(max_seqlen, meta["BN"]), n_seq, k.shape[1])](
                q, k, v, dout, lse, delta, dk, dv, cu, *strides, H, scale, **meta
            )
            bwd_dq[(triton.cdiv(max_seqlen, meta["BM"]), n_seq, H)](
                q, k, v, dout, lse, delta, dq, cu, *strides, H, scale, **meta
            )
        return dq, dk, dv, None, None, None, None, None, None


def triton_flash_attention(
    q, k, v, cu_seqlens, max_seqlen, causal=True, window=None, scale=None, block: int | None = None
) -> torch.Tensor:
    """The `triton` backend. q (T, H, D), k (T, Hkv, D), v (T, Hkv, Dv) -> (T, H, Dv)."""
    H, D = q.shape[1], q.shape[2]
    if k.shape[1] == 0 or H % k.shape[1]:
        raise ValueError(f"triton flash attention: {H} query heads is not a multiple of {k.shape[1]} kv heads")
    scale = float(scale if scale is not None else D**-0.5)
    return TritonFlashFn.apply(q, k, v, cu_seqlens, int(max_seqlen), causal, int(window or 0), scale, block)
