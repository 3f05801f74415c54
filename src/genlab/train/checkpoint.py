"""Checkpoints: weights as safetensors plus training state, written atomically, verified on load.

Layout: RUN/checkpoints/step_00000100/{model.safetensors, state.pt, manifest.json} (+ dcp/ for a
sharded FSDP2 checkpoint, see sharded_checkpoint.py). Every checkpoint is written through `staging`:
into a `.tmp` folder, fsynced, then renamed: a folder without the `.tmp` suffix is complete.
manifest.json holds each file's size and SHA-256; a checkpoint whose files do not match it is never used.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from genlab.errors import GenlabError

CKPT_DIR = "checkpoints"
FILES = ("model.safetensors", "state.pt")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


FAULT_ENV = "GENLAB_FAULT_KILL_IN_CKPT"  # test hook: "STEP" SIGKILLs this process mid-write of step_STEP


def _fault_point(step: int) -> None:
    """Crash-safety tests set GENLAB_FAULT_KILL_IN_CKPT=STEP: the process kills itself with SIGKILL
    after model.safetensors of that step is written and before state.pt and the manifest are."""
    if os.environ.get(FAULT_ENV, "") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


def save(run_dir: Path, step: int, model: torch.nn.Module, state: dict, keep: int) -> Path:
    """A whole-model checkpoint: model.safetensors + state.pt, staged (see `staging`)."""
    with staging(run_dir, step, keep) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        check_safetensors(tmp / "model.safetensors")
        _fault_point(step)
        write_state(state, tmp / "state.pt")
    return path_of(run_dir, step)


def check_safetensors(path: Path) -> None:
    """Raise OSError (EIO) unless the file is as long as its own header says. safetensors' writer can
    report success on a full disk (seen on /dev/full), which would leave a short file behind."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        try:
            header = json.loads(f.read(n)) if 0 < n <= size - 8 else None
        except ValueError:
            header = None
    if not isinstance(header, dict):
        raise OSError(errno.EIO, f"{path.name} was written incomplete (no readable header)")
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if size != 8 + n + end:
        raise OSError(errno.EIO, f"{path.name} was written incomplete ({size} of {8 + n + end} bytes)")


def path_of(run_dir: Path, step: int) -> Path:
    """Where checkpoint `step` of `run_dir` lives once complete."""
    return Path(run_dir) / CKPT_DIR / f"step_{step:08d}"


def write_state(state: dict, path: Path) -> None:
    """torch.save through a Python file, so that a full disk raises OSError (ENOSPC), not a C++ error."""
    with open(path, "wb") as f:
        torch.save(state, f)


@contextmanager
def staging(run_dir: Path, step: int, keep: int, writer: bool = True):
    """Stage checkpoint step_STEP of `run_dir`: yields the empty folder step_STEP.tmp to write into.

    On success (writer only): manifest.json over every file written (size, SHA-256), fsync, rename to
    step_STEP (the commit point), keep the newest `keep` checkpoints. On failure: the .tmp folder is
    removed, earlier checkpoints are untouched, and a write error (ENOSPC, EIO) becomes a one-line
    GenlabError. writer=False (ranks other than 0 of a sharded save): the path alone, nothing else.
    """
    final = path_of(run_dir, step)
    root, tmp = final.parent, final.with_name(final.name + ".tmp")
    if not writer:
        yield tmp
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        yield tmp
        _commit(tmp, final, step)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise GenlabError(_write_error(run_dir, step, e)) from None
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _commit(tmp: Path, final: Path, step: int) -> None:
    """Manifest over the files in tmp, fsync them, rename tmp -> final."""
    names = _files(tmp)
    manifest = {
        "step": step,
        "files": {n: {"bytes": (tmp / n).stat().st_size, "sha256": _sha256(tmp / n)} for n in names},
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    for n in (*names, "manifest.json"):
        _fsync(tmp / n)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(final.parent)


def _files(tmp: Path) -> list[str]:
    """Every file under tmp (relative posix paths): FILES first, then the rest (e.g. dcp/ shards) sorted."""
    found = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    return [n for n in FILES if n in found] + [n for n in found if n not in FILES]


def _write_error(run_dir: Path, step: int, e: OSError) -> str:
    """The one-line message for a checkpoint that could not be written."""
    run_dir = Path(run_dir)
    run = run_dir.parent if run_dir.name == "best" else run_dir  # RUN/best/: the early-stopping best
    last = list_checkpoints(run_dir)
    kept = (
        (
            f"the last complete checkpoint (step {int(last[-1].name[5:])}) is intact; free space and run "
            f"`genlab train --out {run} --resume`"
        )
        if last
        else "there is no earlier checkpoint"
    )
    return f"checkpoint step {step} could not be written to {run_dir / CKPT_DIR}: {e.strerror or e}; {kept}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and not p.name.endswith(".tmp")
    )


def verify(ckpt: Path) -> str | None:
    """None if the checkpoint is complete and intact, else what is wrong."""
    try:
        manifest = json.loads((ckpt / "manifest.json").read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "manifest.json is missing or unreadable"
    extra = [n for n in files if n not in FILES] if isinstance(files, dict) else []  # e.g. dcp/ shards
    for name in (*FILES, *extra):
        if not isinstance(name, str) or ".." in Path(name).parts or Path(name).is_absolute():
            return f"manifest.json names a file outside the checkpoint ({name!r})"
        p = ckpt / name
        meta = files.get(name) if isinstance(files, dict) else None
        if not p.is_file() or not isinstance(meta, dict):
            return f"{name} is missing"
        if p.stat().st_size != meta.get("bytes"):
            return f"{name} is truncated ({p.stat().st_size} of {meta.get('bytes')} bytes)"
        if _sha256(p) != meta.get("sha256"):
            return f"{name} is corrupted (checksum mismatch)"
    return None


def latest_valid(run_dir: Path, warn=lambda msg: print(msg, file=sys.stderr)) -> Path | None:
    """The newest checkpoint that verifies; newer broken ones are reported and skipped."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        problem = verify(ckpt)
        if problem is None:
            return ckpt
        warn(f"genlab: warning: skipping checkpoint {ckpt}: {problem}")
    return None


def load(ckpt: Path, model: torch.nn.Module, with_state: bool = True) -> dict:
    problem = verify(ckpt)
    if problem:
        raise GenlabError(f"checkpoint {ckpt} cannot be used: {problem}")
    try:
        missing, unexpected = load_model(model, str(ckpt / "model.safetensors"), strict=False)
    except Exception as e:  # safetensors raises its own error types on malformed files
        raise GenlabError(f"checkpoint {ckpt}: model.safetensors cannot be read ({e})") from None
    if missing or unexpected:
        raise GenlabError(
            f"checkpoint {ckpt} does not match the model in config.toml "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    if not with_state:
        return {}
    try:
        return torch.load(ckpt / "state.pt", weights_only=True)
    except Exception as e:  # pickle errors of many types; weights_only refuses code
        raise GenlabError(f"checkpoint {ckpt}: state.pt cannot be loaded safely ({str(e).splitlines()[0]})") from None
