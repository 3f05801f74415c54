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


SHUTDOWN_TIMEOUT_S = 120  # torchrun's wait for workers to finish their step and checkpoint after Ctrl-C
INTERRUPTED = 130


def launch(nproc: int, child_args: list[str]) -> int:
    """`genlab train --nproc N`: run `torchrun --standalone --nproc-per-node N -m genlab train ...` (through
    genlab.train.torchrun) in its own process group.

    Ctrl-C (SIGINT or SIGTERM to this process): forwarded once to torchrun's group, so the agent and
    every worker get it; the workers stop together after the current step and write a checkpoint,
    torchrun waits up to SHUTDOWN_TIMEOUT_S for them (TORCH_ELASTIC_SHUTDOWN_TIMEOUT, read by the torch
    versions that have the setting, ignored by older ones), and this process waits for torchrun. A
    second Ctrl-C kills the whole group. Returns torchrun's exit status, or INTERRUPTED after a
    Ctrl-C that ended cleanly (a worker that failed meanwhile keeps its own status)."""
    import signal

    cmd = [sys.executable, "-m", "genlab.train.torchrun", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "genlab", "train", *child_args]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_TIMEOUT_S))
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    interrupted = False

    def forward(signum, frame):
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, forward) if _main_thread() else None
    try:
        while True:
            try:
                rc = proc.wait()
                break
            except KeyboardInterrupt:
                if interrupted:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    raise
                interrupted = True
                print("stopping after the current step and writing a checkpoint (Ctrl-C again to abort)",
                      file=sys.stderr, flush=True)
                os.killpg(proc.pid, signal.SIGINT)
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    return INTERRUPTED if interrupted and rc in (0, INTERRUPTED) else rc


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def launch_from_args(args, cfg) -> int:
    """genlab train --nproc N: check the input here (one-line errors), then run the same command
    under torchrun; exit status 2 if a rank failed."""
    from genlab.train.rundir import RunDir

    if args.out is None:
        raise GenlabError("--nproc needs --out RUN_DIR (every process must write to the same run directory)")
    if args.resume:
        RunDir.open_for_resume(args.out)
        ga = RunDir.open(args.out).config().train.grad_accum
    else:
        RunDir.plan(cfg, args.out)
        ga = cfg.train.grad_accum
    if ga % args.nproc:
        raise GenlabError(f"train.grad_accum = {ga} is not a multiple of --nproc {args.nproc}; it counts the "
                          "micro-batches of a step over all processes")
    child = [f"--set={o}" for o in args.overrides] + ["--out", str(args.out)]
    for flag, value in (("--preset", args.preset), ("--config", args.config)):
        if value:
            child += [flag, value]
    if args.steps:
        child += ["--steps", str(args.steps)]
    child += ["--resume"] * bool(args.resume) + ["--no-progress"] * bool(args.no_progress)
    rc = launch(args.nproc, child)
    if rc == INTERRUPTED:
        raise KeyboardInterrupt  # the CLI reports it (exit status 130)
    if rc:
        raise GenlabError(f"torchrun with {args.nproc} processes failed (exit status {rc}); see the messages above")
    return 0


# ----------------------------------------------------------------------------- sharded checkpoints
DCP_DIR = "dcp"  # RUN/checkpoints/step_N/dcp/: torch.distributed.checkpoint files, one shard per rank


def save_sharded(run_path, step: int, model, opt, state: dict, keep: int):
    """FSDP2 checkpoint: every rank writes its shards of the model and optimizer through
    torch.distributed.checkpoint into step_N.tmp/dcp/; rank 0 adds the consolidated weights as one
    model.safetensors (for eval, sample, export), state.pt (trainer state, no optimizer) and a manifest
    over every file, then renames the folder (the same atomic protocol as checkpoint.save)."""
    import shutil
    from pathlib import Path

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    from genlab.train import checkpoint

    root = Path(run_path) / checkpoint.CKPT_DIR
    final, tmp = root / f"step_{step:08d}", root / f"step_{step:08d}.tmp"
    if is_main():
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    barrier()
    dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
             checkpoint_id=str(tmp / DCP_DIR))
    full = _full_weights(model)
    if is_main():
        _write_full(tmp, full, state, step)
        names = [*checkpoint.FILES, *sorted(str(p.relative_to(tmp)) for p in (tmp / DCP_DIR).iterdir())]
        checkpoint.finish(tmp, final, step, names, run_path, keep)
    barrier()
    return final


def _full_weights(model) -> dict:
    """Every rank takes part; rank 0 gets every tensor (on CPU), the others an empty dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _write_full(tmp, full: dict, state: dict, step: int) -> None:
    """Rank 0: model.safetensors (tied weights under both names) and state.pt into `tmp`."""
    from safetensors.torch import save_file

    from genlab.train import checkpoint

    save_file({k: v.detach().clone().contiguous() for k, v in full.items()}, str(tmp / "model.safetensors"))
    checkpoint._fault_point(step)
    torch.save(state, tmp / "state.pt")


def save_whole_from_shards(run_path, step: int, model, state: dict, keep: int):
    """A whole-model checkpoint (model.safetensors + state.pt, no dcp/) of an FSDP2 model, e.g. the
    early-stopping best in RUN/best/: every rank gathers, rank 0 writes (checkpoint.save's protocol)."""
    import shutil
    from pathlib import Path

    from genlab.train import checkpoint

    full = _full_weights(model)
    final = None
    if is_main():
        root = Path(run_path) / checkpoint.CKPT_DIR
        root.mkdir(parents=True, exist_ok=True)
        final, tmp = root / f"step_{step:08d}", root / f"step_{step:08d}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        _write_full(tmp, full, state, step)
        checkpoint.finish(tmp, final, step, checkpoint.FILES, run_path, keep)
    barrier()
    return final


def load_sharded(ckpt, model, opt) -> dict:
    """Load a checkpoint with dcp/ into `model` and `opt` on any number of processes (DCP reshards to
    this run's layout; one process reads every shard). Returns the trainer state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    from genlab.train import checkpoint

    problem = checkpoint.verify(ckpt)
    if problem:
        raise GenlabError(f"checkpoint {ckpt} cannot be used: {problem}")
    osd = get_optimizer_state_dict(model, opt)  # initialises the optimizer's state so there is room to load into
    msd = get_model_state_dict(model)
    try:
        dcp.load({"model": msd, "optim": osd}, checkpoint_id=str(ckpt / DCP_DIR))
    except Exception as e:
        raise GenlabError(f"checkpoint {ckpt}: the sharded files do not fit this model "
                          f"({str(e).splitlines()[0][:200]})") from None
    set_model_state_dict(model, msd)
    set_optimizer_state_dict(model, opt, osd)
    try:
        return torch.load(ckpt / "state.pt", weights_only=True)
    except Exception as e:
        raise GenlabError(f"checkpoint {ckpt}: state.pt cannot be loaded safely ({str(e).splitlines()[0]})") from None


def load_whole_into_sharded(ckpt, model, opt) -> dict:
    """Resume an FSDP2 run from a whole-model checkpoint (written by 1 process or DDP): every rank reads
    the full weights and optimizer state and keeps its shards. The optimizer state is keyed by
    parameter index in state.pt; it is re-keyed by parameter name, the form FSDP's loader takes."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    from genlab.train import checkpoint

    problem = checkpoint.verify(ckpt)
    if problem:
        raise GenlabError(f"checkpoint {ckpt} cannot be used: {problem}")
    try:
        st = torch.load(ckpt / "state.pt", weights_only=True)
        full = load_file(str(ckpt / "model.safetensors"))
    except Exception as e:
        raise GenlabError(f"checkpoint {ckpt} cannot be loaded safely ({str(e).splitlines()[0]})") from None
    opts = StateDictOptions(full_state_dict=True, strict=False)
    missing, unexpected = set_model_state_dict(model, full, options=opts)
    names = {id(p): n for n, p in model.named_parameters()}
    missing = [k for k in missing if k in names.values()]  # a tied weight saved once is not missing
    if missing or unexpected:
        raise GenlabError(f"checkpoint {ckpt} does not match the model (missing {sorted(missing)[:3]}, "
                          f"unexpected {sorted(unexpected)[:3]})")
    order = [names[id(p)] for g in opt.param_groups for p in g["params"]]  # index in state.pt -> name
    osd = st.pop("optimizer")
    by_name = {"state": {order[int(i)]: v for i, v in osd["state"].items()},
               "param_groups": [{**g, "params": [order[int(i)] for i in g["params"]]} for g in osd["param_groups"]]}
    set_optimizer_state_dict(model, opt, by_name, options=opts)
    return st


def consolidate(ckpt, out) -> None:
    """Export: read a sharded checkpoint's dcp/ files (no process group, any machine) and write the
    whole model as one safetensors file."""
    from pathlib import Path

    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    src = Path(ckpt) / DCP_DIR
    try:
        meta = dcp.FileSystemReader(str(src)).read_metadata()
    except Exception as e:
        raise GenlabError(f"{src}: not a torch.distributed.checkpoint folder ({str(e).splitlines()[0][:200]})") from None
    sd = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in meta.state_dict_metadata.items()
          if k.startswith("model.") and isinstance(m, TensorStorageMetadata)}  # flattened keys "model.<fqn>"
    dcp.load(sd, checkpoint_id=str(src), no_dist=True)
    save_file({k[len("model."):]: v.contiguous() for k, v in sd.items()}, str(out))
