"""Data-parallel training on torch.distributed: the process group and the rank-aware helpers.

Related modules: parallel.py wraps the model (DDP / FSDP2), launch.py starts torchrun for
`genlab train --nproc N`, sharded_checkpoint.py reads and writes FSDP2 checkpoints, and
rundir.QuietRunDir is what ranks other than 0 hold.

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

Rank 0 alone writes the run dir (metrics, status, checkpoints) and holds its lock (RUN/.lock); the
other ranks get a QuietRunDir whose writing methods do nothing. MoE expert loads are all-reduced in
DeepSeekMoE.update_bias.

train.parallel: "ddp" (DistributedDataParallel; every rank holds the whole model) or "fsdp" (FSDP2:
`fully_shard` on every block of `model.blocks`, then on the root; parameters become dim-0 DTensor
shards; checkpoints gather a full state dict to rank 0).
"""

from __future__ import annotations

import os

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
        raise GenlabError(
            f"train.grad_accum = {grad_accum} is not a multiple of the {ws} processes; it counts the "
            "micro-batches of a step over all ranks: use a multiple of --nproc"
        )


def mine(i: int) -> bool:
    """Micro-batch i of a step belongs to this rank (round robin)."""
    return i % world_size() == rank()


def _scalar(x, dtype) -> torch.Tensor:
    """A one-element tensor where the process group's backend can reduce it (NCCL: the GPU)."""
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    return torch.tensor([x], dtype=dtype, device=dev)


def all_reduce_sum(x: float) -> float:
    if not dist.is_initialized():
        return x
    t = _scalar(x, torch.float64)
    dist.all_reduce(t)
    return float(t[0])


def any_rank(flag: bool) -> bool:
    """True on every rank if it is True on any (a single process: the flag itself)."""
    if not dist.is_initialized():
        return flag
    t = _scalar(int(flag), torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t[0])


def from_rank0(x: float) -> float:
    """Rank 0's value on every rank, so that decisions taken from it (early stopping) agree even if
    non-deterministic kernels made the ranks' own values differ in the last bits."""
    if not dist.is_initialized():
        return x
    t = _scalar(x, torch.float64)
    dist.broadcast(t, src=0)
    return float(t[0])


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
