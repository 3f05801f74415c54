"""Data-parallel training on torch.distributed: the rank-aware pieces of the trainer.

Launch: `torchrun --nproc-per-node N -m genlab train ...` (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT), or `genlab train --nproc N ...`, which starts torchrun for you. Backend: gloo on
CPU, NCCL on CUDA (one GPU per process, LOCAL_RANK).

The global batch does not depend on the number of processes. `train.grad_accum` counts the
micro-batches of one optimizer step over *all* ranks, so it must be a multiple of WORLD_SIZE. Every
rank walks the same data stream (task.next_batch, cheap) and keeps micro-batches r, r+W, r+2W, ...
so the ranks never overlap and together see exactly the batches a single process would. Each rank
knows every micro-batch's target count, so the loss is normalised by the global count with no
communication; DDP averages gradients over W ranks, so each rank's summed loss is scaled by W.
The result: an N-process run equals the 1-process run with the same config (up to float summation
order), and a checkpoint resumes on any number of processes that divides grad_accum.

Rank 0 alone writes the run dir (metrics, status, checkpoints); the other ranks get a RunDir whose
writing methods do nothing. MoE expert loads are all-reduced in DeepSeekMoE.update_bias.

train.parallel: "ddp" (DistributedDataParallel; every rank holds the whole model) or "fsdp" (FSDP2:
`fully_shard` on every block of `model.blocks`, then on the root; parameters become dim-0 DTensor
shards; checkpoints gather a full state dict to rank 0).
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import nullcontext

import torch
import torch.distributed as dist

from genlab.errors import GenlabError


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def setup(device_name: str) -> None:
    """Join the process group torchrun describes in the environment; nothing for a single process."""
    ws = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if ws <= 1 or dist.is_initialized():
        return
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo")


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def check_grad_accum(grad_accum: int) -> None:
    ws = world_size()
    if grad_accum % ws:
        raise GenlabError(f"train.grad_accum = {grad_accum} is not a multiple of the {ws} processes; it counts the "
                          "micro-batches of a step over all ranks: use a multiple of --nproc")


def mine(i: int) -> bool:
    """Micro-batch i of a step belongs to this rank (round robin)."""
    return i % world_size() == rank()


def all_reduce_sum(x: float) -> float:
    if not dist.is_initialized():
        return x
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0])


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


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
        ids = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else None
        return _DDP(model, device_ids=ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise GenlabError(f"train.parallel = 'fsdp' needs a model with `blocks`; {type(model).__name__} has none: "
                          "use train.parallel=ddp")
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
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


class QuietRunDir:
    """What ranks other than 0 hold: reads pass through, writes do nothing."""

    def __init__(self, run):
        self._run = run
        self.path = run.path

    def __getattr__(self, name):
        return getattr(self._run, name)

    def create(self, *a, **k):
        pass

    def set_status(self, *a, **k):
        pass

    def append_metrics(self, *a, **k):
        pass

    def truncate_metrics(self, *a, **k):
        pass


def launch(nproc: int, child_args: list[str]) -> int:
    """`genlab train --nproc N`: run `torchrun --standalone --nproc-per-node N -m genlab train ...`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "genlab", "train", *child_args]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run(cmd, env=env).returncode
