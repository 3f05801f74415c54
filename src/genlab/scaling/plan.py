"""`genlab plan`: compute-optimal model size, data, batch, learning rate and schedule for a budget.

Allocation from the chosen law (laws.LAWS), hyper-parameters from DeepSeek LLM Eq. 1 (the only
published law for them), the multi-step schedule of DeepSeek LLM, and a concrete genlab model
shape (n_layer, d_model, n_head) whose FLOPs per token hit the target.
"""

from __future__ import annotations

import copy
import dataclasses
import math

from genlab.errors import GenlabError
from genlab.families.lm.args import LMArgs
from genlab.families.lm.transformer import ffn_width
from genlab.scaling import laws
from genlab.train.flops import LayerShapes, attention_shapes, flops_from_layers, flops_per_token, swiglu_shapes

DEFAULT_SEQ_LEN = 4096  # DeepSeek LLM's context
DEFAULT_VOCAB = 102400  # DeepSeek LLM's vocabulary
ASPECT = 64.0  # preferred d_model / n_layer (DeepSeek LLM's models span ~43 to ~136)
# d_model candidates: multiples of 32 up to 1024, then of 128 (whole 128-wide heads)
WIDTHS = list(range(32, 1024, 32)) + list(range(1024, 65536 + 1, 128))
ASPECT_WEIGHT = 0.1  # a shape's score: |log(size / target)| + ASPECT_WEIGHT * |log(aspect / ASPECT)|


def resolve_budget(
    law: laws.AllocationLaw, C: float | None, D: float | None, size: float | None
) -> tuple[float, float, float]:
    """Any one or two of (C, D, size) -> all three with C = size * D; one alone goes through the law."""
    for name, v in (("--compute", C), ("--tokens", D), ("--model-flops", size)):
        if v is not None and not (v > 0 and math.isfinite(v)):
            raise GenlabError(f"{name} {v!r} must be a positive finite number")
    given = sum(v is not None for v in (C, D, size))
    if given == 0:
        raise GenlabError("give --compute C, --tokens D or --model-flops M (or two of them)")
    if given == 3:
        raise GenlabError("give at most two of --compute, --tokens, --model-flops (C = M * D fixes the third)")
    if C is not None and D is not None:
        return C, D, C / D
    if C is not None and size is not None:
        return C, C / size, size
    if D is not None and size is not None:
        return size * D, D, size
    if C is not None:
        size, D = law.split(C)
        return C, D, size
    if D is not None:
        C = law.budget_for_tokens(D)
        return C, D, C / D
    C = law.budget_for_size(size)
    return C, C / size, size


def _measure(fl: dict, measure: str) -> float:
    return float(fl[measure])


def _n_head(d: int) -> int:
    return d // (128 if d % 128 == 0 and d >= 2048 else 64 if d % 64 == 0 and d >= 128 else 32)


def _group(base: LMArgs) -> int:
    """Query heads per KV head of the base config (1 = multi-head attention)."""
    return base.n_head // base.n_kv_head if base.n_kv_head else 1


def _shape_cfg(base: LMArgs, n_layer: int, d: int) -> LMArgs:
    n_head, group = _n_head(d), _group(base)
    return dataclasses.replace(
        base,
        arch="transformer",
        n_layer=n_layer,
        d_model=d,
        n_head=n_head,
        n_kv_head=n_head // group if group > 1 else 0,
        ffn_hidden=0,
    )


def find_shape(
    target: float, measure: str, base: LMArgs, vocab: int, seq_len: int, aspect: float = ASPECT
) -> tuple[LMArgs, dict]:
    """The genlab Transformer shape whose `measure` ("M" or "6N2") per token is nearest the target.

    d_model runs over WIDTHS, n_layer over 1..256; the shape with the lowest
    |log(size / target)| + ASPECT_WEIGHT * |log((d_model / n_layer) / aspect)| wins. Large targets
    have many shapes within a fraction of a percent, so the aspect ratio decides among them; tiny
    ones (d_model 32 steps are coarse there) trade a few percent of size for a sensible shape."""

    layers: dict[int, LayerShapes] = {}  # one layer's shapes depend on d_model only

    def size(n_layer: int, d: int) -> float:
        if d not in layers:
            cfg = _shape_cfg(base, 1, d)
            layers[d] = attention_shapes(d, cfg.n_head, cfg.n_kv_head or cfg.n_head, d // cfg.n_head) + swiglu_shapes(
                d, ffn_width(cfg)
            )
        one = layers[d]  # n_layer equal layers sum to one layer n_layer times as large
        stack = LayerShapes(one.matmul_params * n_layer, one.attn_qk * n_layer, one.attn_v * n_layer)
        return _measure(flops_from_layers([stack], d, vocab, seq_len), measure)

    widths = [d for d in WIDTHS if _n_head(d) % _group(base) == 0]  # whole KV groups only
    best = None
    for n_layer in range(1, 257):
        lo, hi = 0, len(widths) - 1  # the first width whose size reaches the target
        while lo < hi:
            mid = (lo + hi) // 2
            if size(n_layer, widths[mid]) >= target:
                hi = mid
            else:
                lo = mid + 1
        for d in {widths[max(0, lo - 1)], widths[lo]}:
            score = abs(math.log(size(n_layer, d) / target)) + ASPECT_WEIGHT * abs(math.log(d / n_layer / aspect))
            if best is None or score < best[0]:
                best = (score, n_layer, d)
        if lo == 0 and size(n_layer, widths[0]) > target:
            break  # deeper models only overshoot more from here on
    _, n_layer, d = best
    cfg = _shape_cfg(base, n_layer, d)
    return cfg, flops_per_token(cfg, vocab, seq_len)


def plan(
    C: float | None = None,
    D: float | None = None,
    size: float | None = None,
    law: str = "deepseek",
    seq_len: int = DEFAULT_SEQ_LEN,
    vocab: int = DEFAULT_VOCAB,
    base: LMArgs | None = None,
    micro_batch: int = 16,
    preset: str = "",
    compare: bool = True,
    aspect: float = ASPECT,
) -> dict:
    """Everything `genlab plan` prints, as a JSON-able dict."""
    if seq_len < 2 or vocab < 2 or micro_batch < 1 or not aspect > 0:
        raise GenlabError(
            f"--seq-len ({seq_len}) and --vocab ({vocab}) must be >= 2, --micro-batch "
            f"({micro_batch}) >= 1 and --aspect ({aspect}) > 0"
        )
    L = laws.get_law(law)
    C, D, size = resolve_budget(L, C, D, size)
    base = copy.deepcopy(base) if base is not None else LMArgs()
    cfg, fl = find_shape(size, L.size_measure, base, vocab, seq_len, aspect)
    shape_size = _measure(fl, L.size_measure)
    shape_tokens = C / shape_size  # the budget is the constraint: the shape's tokens keep C fixed

    lr = laws.eta_opt(C)
    batch_tokens = laws.batch_opt_tokens(C)
    batch_seqs = max(1, round(batch_tokens / seq_len))  # whole sequences, as the paper rounds
    accum = math.ceil(batch_seqs / micro_batch)  # fewest micro-batches of at most micro_batch rows
    rows = max(1, round(batch_seqs / accum))
    eff_seqs = rows * accum
    steps = max(1, round(shape_tokens / (eff_seqs * seq_len)))
    warmup = min(laws.DS_WARMUP_STEPS, max(1, steps // 10))
    stages = [{"step": 0, "tokens": 0, "lr_factor": 1.0, "lr": lr}]
    stages += [
        {"step": s, "tokens": s * eff_seqs * seq_len, "lr_factor": f, "lr": lr * f}
        for s, f in laws.multistep_breakpoints(steps)
    ]
    sets = {
        "model.arch": "transformer",
        "model.n_layer": cfg.n_layer,
        "model.d_model": cfg.d_model,
        "model.n_head": cfg.n_head,
        "model.n_kv_head": cfg.n_kv_head,
        "model.ffn_hidden": 0,
        "data.packing_length": seq_len,
        "train.batch_rows": rows,
        "train.grad_accum": accum,
        "train.lr": float(f"{lr:.4g}"),
        "train.steps": steps,
        "train.warmup_steps": warmup,
        "train.schedule": "multistep",
    }
    cmd = (
        "genlab train" + (f" --preset {preset}" if preset else "") + "".join(f" --set {k}={v}" for k, v in sets.items())
    )
    out = {
        "law": L.name,
        "law_source": L.source,
        "size_measure": L.size_measure,
        "compute": C,
        "size_opt": size,
        "tokens_opt": D,
        "seq_len": seq_len,
        "vocab": vocab,
        "lr": lr,
        "batch_tokens": batch_tokens,
        "batch_seqs": batch_seqs,
        "micro_batch": rows,
        "grad_accum": accum,
        "batch_seqs_genlab": eff_seqs,
        "shape": {
            "n_layer": cfg.n_layer,
            "d_model": cfg.d_model,
            "n_head": cfg.n_head,
            "n_kv_head": cfg.n_kv_head or cfg.n_head,
            "ffn_hidden": ffn_width(cfg),
        },
        "shape_flops": {k: fl[k] for k in ("M", "6N1", "6N2", "N1", "N2")},
        "shape_size_error": shape_size / size - 1,
        "tokens": shape_tokens,
        "tokens_per_param": shape_tokens / fl["N2"],
        "steps": steps,
        "warmup_steps": warmup,
        "schedule": stages,
        "train_command": cmd,
        "warnings": laws.warnings_for(C, L),
    }
    if compare:
        out["compare"] = {}
        for name in laws.LAWS:
            other = laws.LAWS[name]
            s_opt, d_opt = other.split(C)
            ocfg, ofl = find_shape(s_opt, other.size_measure, base, vocab, seq_len, aspect)
            out["compare"][name] = {
                "size_measure": other.size_measure,
                "size_opt": s_opt,
                "tokens_opt": d_opt,
                "n_layer": ocfg.n_layer,
                "d_model": ocfg.d_model,
                "M": ofl["M"],
                "N2": ofl["N2"],
                "tokens_per_param": d_opt / ofl["N2"],
            }
    return out


def format_plan(p: dict) -> str:
    sh = p["shape"]
    lines = [
        f"law          {p['law']}: {p['law_source']}",
        f"compute      C = {p['compute']:.4g} FLOPs",
        f"allocation   {p['size_measure']}_opt = {p['size_opt']:.4g} FLOPs/token, D_opt = {p['tokens_opt']:.4g} tokens",
        f"model        n_layer {sh['n_layer']}, d_model {sh['d_model']}, n_head {sh['n_head']} "
        f"(kv {sh['n_kv_head']}), SwiGLU {sh['ffn_hidden']}",
        f"  per token  M {p['shape_flops']['M']:.4g}, 6N1 {p['shape_flops']['6N1']:.4g}, "
        f"6N2 {p['shape_flops']['6N2']:.4g}  ({p['shape_size_error']:+.2%} from the target)",
        f"  params     N1 {p['shape_flops']['N1']:.4g} (non-embedding), N2 {p['shape_flops']['N2']:.4g} "
        f"(+ head); {p['tokens_per_param']:.1f} tokens/param",
        f"data         {p['tokens']:.4g} tokens at l_seq {p['seq_len']} (C / this shape's {p['size_measure']})",
        f"batch        {p['batch_tokens']:.4g} tokens = {p['batch_seqs']} sequences "
        f"(genlab: {p['micro_batch']} rows x {p['grad_accum']} accumulation = {p['batch_seqs_genlab']})",
        f"peak lr      {p['lr']:.4g}",
        f"steps        {p['steps']:,} (warmup {p['warmup_steps']:,})",
        "schedule     "
        + "; ".join(
            f"step {s['step']:,} ({s['tokens']:.3g} tokens): lr x{s['lr_factor']:g} = {s['lr']:.3g}"
            for s in p["schedule"]
        ),
    ]
    if "compare" in p:
        lines.append(
            "compare      law          size_opt        D_opt     n_layer x d_model           M"
            "          N2  tokens/param"
        )
        for name, c in p["compare"].items():
            lines.append(
                f"             {name:<10} {c['size_opt']:>10.3g} ({c['size_measure']:>3}) {c['tokens_opt']:>9.3g}"
                f"  {c['n_layer']:>5} x {c['d_model']:<6} {c['M']:>11.3g} {c['N2']:>11.3g}"
                f"  {c['tokens_per_param']:>12.1f}"
            )
    lines.append(f"command      {p['train_command']}")
    for w in p["warnings"]:
        lines.append(f"note         {w}")
    return "\n".join(lines)
