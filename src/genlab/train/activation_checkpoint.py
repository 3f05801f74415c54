"""Activation checkpointing policies for any model that keeps its blocks in `model.blocks`.

    none        keep every activation (the default)
    full        checkpoint each block: keep only its input, recompute the whole block in backward
    every:K     checkpoint every K-th block (blocks 0, K, 2K, ...), keep the others
    selective   checkpoint each block, but save the outputs of the matmuls (aten.mm / addmm, the
                grouped expert GEMM) and of the fused attention kernels; recompute the rest (norms,
                activations, RoPE, softmax-free elementwise work) and the MoE router (its gate matmul
                and top-k are cheap and recomputed: the router's gate weight is recognised by storage)

All through torch.utils.checkpoint.checkpoint(use_reentrant=False); `selective` adds
create_selective_checkpoint_contexts. RNG state is restored for the recompute (preserve_rng_state),
so dropout masks are the same; MoE load counting happens only in the real forward (genlab's MoE skips
counting while autograd runs a backward, which is when the recompute happens).

The block's own forward is replaced on the instance, so parameter names (and checkpoints) do not
change. Outside training or without grad (evaluation, sampling with a KV cache) the block runs plainly.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from torch.utils._python_dispatch import TorchDispatchMode

from genlab.errors import GenlabError

POLICIES = ("none", "full", "every:K", "selective")

_aten = torch.ops.aten
# outputs kept by `selective`: matmuls (2-D Linear GEMMs; tiles inside attention kernels are bmm and are
# recomputed, so a tiled attention never keeps O(N^2) tiles) and fused attention kernels
_SAVE_OPS = {_aten.mm.default, _aten.addmm.default, _aten._scaled_dot_product_flash_attention_for_cpu.default}
for _name in ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
              "_scaled_dot_product_cudnn_attention", "_grouped_mm", "_scaled_mm"):
    if hasattr(_aten, _name):
        _SAVE_OPS.add(getattr(_aten, _name).default)


def parse_policy(text: str) -> tuple[str, int]:
    """'none' | 'full' | 'every:K' | 'selective' -> (kind, K). Raises GenlabError on anything else."""
    text = str(text).strip()
    if text in ("none", "full", "selective"):
        return text, 1
    if text.startswith("every:"):
        k = text.split(":", 1)[1]
        if k.isdigit() and int(k) >= 1:
            return "every", int(k)
    raise GenlabError(f"activation checkpointing policy {text!r} is not allowed; "
                      f"use none, full, every:K (K a whole number >= 1) or selective")


def _router_weights(model: nn.Module) -> list[torch.Tensor]:
    """Gate weights of MoE routers: a parameter called `gate` directly on a module (genlab's MoE)."""
    return [m.gate for m in model.modules() if isinstance(getattr(m, "gate", None), nn.Parameter)]


def _selective_policy(router: list[torch.Tensor], mutated: set[int] | None = None):
    """Save the outputs of _SAVE_OPS, except GEMMs against a router weight or against a weight whose
    output the block later changes in place (`mutated`: storage pointers; e.g. a residual `.add_` into
    the output projection, which a cached tensor may not undergo). Recompute everything else."""
    def policy(ctx, op, *args, **kwargs):
        if op in _SAVE_OPS:
            ptrs = {w.data_ptr() for w in router} | (mutated or set())
            if any(isinstance(a, torch.Tensor) and a.data_ptr() in ptrs for a in args):
                return CheckpointPolicy.PREFER_RECOMPUTE
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE
    return policy


class _MutationProbe(TorchDispatchMode):
    """Records which parameters feed a GEMM whose output is later modified in place."""

    def __init__(self, params: set[int]):
        super().__init__()
        self.params, self.out_of, self.mutated = params, {}, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func._schema.is_mutable and args and isinstance(args[0], torch.Tensor):
            self.mutated |= self.out_of.get(args[0].data_ptr(), set())
        out = func(*args, **kwargs)
        if func in _SAVE_OPS and isinstance(out, torch.Tensor):
            self.out_of[out.data_ptr()] = {a.data_ptr() for a in args
                                           if isinstance(a, torch.Tensor) and a.data_ptr() in self.params}
        return out


def _probe_mutated(block: nn.Module, plain, args, kwargs) -> set[int]:
    """One extra forward of the block (eval mode, no grad: no MoE load counting, no RNG use)."""
    was = block.training
    block.eval()
    try:
        with torch.no_grad(), _MutationProbe({p.data_ptr() for p in block.parameters()}) as probe:
            plain(*args, **kwargs)
    finally:
        block.train(was)
    return probe.mutated


def _wrap(block: nn.Module, context_fn, router: list[torch.Tensor] | None = None) -> None:
    """router is not None: selective; the policy is built on the first training call (after a probe)."""
    plain = block.forward  # the bound class forward

    def forward(*args, **kwargs):
        if not (block.training and torch.is_grad_enabled()):
            return plain(*args, **kwargs)
        fn = context_fn
        if router is not None:
            if block._genlab_sac_policy is None:
                block._genlab_sac_policy = _selective_policy(router, _probe_mutated(block, plain, args, kwargs))
            fn = partial(create_selective_checkpoint_contexts, block._genlab_sac_policy)
        return checkpoint(plain, *args, use_reentrant=False, context_fn=fn, **kwargs)

    block._genlab_plain_forward = plain
    block._genlab_sac_policy = None
    block.forward = forward


def apply_activation_checkpointing(model: nn.Module, policy: str) -> list[int]:
    """Apply `policy` to model.blocks in place; returns the indices of the checkpointed blocks."""
    kind, k = parse_policy(policy)
    if kind == "none":
        return []
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise GenlabError(f"activation checkpointing {policy!r} needs a model with its blocks in `model.blocks`; "
                          f"{type(model).__name__} has none (use none)")
    from torch.utils.checkpoint import noop_context_fn

    router = _router_weights(model) if kind == "selective" else None
    chosen = [i for i in range(len(blocks)) if kind != "every" or i % k == 0]
    for i in chosen:
        if hasattr(blocks[i], "_genlab_plain_forward"):
            raise GenlabError(f"block {i} is already activation-checkpointed")
        _wrap(blocks[i], noop_context_fn, router)
    return chosen
