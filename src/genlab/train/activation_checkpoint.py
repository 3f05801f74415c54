"""Activation checkpointing policies for any model that keeps its blocks in `model.blocks`.

    none        keep every activation (the default)
    full        checkpoint each block: keep only its input, recompute the whole block in backward
    every:K     checkpoint every K-th block (blocks 0, K, 2K, ...), keep the others
    selective   keep the outputs of the projections and of attention; recompute the norms, the
                activations, RoPE (and the concatenations / padding that build attention's q, k, v),
                the MoE router's affinities (all but the small (T, E) sigmoid
                output, which sigmoid saves itself) and, as DeepSeek-V3 does (sec. 3.2.3), MLA's
                up-projections, each on its own when backward needs it

`full` and `every:K` go through torch.utils.checkpoint.checkpoint(use_reentrant=False); RNG state is
restored for the recompute (preserve_rng_state), so dropout masks are the same; MoE load counting
happens only in the real forward (genlab's MoE skips counting while autograd runs a backward, which
is when the recompute happens).

`selective` does not re-run the block. Model code marks cheap results with `cheap(fn, *args)`; while a
block runs under the policy, a saved-tensor hook (torch.autograd.graph.saved_tensors_hooks) stores
"fn applied to args" in place of any tensor autograd saves that lives in such a result's storage, and
rebuilds it in backward (nested: the args may be cheap results themselves). So only the cheap work is
redone, and nothing runs under a dispatch mode. (torch's selective-checkpoint contexts, the first
implementation here, re-ran the whole block, routing and expert GEMMs included, under a Python
dispatch mode on every op: +41-82% step time on deepseek-tiny on CPU, against the 15% budget.)
A recomputed result must equal the original, so `cheap` functions are deterministic and their inputs
may not change in place before backward (checked: a changed input raises). Outside `selective`,
`cheap(fn, *args)` is just fn(*args).

The block's own forward is replaced on the instance, so parameter names (and checkpoints) do not
change. Outside training or without grad (evaluation, sampling with a KV cache) the block runs plainly.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from genlab.config.run import parse_policy  # noqa: F401 - the policy names live with the config key
from genlab.errors import GenlabError
from genlab.ops.recompute import SelectiveScope

POLICIES = ("none", "full", "every:K", "selective")


def _wrap(block: nn.Module, selective: bool = False) -> None:
    plain = block.forward  # the bound class forward

    def forward(*args, **kwargs):
        if not (block.training and torch.is_grad_enabled()):
            return plain(*args, **kwargs)
        if selective:
            with SelectiveScope():
                return plain(*args, **kwargs)
        return checkpoint(plain, *args, use_reentrant=False, **kwargs)

    block._genlab_plain_forward = plain
    block._genlab_policy = "selective" if selective else "checkpoint"
    block.forward = forward


def apply_activation_checkpointing(model: nn.Module, policy: str) -> list[int]:
    """Apply `policy` in place to model.blocks (and to the blocks a model lists in
    `checkpoint_blocks()`, e.g. DeepSeek's MTP blocks after the main ones); returns the indices
    of the checkpointed blocks in that list."""
    kind, k = parse_policy(policy)
    if kind == "none":
        return []
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.ModuleList) and hasattr(model, "checkpoint_blocks"):
        blocks = model.checkpoint_blocks()
    elif not isinstance(blocks, nn.ModuleList):
        raise GenlabError(
            f"activation checkpointing {policy!r} needs a model with its blocks in `model.blocks`; "
            f"{type(model).__name__} has none (use none)"
        )
    chosen = [i for i in range(len(blocks)) if kind != "every" or i % k == 0]
    for i in chosen:
        if hasattr(blocks[i], "_genlab_plain_forward"):
            raise GenlabError(f"block {i} is already activation-checkpointed")
        _wrap(blocks[i], kind == "selective")
    return chosen
