"""Checkpoints: weights as safetensors plus training state, written atomically, verified on load.

Layout: RUN/checkpoints/step_00000100/{model.safetensors, state.pt, manifest.json}. A checkpoint
is written into a `.tmp` folder, fsynced, then renamed: a folder without the `.tmp` suffix is
complete. manifest.json holds each file's size and SHA-256; a checkpoint whose files do not match
it is never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
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
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def save(run_dir: Path, step: int, model: torch.nn.Module, state: dict, keep: int) -> Path:
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f"step_{step:08d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    _fault_point(step)
    torch.save(state, tmp / "state.pt")
    return finish(tmp, final, step, FILES, run_dir, keep)


def finish(tmp: Path, final: Path, step: int, names, run_dir: Path, keep: int) -> Path:
    """Manifest over `names` (paths inside tmp), fsync, rename tmp -> final, drop old checkpoints."""
    root = final.parent
    manifest = {"step": step, "files": {n: {"bytes": (tmp / n).stat().st_size, "sha256": _sha256(tmp / n)}
                                        for n in names}}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    for n in (*names, "manifest.json"):
        _fsync(tmp / n)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_")
                  and not p.name.endswith(".tmp"))


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
        raise GenlabError(f"checkpoint {ckpt} does not match the model in config.toml "
                          f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    if not with_state:
        return {}
    try:
        return torch.load(ckpt / "state.pt", weights_only=True)
    except Exception as e:  # pickle errors of many types; weights_only refuses code
        raise GenlabError(f"checkpoint {ckpt}: state.pt cannot be loaded safely ({str(e).splitlines()[0]})") from None
