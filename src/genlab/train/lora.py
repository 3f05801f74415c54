"""LoRA (Hu et al., 2021): low-rank adapters on a frozen model, generic over modules.

A target is any module that computes y = x W^T (+ b) with its `weight` (out, in) — nn.Linear and
genlab's FP8Linear alike. `apply_lora` freezes every parameter of the model, gives each target a
child `lora` (a `LoRA`: A (r, in), B (out, r)) and a forward hook that adds

    scale * B A dropout(x),   scale = alpha / r,

to the module's output, so W' = W + scale B A. B starts at zero (the model starts exactly at W), A
kaiming-uniform as the paper's code. The module keeps its class, its parameter names and its own
forward, so FP8 conversion (which runs after, on `type(m) is nn.Linear`) still converts the base
GEMM and leaves the adapters in high precision; activation checkpointing re-runs the hook with the
block; DDP sees only the adapters as trainable.

Which modules are targets is the family's business: a model class lists its projection families
in `LORA_TARGETS` ({"attention": (name suffixes), "mlp": ...}); `train.lora_targets` names some.

The model's state_dict (so a checkpoint) then holds the adapters and the buffers only: a state-dict
hook drops the frozen parameters, and a load hook does not count them as missing, so the strict
checkpoint check still catches a missing or unexpected adapter. The frozen base comes from
`train.init_from` each time the model is built. `merge_lora` folds the adapters into the weights and
removes them and both hooks: a plain model again.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from genlab.errors import GenlabError

TARGET_FAMILIES = ("attention", "mlp", "experts")
DEFAULT_TARGETS = "attention,mlp"


def parse_targets(text) -> tuple[str, ...]:
    """train.lora_targets: 'attention,mlp' (or a list / tuple of names) -> the names, in order, once each."""
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    names = [str(n).strip() for n in items if str(n).strip()]
    bad = [n for n in names if n not in TARGET_FAMILIES]
    if bad or not names:
        what = f"unknown target {bad[0]!r}" if bad else "no target named"
        raise GenlabError(f"train.lora_targets: {what}; choose from {', '.join(TARGET_FAMILIES)} (comma-separated)")
    return tuple(dict.fromkeys(names))


class LoRA(nn.Module):
    """The adapter of one linear map W (out, in): x -> scale * B A dropout(x)."""

    def __init__(self, d_in: int, d_out: int, rank: int, alpha: float, dropout: float, device=None, dtype=None):
        super().__init__()
        self.rank, self.alpha, self.p = rank, alpha, dropout
        self.scale = alpha / rank
        self.enabled = True  # adapters_disabled() turns it off for a while
        self.A = nn.Parameter(torch.empty(rank, d_in, device=device, dtype=dtype))
        self.B = nn.Parameter(torch.zeros(d_out, rank, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as nn.Linear (and the paper's loralib)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.dropout(x, self.p, self.training) if self.p else x
        return F.linear(F.linear(x, self.A) * self.scale, self.B)

    def delta_weight(self) -> torch.Tensor:
        """scale * B A (out, in) in fp32."""
        return (self.B.float() @ self.A.float()) * self.scale

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, dropout={self.p}"


def _add_adapter(module: nn.Module, args, out: torch.Tensor) -> torch.Tensor | None:
    """Forward hook of a target: its output plus its adapter's (None = the output as it is)."""
    if not module.lora.enabled:
        return None
    return out + module.lora(args[0])


@contextmanager
def adapters_disabled(model: nn.Module):
    """Run `model` as its frozen base inside the block (e.g. DPO's reference model without a second copy)."""
    found = [m.lora for _, m in adapters(model)]
    for a in found:
        a.enabled = False
    try:
        yield model
    finally:
        for a in found:
            a.enabled = True


def _drop_frozen(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    """State-dict hook of the root: the frozen base parameters are not part of a LoRA model's state."""
    for name in module.lora_frozen:
        state_dict.pop(prefix + name, None)


def _frozen_not_missing(module: nn.Module, incompatible) -> None:
    """Load hook of the root: a LoRA state (adapters + buffers) lacks the frozen base by design."""
    frozen = module.lora_frozen
    keep = [k for k in incompatible.missing_keys if k not in frozen and k.removeprefix("module.") not in frozen]
    incompatible.missing_keys[:] = keep


def target_modules(model: nn.Module, families) -> list[tuple[str, nn.Module]]:
    """(name, module) of every target of these projection families (names from `model.LORA_TARGETS`)."""
    table = getattr(type(model), "LORA_TARGETS", None)
    if not table:
        raise GenlabError(f"LoRA: {type(model).__name__} has no adaptable projections (train.lora_rank needs one)")
    families = parse_targets(families)
    missing = [f for f in families if f not in table]
    if missing:
        raise GenlabError(
            f"train.lora_targets: {type(model).__name__} has no {missing[0]!r} projections; "
            f"choose from {', '.join(table)}"
        )
    suffixes = tuple(s for f in families for s in table[f])
    out = []
    for name, mod in model.named_modules():
        if any(name == s or name.endswith("." + s) for s in suffixes):
            w = getattr(mod, "weight", None)
            if not isinstance(w, torch.Tensor) or w.dim() != 2:
                raise GenlabError(f"LoRA: {name} is not a linear map (no 2-D weight)")
            out.append((name, mod))
    if not out:
        raise GenlabError(f"LoRA: no module of {type(model).__name__} matches train.lora_targets {','.join(families)}")
    return out


def apply_lora(model: nn.Module, spec) -> nn.Module:
    """Freeze `model` and add adapters. `spec`: anything with lora_rank, lora_alpha, lora_dropout and
    lora_targets (the LM train section). Returns the model (changed in place)."""
    rank = int(spec.lora_rank)
    if rank < 1:
        raise GenlabError(f"train.lora_rank = {rank}: LoRA needs a rank >= 1")
    if has_lora(model):
        raise GenlabError("LoRA: the model already has adapters")
    targets = target_modules(model, spec.lora_targets)
    model.lora_frozen = frozenset(n for n, _ in model.named_parameters(remove_duplicate=False))
    for p in model.parameters():
        p.requires_grad_(False)
    for _, mod in targets:
        w = mod.weight
        out_f, in_f = w.shape
        mod.lora = LoRA(in_f, out_f, rank, float(spec.lora_alpha), float(spec.lora_dropout), w.device, w.dtype)
        mod.lora.train(mod.training)  # an eval-mode model stays in eval mode (no dropout)
        mod.register_forward_hook(_add_adapter)
    model.register_state_dict_post_hook(_drop_frozen)
    model.register_load_state_dict_post_hook(_frozen_not_missing)
    return model


def adapters(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, target module) of every module with an adapter."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m._modules.get("lora"), LoRA)]


def has_lora(model: nn.Module) -> bool:
    return bool(adapters(model))


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors alone, by state-dict name (`...qkv.lora.A`, `...qkv.lora.B`)."""
    return {f"{n}.lora.{k}": v for n, m in adapters(model) for k, v in m.lora.state_dict().items()}


def _unhook(hooks: dict, fn) -> None:
    for key in [k for k, h in hooks.items() if h is fn]:
        del hooks[key]


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight (W += scale B A, computed in fp32), remove adapters and
    hooks, and make every parameter trainable again. A model without adapters is returned unchanged."""
    found = adapters(model)
    for _, mod in found:
        mod.weight.add_(mod.lora.delta_weight().to(mod.weight.dtype))
        del mod.lora
        _unhook(mod._forward_hooks, _add_adapter)
    if found or "lora_frozen" in model.__dict__:
        _unhook(model._state_dict_hooks, _drop_frozen)
        _unhook(model._load_state_dict_post_hooks, _frozen_not_missing)
        model.__dict__.pop("lora_frozen", None)
        for p in model.parameters():
            p.requires_grad_(True)
    return model


def summary(model: nn.Module) -> str:
    """One log line: trainable share and the bytes of an adapter checkpoint's tensors."""
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    state = model.state_dict()
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    return (
        f"LoRA: {len(adapters(model))} adapted projections, {train:,} trainable parameters of {total:,} "
        f"({100 * train / max(1, total):.2f}%); checkpoints hold the adapters only (model.safetensors "
        f"~{nbytes / 1e6:.2f} MB of tensors)"
    )
