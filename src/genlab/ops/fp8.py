"""FP8 training after DeepSeek-V3 (§3.3): block-scaled E4M3 GEMMs with fp32 master weights.

Quantization (E4M3, largest finite value 448; one fp32 scale per group, scale = amax / 448, so the
group's largest magnitude maps to 448; dequantized value = fp8 value * scale):
    activations / gradients   1 x 128 tiles along the GEMM's inner dimension   scale (rows, ceil(K/128))
    weights                   128 x 128 blocks                                 scale (ceil(N/128), ceil(K/128))
Edge tiles/blocks are zero-padded for the amax. An all-zero group gets a tiny scale and stays zero.

FP8Linear: the three GEMMs of a Linear take quantized operands (y = x W^T + b):
    Fprop   y  = Q1x128(x)  . Q128x128(W)^T             inner dim: in_features
    Dgrad   dx = Q1x128(dy) . Q128x128(W)               inner dim: out_features (same W blocks)
    Wgrad   dW = Q1x128(dy^T) . Q1x128(x^T)^T           inner dim: tokens (re-grouped along tokens)
with fp32 outputs; the activation is saved for backward in FP8 (1 byte per value) and the weight
gradient lands on the fp32 master weight. On CPU (and wherever real FP8 GEMMs are unavailable) the
GEMM is emulated: quantize, dequantize, fp32 matmul, so the numerics are testable anywhere. On CUDA
it tries torch._scaled_mm with the block scales (supported by recent torch on Hopper), else with
row-wise scales (one scale per row over the whole inner dimension: coarser than 1 x 128 tiles, so a
single outlier costs a whole row precision), else it emulates. The choice is made per call site and
shape (`GemmKey`: which GEMM (fprop / dgrad / wgrad / expert ...), N, K and whether M is a multiple of
16): a refusal or a mismatch at one site never downgrades another. Each site's first call is checked
against the emulation and logged (logger "genlab.fp8": the mode it settled on, and why a faster one
was dropped). `gemm_mode()` says what the last GEMM used, `gemm_modes()` what every site uses.

convert_to_fp8(model) turns eligible nn.Linear modules into FP8Linear in place (same parameters,
same state_dict), and switches DeepSeekMoE's routed experts (stacked weights, not Linears) to the
same three FP8 GEMMs per expert (models.deepseek.moe.fp8_grouped_experts). Kept in high precision:
embeddings, the output head, MoE router gates, norms and attention's core (scores/softmax).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
TILE = 128
AMAX_FLOOR = 1e-12  # an all-zero group: avoid 0/0 (DeepSeek's inference kernel floors amax at 1e-4)
KEEP_HIGH_PRECISION = ("head", "lm_head", "gate", "router")  # module names (last part) never converted

_GEMM = {"mode": None}  # "emulated" | "blockwise" | "rowwise": what the last GEMM used
log = logging.getLogger("genlab.fp8")


def _pad_to(x: torch.Tensor, dim: int, mult: int) -> torch.Tensor:
    extra = (-x.shape[dim]) % mult
    if not extra:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [0, extra]
    return F.pad(x, pad)


def quantize_tiles(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) -> fp8 (M, K), scale (M, ceil(K/128)) fp32: one scale per 1 x 128 tile."""
    M, K = x.shape
    xp = _pad_to(x.float(), 1, TILE).view(M, -1, TILE)  # (M, nK, 128)
    scale = xp.abs().amax(-1).clamp_min(AMAX_FLOOR) / E4M3_MAX  # (M, nK)
    q = (xp / scale.unsqueeze(-1)).to(E4M3).view(M, -1)[:, :K]
    return q, scale


def quantize_blocks(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w (N, K) -> fp8 (N, K), scale (ceil(N/128), ceil(K/128)) fp32: one scale per 128 x 128 block."""
    N, K = w.shape
    wp = _pad_to(_pad_to(w.float(), 0, TILE), 1, TILE)
    nb, kb = wp.shape[0] // TILE, wp.shape[1] // TILE
    blocks = wp.view(nb, TILE, kb, TILE)
    scale = blocks.abs().amax(dim=(1, 3)).clamp_min(AMAX_FLOOR) / E4M3_MAX  # (nb, kb)
    q = (blocks / scale[:, None, :, None]).to(E4M3).view(nb * TILE, kb * TILE)[:N, :K]
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp8 (R, K) with tile scales (R, nK) or block scales (ceil(R/128), nK) -> fp32 (R, K)."""
    R, K = q.shape
    row_rep = 1 if scale.shape[0] == R else TILE
    s = scale.repeat_interleave(row_rep, 0)[:R].repeat_interleave(TILE, 1)[:, :K]
    return q.float() * s


def _emulated(aq, a_s, bq, b_s) -> torch.Tensor:
    return dequantize(aq, a_s) @ dequantize(bq, b_s).t()


def _blockwise(aq, a_s, bq, b_s) -> torch.Tensor:
    # a (M, K) with 1x128 tile scales (M, K/128), passed outer-dimension-major; b enters as (K, N)
    # column-major, so its scales (N or N/128, K/128) enter transposed. UNVERIFIED on a GPU here: the
    # first call is checked against the emulation and any refusal or mismatch falls back to row-wise.
    sa = a_s.t().contiguous().t()
    return torch._scaled_mm(aq, bq.t(), scale_a=sa, scale_b=b_s.t(), out_dtype=torch.float32)


def _rowwise(aq, a_s, bq, b_s) -> torch.Tensor:
    # one scale per row of a and per column of b over the whole inner dimension (re-quantized)
    a, b = dequantize(aq, a_s), dequantize(bq, b_s)
    sa = a.abs().amax(1, keepdim=True).clamp_min(AMAX_FLOOR) / E4M3_MAX  # (M, 1)
    sb = b.abs().amax(1, keepdim=True).clamp_min(AMAX_FLOOR) / E4M3_MAX  # (N, 1)
    return torch._scaled_mm(
        (a / sa).to(E4M3), (b / sb).to(E4M3).t(), scale_a=sa, scale_b=sb.t(), out_dtype=torch.float32
    )


_CUDA_ORDER = ("blockwise", "rowwise")  # tried in turn on CUDA, per call site and shape (GemmKey)
_CUDA_FNS = {"blockwise": _blockwise, "rowwise": _rowwise}
# devices whose tensors try the real FP8 GEMMs. Tests add "cpu": this torch's CPU _scaled_mm takes
# row-wise (not block) scales, so the selection and fallback path runs here exactly as on a GPU.
REAL_GEMM_DEVICES = {"cuda"}


class GemmKey(NamedTuple):
    """What a mode choice holds for: one call site with one weight shape. The token count changes every
    varlen batch, so only its alignment to 16 is part of the key (kernels refuse unaligned shapes).
    `shape` is the GEMM's two weight-side dimensions: (N, K) for fprop / dgrad (tokens = M), (M, N)
    of the output for wgrad (tokens = the inner dimension)."""

    site: str
    device: str
    shape: tuple[int, int]
    tokens_aligned: bool


def _key(site: str, aq: torch.Tensor, bq: torch.Tensor) -> GemmKey:
    if site == "wgrad":
        shape, tokens = (int(aq.shape[0]), int(bq.shape[0])), int(aq.shape[1])
    else:
        shape, tokens = (int(bq.shape[0]), int(aq.shape[1])), int(aq.shape[0])
    return GemmKey(site, aq.device.type, shape, tokens % 16 == 0)


# per key: the modes still to try (the first is in use once `verified` holds the key)
_SITE_MODES: dict[GemmKey, list[str]] = {}
_VERIFIED: set[GemmKey] = set()


def fp8_gemm(aq, a_s, bq, b_s, site: str = "gemm") -> torch.Tensor:
    """(M, K) x (N, K) quantized operands -> fp32 (M, N) = deq(a) @ deq(b)^T.

    `site` names the caller's GEMM (fprop, dgrad, wgrad, or any other name, whose tokens are M): a
    real-FP8 mode that fails or disagrees with the emulation is dropped for that site and shape only."""
    if aq.device.type in REAL_GEMM_DEVICES:
        key = _key(site, aq, bq)
        modes = _SITE_MODES.setdefault(key, list(_CUDA_ORDER))
        while modes:
            mode = modes[0]
            try:
                out = _CUDA_FNS[mode](aq, a_s, bq, b_s)
                if key not in _VERIFIED:  # first use: must agree with the emulation (fp32 accumulation order)
                    ref = _emulated(aq, a_s, bq, b_s)
                    tol = 1e-3 if mode == "blockwise" else 0.1
                    if (out - ref).norm() > tol * ref.norm().clamp_min(1e-30):
                        raise ValueError(f"{mode} _scaled_mm disagrees with the emulation")
                    _VERIFIED.add(key)
                    log.info("fp8 GEMM %s: %s", _describe(key), mode)
                _GEMM["mode"] = mode
                return out
            except (RuntimeError, TypeError, ValueError, AttributeError) as e:
                modes.pop(0)
                nxt = modes[0] if modes else "emulated"
                log.warning("fp8 GEMM %s: %s failed (%s); using %s", _describe(key), mode, _first_line(e), nxt)
                if not modes:
                    log.info("fp8 GEMM %s: emulated", _describe(key))
    _GEMM["mode"] = "emulated"
    return _emulated(aq, a_s, bq, b_s)


def _describe(key: GemmKey) -> str:
    aligned = "" if key.tokens_aligned else ", tokens not a multiple of 16"
    return f"{key.site} on {key.device}, {key.shape[0]} x {key.shape[1]}{aligned}"


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


def gemm_mode() -> str | None:
    """What the last FP8 GEMM used: emulated | blockwise | rowwise (None before the first)."""
    return _GEMM["mode"]


def gemm_modes() -> dict[GemmKey, str]:
    """The mode of every call site and shape that has run a real-FP8 attempt (emulated where all failed)."""
    return {k: (v[0] if v else "emulated") for k, v in _SITE_MODES.items() if k in _VERIFIED or not v}


def reset_gemm_modes() -> None:
    """Forget every site's choice (tests; a new device)."""
    _SITE_MODES.clear()
    _VERIFIED.clear()
    _GEMM["mode"] = None


class FP8LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        """x (M, K), weight (N, K) fp32 master -> y (M, N) in x's dtype."""
        xq, xs = quantize_tiles(x)
        wq, ws = quantize_blocks(weight)
        y = fp8_gemm(xq, xs, wq, ws, site="fprop")
        ctx.save_for_backward(xq, xs, wq, ws)  # the activation kept in FP8
        ctx.dtypes = (x.dtype, weight.dtype)
        # a fresh tensor, not the GEMM output: callers may add into it in place (residual .add_), which a
        # selective-checkpoint cache of the GEMM output must not see
        return y.to(x.dtype, copy=True)

    @staticmethod
    def backward(ctx, gy):
        xq, xs, wq, ws = ctx.saved_tensors
        x_dtype, w_dtype = ctx.dtypes
        gy = gy.float()
        dx = dw = None
        if ctx.needs_input_grad[0]:  # Dgrad: inner dim N; W's 128x128 blocks serve W^T as well
            gq, gs = quantize_tiles(gy)
            dx = fp8_gemm(gq, gs, wq.t().contiguous(), ws.t().contiguous(), site="dgrad").to(x_dtype)
        if ctx.needs_input_grad[1]:  # Wgrad: inner dim = tokens; both operands re-grouped along tokens
            gtq, gts = quantize_tiles(gy.t())  # (N, M)
            xtq, xts = quantize_tiles(dequantize(xq, xs).t())  # (K, M)
            dw = fp8_gemm(gtq, gts, xtq, xts, site="wgrad").to(w_dtype)
        return dx, dw


class FP8Linear(nn.Linear):
    """nn.Linear whose GEMMs run in block-scaled E4M3 (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = FP8LinearFn.apply(x.reshape(-1, shape[-1]), self.weight)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)


def convert_to_fp8(model: nn.Module) -> list[str]:
    """Turn every eligible nn.Linear into FP8Linear in place; returns the converted module names."""
    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    done = []
    for name, mod in model.named_modules():
        if type(mod) is not nn.Linear:
            continue
        if name.rsplit(".", 1)[-1] in KEEP_HIGH_PRECISION or id(mod.weight) in tied:
            continue
        mod.__class__ = FP8Linear
        done.append(name)
    for name, mod in model.named_modules():
        if hasattr(mod, "fp8_experts"):  # DeepSeekMoE: routed experts' grouped GEMMs
            mod.fp8_experts = True
            done.append(f"{name}.experts")
    return done


def quantization_error(w: torch.Tensor) -> dict[str, float]:
    """Relative errors of the two quantizers on one tensor (for `genlab bench fp8`)."""
    w = w.detach().float().reshape(-1, w.shape[-1])
    out = {}
    for kind, (q, s) in (("block", quantize_blocks(w)), ("tile", quantize_tiles(w))):
        err = dequantize(q, s) - w
        out[f"{kind}_rel_rms"] = float(err.norm() / w.norm().clamp_min(1e-30))
        out[f"{kind}_max_rel"] = float((err.abs() / w.abs().clamp_min(1e-30))[w != 0].max()) if (w != 0).any() else 0.0
    return out
