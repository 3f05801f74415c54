"""`train.compile = true`: torch.compile the model block by block.

Each block of `model.blocks` (every decoder LM; other models: the whole model) is compiled in place
(`nn.Module.compile`, so parameter names and checkpoints stay as they are) with `dynamic=True`: a
packed batch has a different number of tokens every step, and dynamic shapes keep that to one
compiled graph instead of one per length. Attention runs eagerly between the compiled pieces
(`genlab.ops.attention.attention` is `torch.compiler.disable`d: its sequence boundaries are data).
Under compilation the blocks use plain ops (F.rms_norm, silu * up, RoPE by cat) that inductor fuses,
instead of the hand-written autograd functions of eager mode.

Falls back to eager with a warning (never an error) where compiling cannot work: no dynamo on this
Python, no C++ compiler for inductor's CPU backend, `train.activation_checkpointing = selective`
(its saved-tensor recipes need eager tensors), or an error while compiling a block (dynamo's
`suppress_errors`: that block runs eagerly).
"""

from __future__ import annotations

import os
import shutil

import torch
import torch.nn as nn


def why_not(model: nn.Module, device: torch.device, policy: str = "none") -> str | None:
    """The reason compiling is not possible here, or None."""
    try:
        import torch._dynamo as dynamo
    except Exception as e:  # pragma: no cover - torch without dynamo
        return f"torch._dynamo unavailable ({e})"
    if not dynamo.is_dynamo_supported():
        return "torch.compile is not supported on this Python"
    if device.type == "cpu" and not shutil.which(os.environ.get("CXX", "g++")) and not shutil.which("c++"):
        return "inductor's CPU backend needs a C++ compiler (g++ / c++ on PATH, or $CXX)"
    if str(policy).strip() == "selective":
        return "train.activation_checkpointing = selective rebuilds eager tensors; use none or full with compile"
    return None


def compile_model(model: nn.Module, device: torch.device, policy: str = "none", log=print) -> list[str]:
    """Compile `model` in place, per block; returns the names of the compiled modules ([] = eager)."""
    reason = why_not(model, device, policy)
    if reason:
        log(f"warning: train.compile: running eagerly, {reason}")
        return []
    import torch._dynamo as dynamo

    dynamo.config.suppress_errors = True  # a block that fails to compile runs eagerly (dynamo logs why)
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.ModuleList) and len(blocks):
        names = []
        for i, block in enumerate(blocks):
            block.compile(dynamic=True)
            names.append(f"blocks.{i}")
        return names
    model.compile(dynamic=True)
    return [type(model).__name__]
