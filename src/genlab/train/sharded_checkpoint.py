"""Sharded (FSDP2) checkpoints: torch.distributed.checkpoint (DCP) shards plus a consolidated copy.

RUN/checkpoints/step_N/ holds dcp/ (every rank's shards of the model and optimizer), model.safetensors
(the whole model, for eval, sample, export), state.pt (trainer state, no optimizer) and manifest.json
over all of them. It is staged like every checkpoint (checkpoint.staging): rank 0 prepares the .tmp
folder, every rank writes its shards into it, rank 0 adds the rest and commits.

torch.distributed.checkpoint is imported inside the functions: it costs ~0.5 s at import (measured)
and only FSDP2 runs and `consolidate` need it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from genlab.errors import GenlabError
from genlab.train import checkpoint
from genlab.train.distributed import barrier, is_main

DCP_DIR = "dcp"  # RUN/checkpoints/step_N/dcp/: torch.distributed.checkpoint files, one shard per rank


def save_sharded(run_path, step: int, model, opt, state: dict, keep: int) -> Path:
    """FSDP2 checkpoint: every rank writes its shards of the model and optimizer into step_N.tmp/dcp/;
    rank 0 adds model.safetensors and state.pt, and commits (checkpoint.staging)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    with checkpoint.staging(run_path, step, keep, writer=is_main()) as tmp:
        barrier()  # rank 0 has made the .tmp folder
        dcp.save(
            {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
            checkpoint_id=str(tmp / DCP_DIR),
        )
        full = _full_weights(model)
        if is_main():
            _write_full(tmp, full, state, step)
    barrier()  # rank 0 has committed
    return checkpoint.path_of(run_path, step)


def save_whole_from_shards(run_path, step: int, model, state: dict, keep: int) -> Path | None:
    """A whole-model checkpoint (model.safetensors + state.pt, no dcp/) of an FSDP2 model, e.g. the
    early-stopping best in RUN/best/: every rank gathers, rank 0 writes. Returns its path on rank 0."""
    full = _full_weights(model)
    final = None
    if is_main():
        with checkpoint.staging(run_path, step, keep) as tmp:
            _write_full(tmp, full, state, step)
        final = checkpoint.path_of(run_path, step)
    barrier()
    return final


def _full_weights(model) -> dict:
    """Every rank takes part; rank 0 gets every tensor (on CPU), the others an empty dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _write_full(tmp: Path, full: dict, state: dict, step: int) -> None:
    """Rank 0: model.safetensors (tied weights under both names) and state.pt into `tmp`."""
    save_file({k: v.detach().clone().contiguous() for k, v in full.items()}, str(tmp / "model.safetensors"))
    checkpoint.check_safetensors(tmp / "model.safetensors")
    checkpoint._fault_point(step)
    checkpoint.write_state(state, tmp / "state.pt")


def load_sharded(ckpt, model, opt) -> dict:
    """Load a checkpoint with dcp/ into `model` and `opt` on any number of processes (DCP reshards to
    this run's layout; one process reads every shard). Returns the trainer state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    problem = checkpoint.verify(ckpt)
    if problem:
        raise GenlabError(f"checkpoint {ckpt} cannot be used: {problem}")
    osd = get_optimizer_state_dict(model, opt)  # initialises the optimizer's state so there is room to load into
    msd = get_model_state_dict(model)
    try:
        dcp.load({"model": msd, "optim": osd}, checkpoint_id=str(ckpt / DCP_DIR))
    except Exception as e:
        raise GenlabError(
            f"checkpoint {ckpt}: the sharded files do not fit this model ({str(e).splitlines()[0][:200]})"
        ) from None
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
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

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
        raise GenlabError(
            f"checkpoint {ckpt} does not match the model (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )
    order = [names[id(p)] for g in opt.param_groups for p in g["params"]]  # index in state.pt -> name
    osd = st.pop("optimizer")
    by_name = {
        "state": {order[int(i)]: v for i, v in osd["state"].items()},
        "param_groups": [{**g, "params": [order[int(i)] for i in g["params"]]} for g in osd["param_groups"]],
    }
    set_optimizer_state_dict(model, opt, by_name, options=opts)
    return st


def consolidate(ckpt, out) -> None:
    """Export: read a sharded checkpoint's dcp/ files (no process group, any machine) and write the
    whole model as one safetensors file."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    src = Path(ckpt) / DCP_DIR
    try:
        meta = dcp.FileSystemReader(str(src)).read_metadata()
    except Exception as e:
        raise GenlabError(
            f"{src}: not a torch.distributed.checkpoint folder ({str(e).splitlines()[0][:200]})"
        ) from None
    sd = {
        k: torch.empty(m.size, dtype=m.properties.dtype)
        for k, m in meta.state_dict_metadata.items()
        if k.startswith("model.") and isinstance(m, TensorStorageMetadata)
    }  # flattened keys "model.<fqn>"
    dcp.load(sd, checkpoint_id=str(src), no_dist=True)
    save_file({k[len("model.") :]: v.contiguous() for k, v in sd.items()}, str(out))
