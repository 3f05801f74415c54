"""Data-parallel training on torch.distributed: the process group and the rank-aware helpers.

Related modules: parallel.py wraps the model (DDP / FSDP2), launch.py starts torchrun for
`genlab train --nproc N`, sharded_checkpoint.py reads and writes FSDP2 checkpoints, and
rundir.QuietRunDir is what ranks other than 0 hold.

Launch: `torchrun --nproc-per-node N -m genlab train ...` (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT), or `genlab train --nproc N ...`, which starts torchrun for you. Backend: gloo on
CPU, NCCL on CUDA (one GPU per process, LOCAL_RANK).

Batch semantics (as Hugging Face accelerate): `train.batch_rows` is the micro-batch of one process
and `train.grad_accum` the micro-batches each process accumulates, so one optimizer step takes
global batch = batch_rows x grad_accum x WORLD_SIZE rows (every preset runs unchanged on any number
of processes; its global batch grows with them). The data cursor is global: every rank walks the
same stream (task.next_batch returns a layout, cheap) through the grad_accum x WORLD_SIZE
micro-batches of the step and keeps micro-batches r, r+W, r+2W, ... (`mine`), reading the tokens of
those only, so the ranks never overlap, nothing is dropped, and the stream position does not depend
on the process count. The loss is normalised by the step's global target count (the ranks' counts
all-reduced); DDP averages gradients over W ranks, so each rank's summed loss is scaled by W. The
result: W processes with grad_accum g equal 1 process with grad_accum g x W (up to float summation
order), and a checkpoint resumes on any number of processes (keep rows x accumulation x processes
to keep the global batch; a resume that changes it is told).

More than one machine: torchrun with --nnodes N --node-rank R --master-addr A --master-port P on
every node (`genlab train --nnodes ...` passes them through, launch.py); RANK is global, so rank 0
(node 0, local rank 0) alone writes. The run directory (and data.path) must be the same path on
every node: a shared filesystem, since resuming and FSDP2 checkpoints read and write it from all ranks.

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


def batch_line(rows: int, accum: int, tokens_per_row: int | None = None, processes: int | None = None) -> str:
    """`genlab info`'s statement of the batch semantics: per-process rows x accumulation x processes."""
    n = str(processes) if processes else "N"
    per = rows * accum
    if processes:
        total = f"{per * processes:,} rows"
        if tokens_per_row:
            total += f" = {per * processes * tokens_per_row:,} tokens"
    else:
        total = f"{per:,} x N rows"
        if tokens_per_row:
            total += f" = {per * tokens_per_row:,} x N tokens"
    return f"batch: {rows} rows x {accum} accumulation x {n} processes = global {total} per step"


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
