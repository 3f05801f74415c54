"""genlab bench fp8: DeepSeek-V3 FP8 recipe (emulated on CPU) against fp32 on a tiny MoE model.

Reports per-layer quantization error of the weights (128x128 blocks) and of each Linear's input
activations (1x128 tiles), and the training loss curve fp8 vs fp32 from the same initial weights and
the same data. Data: a fixed random bigram source (entropy known, so the loss has a floor and a 2%
gap is meaningful, unlike a memorised corpus whose loss runs to ~0).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from genlab.bench.common import machine_info, print_table
from genlab.config import apply_overrides, preset
from genlab.families import build_lm
from genlab.ops.fp8 import FP8Linear, convert_to_fp8, quantization_error

VOCAB = 64
TINY = [
    "model.n_layer=2",
    "model.d_model=64",
    "model.n_head=2",
    "model.q_lora_rank=0",
    "model.kv_lora_rank=16",
    "model.qk_nope_head_dim=16",
    "model.qk_rope_head_dim=8",
    "model.v_head_dim=16",
    "model.n_routed_experts=8",
    "model.num_experts_per_tok=2",
    "model.n_group=1",
    "model.topk_group=1",
    "model.moe_intermediate_size=32",
    "model.ffn_hidden=128",
    "model.mtp_depth=0",
]


def tiny_moe(overrides=TINY, seed: int = 0):
    """The deepseek-tiny preset (MLA + MoE), shrunk by `overrides`."""
    cfg = apply_overrides(preset("deepseek-tiny"), list(overrides))
    torch.manual_seed(seed)
    return build_lm(cfg.validate().model, VOCAB, 128)


def bigram_source(seed: int = 0):
    """(V, V) transition probabilities with about 2 nats of entropy per token, and that entropy."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(VOCAB, VOCAB, generator=g) * 2.5, dim=-1)
    entropy = float(-(probs * probs.log()).sum(-1).mean())
    return probs, entropy


def sample_batch(probs, n_docs: int, length: int, g: torch.Generator):
    """n_docs documents of `length` tokens -> ids (T,), targets (T,), position_ids, cu_seqlens."""
    ids = torch.empty(n_docs, length, dtype=torch.long)
    ids[:, 0] = torch.randint(0, VOCAB, (n_docs,), generator=g)
    for t in range(1, length):
        ids[:, t] = torch.multinomial(probs[ids[:, t - 1]], 1, generator=g)[:, 0]
    targets = ids.roll(-1, 1)
    targets[:, -1] = -100  # no prediction across documents
    cu = torch.arange(0, n_docs * length + 1, length, dtype=torch.int32)
    return ids.reshape(-1), targets.reshape(-1), torch.arange(length).repeat(n_docs), cu


def train_curve(
    model, precision: str, steps: int, n_docs: int = 4, length: int = 32, lr: float = 3e-3, seed: int = 0
) -> list[float]:
    """Train a copy of `model` for `steps` AdamW steps; the loss of every step (nats/token)."""
    model = copy.deepcopy(model).train()
    if precision == "fp8":
        convert_to_fp8(model)
    probs, _ = bigram_source()
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    losses = []
    for _ in range(steps):
        ids, tgt, pos, cu = sample_batch(probs, n_docs, length, g)
        h = model(ids, pos, cu, length)
        loss = F.cross_entropy(model.head(h).float(), tgt, ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if hasattr(model, "on_optimizer_step"):
            model.on_optimizer_step()
        losses.append(float(loss.detach()))
    return losses


def layer_errors(model) -> list[list]:
    """Per FP8 Linear: weight block-quantization error and its input activations' tile error."""
    model = copy.deepcopy(model).eval()
    names = convert_to_fp8(model)
    acts: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, inp, n=n: acts.setdefault(n, inp[0].detach()))
        for n, m in model.named_modules()
        if isinstance(m, FP8Linear)
    ]
    probs, _ = bigram_source()
    ids, _, pos, cu = sample_batch(probs, 4, 32, torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(ids, pos, cu, 32)
    for h in hooks:
        h.remove()
    rows = []
    modules = dict(model.named_modules())
    for n in names:
        if n.endswith(".experts"):  # routed experts: stacked weights; expert 0's gate|up projection
            w = quantization_error(modules[n.removesuffix(".experts")].w13[0])
            rows.append([f"{n} (w13 of expert 0)", f"{w['block_rel_rms']:.4f}", f"{w['block_max_rel']:.3f}", "-", "-"])
            continue
        w = quantization_error(modules[n].weight)
        a = quantization_error(acts[n]) if n in acts else {"tile_rel_rms": math.nan, "tile_max_rel": math.nan}
        rows.append(
            [
                n,
                f"{w['block_rel_rms']:.4f}",
                f"{w['block_max_rel']:.3f}",
                f"{a['tile_rel_rms']:.4f}",
                f"{a['tile_max_rel']:.3f}",
            ]
        )
    return rows


def run(steps: int | None = None, quick: bool = False) -> dict:
    steps = steps or (40 if quick else 200)
    torch.set_num_threads(1)  # the shared 2-core machine: one thread avoids OpenMP oversubscription
    model = tiny_moe()
    _, entropy = bigram_source()
    rows = layer_errors(model)
    print_table(
        "FP8 quantization error per layer (relative; weights 128x128 blocks, activations 1x128 tiles)",
        ["layer", "weight rel RMS", "weight max rel", "act rel RMS", "act max rel"],
        rows,
    )
    curves = {p: train_curve(model, p, steps) for p in ("fp32", "fp8")}
    k = max(1, steps // 10)
    tail = {p: sum(c[-k:]) / k for p, c in curves.items()}
    marks = sorted({0, steps // 4, steps // 2, 3 * steps // 4, steps - 1})
    print_table(
        f"loss (nats/token; source entropy {entropy:.3f})",
        ["step", "fp32", "fp8", "rel diff"],
        [
            [
                s + 1,
                f"{curves['fp32'][s]:.4f}",
                f"{curves['fp8'][s]:.4f}",
                f"{(curves['fp8'][s] - curves['fp32'][s]) / curves['fp32'][s]:+.2%}",
            ]
            for s in marks
        ],
    )
    gap = (tail["fp8"] - tail["fp32"]) / tail["fp32"]
    print(f"mean loss over the last {k} steps: fp32 {tail['fp32']:.4f}, fp8 {tail['fp8']:.4f} ({gap:+.2%})")
    return {
        "machine": machine_info(),
        "steps": steps,
        "entropy": entropy,
        "tail_fp32": tail["fp32"],
        "tail_fp8": tail["fp8"],
        "rel_gap": gap,
        "layers": rows,
        "curves": curves,
    }
