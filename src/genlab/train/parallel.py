"""Wrapping the model for data-parallel training: DDP, or FSDP2 sharding in place (train.parallel).

A single process gets the model itself. See distributed.py for the process group.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from genlab.errors import GenlabError
from genlab.train.distributed import world_size


class _DDP(torch.nn.parallel.DistributedDataParallel):
    """DDP that passes attribute look-ups it lacks to the wrapped model (tasks call model.head(...),
    model.aux_loss(...) after the forward)."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap(model: torch.nn.Module, parallel: str, device: torch.device) -> torch.nn.Module:
    """The module the training forward goes through: DDP around `model`, or `model` itself after
    FSDP2 sharded it in place. Single process: `model`."""
    if world_size() == 1:
        return model
    if parallel == "ddp":
        ids = (
            [device.index if device.index is not None else torch.cuda.current_device()]
            if device.type == "cuda"
            else None
        )
        return _DDP(model, device_ids=ids)
    from torch.distributed.device_mesh import init_device_mesh  # lazy: heavy, FSDP2 only
    from torch.distributed.fsdp import fully_shard

    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise GenlabError(
            f"train.parallel = 'fsdp' needs a model with `blocks`; {type(model).__name__} has none: "
            "use train.parallel=ddp"
        )
    mesh = init_device_mesh(device.type, (world_size(),))  # the CPU mesh explicitly (default prefers CUDA)
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def no_sync(fwd_model: torch.nn.Module, last: bool):
    """Skip DDP's gradient all-reduce on every micro-batch of a step but the last."""
    if last or not isinstance(fwd_model, torch.nn.parallel.DistributedDataParallel):
        return nullcontext()
    return fwd_model.no_sync()


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor  # lazy: ~0.4 s to import, only FSDP2 runs need it

    return any(isinstance(p, DTensor) for p in model.parameters())
