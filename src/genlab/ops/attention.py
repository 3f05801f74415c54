"""Attention over a flat, packed token stream, with interchangeable backends.

Every backend takes the flash-attention varlen layout and returns the same thing:

    q (T, H, D), k (T, H_kv, D), v (T, H_kv, Dv), cu_seqlens (n_seq + 1,) int32, max_seqlen
    -> out (T, H, Dv)

Queries attend only to keys of their own sequence. `causal`: key j <= query i. `window = W`
(> 0): a query sees at most W keys *including itself*, i.e. allowed iff 0 <= i - j < W
(flash-attention's window_size=(W-1, 0)). A query that sees no key outputs zeros.

Backends: `naive` (materialised (T, T) scores; the reference) and `sdpa` (torch's fused
kernel, one call per run of equal-length sequences: on CPU this beat a block-diagonal mask
3x, see shared/reference; on CPU forward and backward call the flash kernel directly:
`_VarlenSDPA`). Later backends register themselves in BACKENDS.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from genlab.errors import GenlabError
from genlab.ops.flash import flash_attention
from genlab.ops.recompute import cheap
from genlab.ops.triton_flash import available as _triton_available


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def allowed_mask(cu_seqlens: torch.Tensor, T: int, causal: bool, window: int | None, device=None) -> torch.Tensor:
    """(T, T) bool: query i may attend key j."""
    device = device or cu_seqlens.device
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long().to(device)
    doc = torch.repeat_interleave(torch.arange(len(lens), device=device), lens)
    pos = torch.arange(T, device=device)
    m = doc[:, None] == doc[None, :]
    if causal:
        m &= pos[None, :] <= pos[:, None]
    if window:
        m &= (pos[:, None] - pos[None, :]) < window
        if not causal:
            m &= (pos[None, :] - pos[:, None]) < window
    return m


def naive_attention(q, k, v, cu_seqlens, max_seqlen, causal=True, window=None, scale=None):
    T, H, D = q.shape
    scale = scale if scale is not None else D**-0.5
    n_rep = H // k.shape[1]
    k, v = _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)
    scores = torch.einsum("ihd,jhd->hij", q, k) * scale  # (H, T, T)
    mask = allowed_mask(cu_seqlens, T, causal, window, q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)  # rows with no key: all -inf -> NaN -> 0
    return torch.einsum("hij,jhd->ihd", probs, v)


def _runs_of_equal_length(cu: list[int]) -> list[tuple[int, int, int]]:
    """Group consecutive sequences of equal length: (start token, n sequences, length)."""
    runs = []
    i = 0
    while i < len(cu) - 1:
        n = cu[i + 1] - cu[i]
        j = i + 1
        while j < len(cu) - 1 and cu[j + 1] - cu[j] == n:
            j += 1
        runs.append((cu[i], j - i, n))
        i = j
    return runs


def _window_mask(n: int, causal: bool, window: int, device) -> torch.Tensor:
    pos = torch.arange(n, device=device)
    diff = pos[:, None] - pos[None, :]
    m = diff < window
    m &= (diff >= 0) if causal else (-diff < window)
    return m


def sdpa_attention(q, k, v, cu_seqlens, max_seqlen, causal=True, window=None, scale=None):
    T, H, D = q.shape
    Hkv, Dv = k.shape[1], v.shape[-1]
    if q.device.type == "cpu" and Dv < D:
        # torch's CPU flash kernel needs one head dim for q, k and v; otherwise SDPA falls back to its
        # unfused math path (MLA, q/k 48 and v 32: 1.3-1.8x slower fwd+bwd; scripts/attention_matmul_vs_sdpa.py).
        # Zero-padded values change nothing.
        v = cheap(F.pad, v, (0, D - Dv))
        return cheap(_unpad, sdpa_attention(q, k, v, cu_seqlens, max_seqlen, causal, window, scale), Dv)
    cu = cu_seqlens.tolist()
    if _cpu_varlen_ok(q, k, v):
        runs = tuple(r for r in _runs_of_equal_length(cu) if r[2] > 0)  # (zero-length sequences: nothing)
        if CPU_VARLEN == "runs" or (CPU_VARLEN == "auto" and (len(runs) <= 2 or T >= RUN_TOKENS * len(runs))):
            return _VarlenSDPA.apply(q, k, v, runs, causal, window, scale)
        layout = _row_groups(cu, _group_capacity(cu, max_seqlen))
        return _RowGroupSDPA.apply(q, k, v, layout, causal, window, scale)
    outs = []
    for start, count, n in _runs_of_equal_length(cu):
        if n == 0:
            continue
        end = start + count * n
        # (count, n, H, D) -> (count, H, n, D): a view, no copy
        qs = q[start:end].view(count, n, H, D).transpose(1, 2)
        ks = k[start:end].view(count, n, Hkv, D).transpose(1, 2)
        vs = v[start:end].view(count, n, Hkv, Dv).transpose(1, 2)
        if window and window < n:
            mask = _window_mask(n, causal, window, q.device)
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale, enable_gqa=Hkv != H)
        else:
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=scale, enable_gqa=Hkv != H)
        outs.append(o)
    # back to (T, H, Dv): a copy, and SDPA keeps its own output for backward anyway, so under
    # selective checkpointing the copy is rebuilt from that instead of being kept too
    return cheap(_tokens_major, *outs)


_FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_CPU_BWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _cpu_varlen_ok(q, k, v) -> bool:
    """torch's CPU flash kernel can run these tensors directly (one head dim, float dtypes, CPU)."""
    return (
        q.device.type == "cpu"
        and q.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)
        and k.dtype == q.dtype == v.dtype
        and q.shape[-1] == k.shape[-1] == v.shape[-1]
        and q.shape[1] % k.shape[1] == 0
    )


def _additive_window_mask(n: int, causal: bool, window: int, q: torch.Tensor) -> torch.Tensor:
    """The window mask as the flash kernel takes it: 0 where allowed, -inf elsewhere, q's dtype."""
    m = _window_mask(n, causal, window, q.device)
    return torch.zeros(m.shape, dtype=q.dtype, device=q.device).masked_fill_(~m, float("-inf"))


def _run_views(x: torch.Tensor, start: int, count: int, n: int) -> torch.Tensor:
    """Tokens [start, start + count n) of a (T, h, d) stream as (count, h, n, d): a view, no copy."""
    return x[start : start + count * n].view(count, n, x.shape[1], x.shape[2]).transpose(1, 2)


class _VarlenSDPA(torch.autograd.Function):
    """Varlen attention on CPU with torch's fused flash kernel, one call per run of equal-length
    sequences, forward and backward.

    Calling F.scaled_dot_product_attention on slices of the stream (the generic path below) makes
    autograd's backward of every slice a zero-filled (T, H, D) tensor that is then summed with the
    others: per layer 3 x (number of runs) full-size fills and adds, which made a packed step of
    15 documents per 8 rows 0.84x the speed of 8 single-document rows. Here the forward writes each
    run's output into one (T, H, Dv) tensor and keeps the kernel's log-sum-exp; the backward calls
    the kernel's own backward per run on views and writes dq, dk, dv straight into their slices of
    three (T, h, D) gradients. Nothing full-size is made per run.
    """

    @staticmethod
    def forward(ctx, q, k, v, runs, causal, window, scale):
        T, H, _ = q.shape
        lses, masks = [], []
        out = None if len(runs) == 1 else q.new_empty(T, H, v.shape[-1])
        for start, count, n in runs:
            mask = _additive_window_mask(n, causal, window, q) if window and window < n else None
            o, lse = _FLASH_CPU(
                *(_run_views(x, start, count, n) for x in (q, k, v)),
                0.0,
                causal and mask is None,
                attn_mask=mask,
                scale=scale,
            )
            if out is None:  # one kernel call: its output, as (T, H, Dv), is the result (no copy)
                out = o.transpose(1, 2).reshape(T, H, v.shape[-1])
            else:
                _run_views(out, start, count, n).copy_(o)
            lses.append(lse)
            masks.append(mask)
        ctx.save_for_backward(q, k, v, out, *lses)
        ctx.runs, ctx.causal, ctx.scale, ctx.masks = runs, causal, scale, masks
        return out

    @staticmethod
    def backward(ctx, g):
        q, k, v, out, *lses = ctx.saved_tensors
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        for (start, count, n), lse, mask in zip(ctx.runs, lses, ctx.masks):
            views = [_run_views(x, start, count, n) for x in (g, q, k, v, out)]
            grads = _FLASH_CPU_BWD(*views, lse, 0.0, ctx.causal and mask is None, attn_mask=mask, scale=ctx.scale)
            for dst, src in zip((dq, dk, dv), grads):
                _run_views(dst, start, count, n).copy_(src)
        return dq, dk, dv, None, None, None, None


# How varlen attention runs on CPU with torch's flash kernel (sdpa backend):
#   runs: one call per run of equal-length sequences (fewest FLOPs: each document's own triangle)
#   rows: the sequences grouped, in order, into rows of a common capacity, all rows in ONE call with a
#         block-diagonal causal mask (the FLOPs of fixed rows of that length; one kernel call per layer)
#   auto: runs when there are at most 2 runs (fixed rows, long documents cut into full rows) or the runs
#         average at least RUN_TOKENS tokens, else rows.
# Measured in docs/benchmarks.md (`genlab bench train` and the layout table): on a quiet machine `runs` is
# 8% faster than `rows` for a whole lm-bench step (21 documents, 1 and 2 threads) and 0.4-0.8x its
# attention time down to ~20 tokens per run; at ~10 tokens per run the per-call cost wins (1.6x).
# With 2 threads on an oversubscribed machine the many small calls of `runs` stall on every preempted
# thread (a step measured 0.68x fixed rows there); `rows` costs what fixed rows cost (set CPU_VARLEN).
CPU_VARLEN = "auto"
RUN_TOKENS = 16


def _group_capacity(cu: list[int], max_seqlen: int) -> int:
    """Row capacity for the `rows` layout: the longest sequence, rounded up to a multiple of 64 (the
    kernel's block), at least 64."""
    longest = max((b - a for a, b in zip(cu[:-1], cu[1:])), default=1)
    return max(64, -(-max(longest, 1) // 64) * 64)


class _RowLayout:
    """Sequences (cu) placed in order into G rows of capacity C: `dest` (T,) is each token's slot in the
    (G * C) padded grid, `dense` says the grid is the stream itself (every row exactly full), `doc` (G, C)
    the sequence of each slot (-1 = padding)."""

    def __init__(self, cu: list[int], C: int):
        rows, fill = [[]], 0
        for a, b in zip(cu[:-1], cu[1:]):
            n = b - a
            if n == 0:
                continue
            if fill + n > C:
                rows.append([])
                fill = 0
            rows[-1].append((a, n))
            fill += n
        self.G, self.C, self.T = len(rows), C, cu[-1]
        doc = torch.full((self.G, C), -1, dtype=torch.int64)
        dest = torch.empty(self.T, dtype=torch.int64)
        k = 0
        for g, row in enumerate(rows):
            o = 0
            for a, n in row:
                doc[g, o : o + n] = k
                dest[a : a + n] = torch.arange(g * C + o, g * C + o + n)
                k, o = k + 1, o + n
        self.doc, self.dest = doc, dest
        self.dense = self.G * C == self.T  # no padding: the stream is the grid, views only
        self.key = (tuple(cu), C)

    def mask(self, causal: bool, window: int | None, dtype) -> torch.Tensor:
        """(G, 1, C, C) additive mask: 0 where a query may attend a key (same sequence, causal, window),
        -inf elsewhere; a padding slot sees itself only (no all-masked row, no NaN)."""
        d = self.doc
        pos = torch.arange(self.C)
        diff = pos[:, None] - pos[None, :]
        ok = (d[:, :, None] == d[:, None, :]) & (d[:, :, None] >= 0)
        if causal:
            ok &= diff >= 0
        if window:
            ok &= (diff < window) & (diff > -window)
        ok |= torch.eye(self.C, dtype=torch.bool)
        return torch.zeros(ok.shape, dtype=dtype).masked_fill_(~ok, float("-inf")).unsqueeze(1)


_LAYOUT_CACHE: dict = {}  # the last layout and its masks: every layer of a step sees the same batch


def _row_groups(cu: list[int], C: int) -> _RowLayout:
    key = (tuple(cu), C)
    hit = _LAYOUT_CACHE.get("layout")
    if hit is None or hit.key != key:
        hit = _RowLayout(cu, C)
        _LAYOUT_CACHE.clear()
        _LAYOUT_CACHE["layout"] = hit
    return hit


def _cached_mask(layout: _RowLayout, causal: bool, window, dtype) -> torch.Tensor:
    key = ("mask", layout.key, causal, window, dtype)
    m = _LAYOUT_CACHE.get(key)
    if m is None:
        m = _LAYOUT_CACHE[key] = layout.mask(causal, window, dtype)
    return m


def _to_grid(x: torch.Tensor, lay: _RowLayout) -> torch.Tensor:
    """(T, h, d) stream -> (G, h, C, d) rows (a view when dense, else a zero-padded copy)."""
    if lay.dense:
        grid = x
    else:
        grid = x.new_zeros(lay.G * lay.C, x.shape[1], x.shape[2]).index_copy_(0, lay.dest, x)
    return grid.view(lay.G, lay.C, x.shape[1], x.shape[2]).transpose(1, 2)


def _from_grid(o: torch.Tensor, lay: _RowLayout) -> torch.Tensor:
    """(G, h, C, d) kernel result -> (T, h, d) stream (its (G, C, h, d) memory as is when dense)."""
    flat = o.transpose(1, 2).reshape(lay.G * lay.C, o.shape[1], o.shape[3])
    return flat if lay.dense else flat.index_select(0, lay.dest)


class _RowGroupSDPA(torch.autograd.Function):
    """Varlen attention on CPU as ONE flash-kernel call: sequences grouped in order into rows of
    capacity C, a block-diagonal causal mask per row (cached for every layer of the batch), causal
    block skipping kept (is_causal together with the mask). Backward: the kernel's own backward."""

    @staticmethod
    def forward(ctx, q, k, v, lay, causal, window, scale):
        mask = _cached_mask(lay, causal, window, q.dtype)
        qg, kg, vg = _to_grid(q, lay), _to_grid(k, lay), _to_grid(v, lay)
        o, lse = _FLASH_CPU(qg, kg, vg, 0.0, causal, attn_mask=mask, scale=scale)
        ctx.save_for_backward(qg, kg, vg, o, lse, mask)
        ctx.lay, ctx.causal, ctx.scale = lay, causal, scale
        return _from_grid(o, lay)

    @staticmethod
    def backward(ctx, g):
        qg, kg, vg, o, lse, mask = ctx.saved_tensors
        lay = ctx.lay
        gg = _to_grid(g.contiguous() if lay.dense else g, lay)
        dq, dk, dv = _FLASH_CPU_BWD(gg, qg, kg, vg, o, lse, 0.0, ctx.causal, attn_mask=mask, scale=ctx.scale)
        return _from_grid(dq, lay), _from_grid(dk, lay), _from_grid(dv, lay), None, None, None, None


def _tokens_major(*outs: torch.Tensor) -> torch.Tensor:
    """SDPA outputs (count, H, n, Dv) of consecutive runs of sequences -> one (T, H, Dv) tensor."""
    flat = [o.transpose(1, 2).reshape(-1, o.shape[1], o.shape[3]) for o in outs]
    return flat[0] if len(flat) == 1 else torch.cat(flat)


def _unpad(o: torch.Tensor, dv: int) -> torch.Tensor:
    return o[..., :dv].contiguous()


AttentionFn = Callable[..., torch.Tensor]
BACKENDS: dict[str, AttentionFn] = {"naive": naive_attention, "sdpa": sdpa_attention}


def _triton_attention(q, k, v, cu_seqlens, max_seqlen, causal=True, window=None, scale=None):
    from genlab.ops.triton_flash import triton_flash_attention  # imports triton on first use only

    return triton_flash_attention(q, k, v, cu_seqlens, max_seqlen, causal=causal, window=window, scale=scale)


def _flash_attn_varlen():
    """flash-attn's `flash_attn_varlen_func` when the package is installed, else None (imported once)."""
    global _FLASH_ATTN
    if _FLASH_ATTN is False:
        try:
            from flash_attn import flash_attn_varlen_func
        except Exception:  # not installed, or built for another torch / CUDA
            flash_attn_varlen_func = None
        _FLASH_ATTN = flash_attn_varlen_func
    return _FLASH_ATTN


_FLASH_ATTN = False  # not looked up yet


def flash_attn_usable(q, k, v) -> bool:
    """flash-attn's varlen kernel takes these tensors: CUDA, fp16/bf16, one head dim (<= 256, a multiple
    of 8) for q, k and v, and the package is installed."""
    D = q.shape[-1]
    return (
        q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and k.dtype == q.dtype
        and v.dtype == q.dtype
        and k.shape[-1] == D == v.shape[-1]
        and D <= 256
        and D % 8 == 0
        and _flash_attn_varlen() is not None
    )


def flash_attn_attention(q, k, v, cu_seqlens, max_seqlen, causal=True, window=None, scale=None):
    """flash-attn's varlen kernel on the packed stream (cu_seqlens as they are; GQA native). window W =
    flash-attn's window_size (W - 1, 0) causal, (W - 1, W - 1) bidirectional."""
    fn = _flash_attn_varlen()
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    w = (-1, -1) if not window else (window - 1, 0 if causal else window - 1)
    return fn(q, k, v, cu, cu, int(max_seqlen), int(max_seqlen), softmax_scale=scale, causal=causal, window_size=w)


def _auto_attention(q, k, v, cu_seqlens, max_seqlen, causal=True, window=None, scale=None):
    """A validated kernel: flash-attn's varlen kernel on CUDA when installed and the tensors suit it,
    torch's SDPA per document otherwise. genlab's Triton kernel is opt-in (`model.attn_backend = triton`)
    until scripts/gpu_bench.sh has checked it on a GPU (docs/gpu_bench_results.md)."""
    fn = flash_attn_attention if flash_attn_usable(q, k, v) else sdpa_attention
    return fn(q, k, v, cu_seqlens, max_seqlen, causal=causal, window=window, scale=scale)


# flash: genlab.ops.flash (tiled online softmax in torch); triton: genlab.ops.triton_flash (listed only where
# it can run: CUDA + triton, or TRITON_INTERPRET=1; opt-in, never picked by auto); auto: per call
BACKENDS.update(flash=flash_attention, auto=_auto_attention)
if _triton_available():
    BACKENDS["triton"] = _triton_attention


def pick_backend(name: str, device: torch.device | str = "cpu") -> str:
    if name == "auto":
        return "auto"  # decided per call: flash-attn's varlen kernel on CUDA when installed, else sdpa
    if name == "triton":
        if not _triton_available():
            raise GenlabError(
                "attention backend 'triton' needs a CUDA GPU and the triton package "
                "(pip install triton); use auto, flash, sdpa or naive"
            )
    if name not in BACKENDS:
        raise GenlabError(f"unknown attention backend {name!r}; available: auto, {', '.join(BACKENDS)}")
    return name


# torch.compile (train.compile) leaves attention to run eagerly: its sequence boundaries are data (cu_seqlens
# read on the host), which a traced graph would specialise on and recompile for at every new batch layout
@torch.compiler.disable
def attention(
    q, k, v, cu_seqlens, max_seqlen, causal=True, window=None, scale=None, backend: str = "sdpa"
) -> torch.Tensor:
    return BACKENDS[backend](q, k, v, cu_seqlens, max_seqlen, causal=causal, window=window, scale=scale)
