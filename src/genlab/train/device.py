"""Where a model runs and in which precision: `--device` of sample / eval / detect (and
`genlab.from_pretrained(device=...)`), `train.device` and `train.precision`.

    resolve_device("auto")           cuda when a CUDA GPU is available, else cpu
    resolve_precision("auto", dev)   bf16 on CUDA, fp32 on CPU (the default of train.precision)
    autocast(precision, dev)         the context the trainer runs forward + loss under

Precision (train.precision): fp32 = no autocast anywhere; bf16 = bf16 autocast on the device (on a CPU
too: there bf16 matmuls run 50-200x slower than fp32 unless the CPU has AMX); fp8 = block-scaled E4M3
Linears (genlab.ops.fp8) plus bf16 autocast on CUDA (no autocast on CPU, where FP8 is emulated in fp32);
auto = bf16 on CUDA, fp32 on CPU. Master weights and optimizer state stay fp32 in every case.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from genlab.errors import GenlabError

PRECISIONS = ("fp32", "bf16", "fp8", "auto")


def resolve_device(name: str | torch.device | None = "auto", what: str = "--device") -> torch.device:
    """auto | cpu | cuda | cuda:N -> a torch.device that exists here; one-line GenlabError otherwise."""
    text = "auto" if name is None else str(name)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise GenlabError(f"{what} {text}: not a device (auto, cpu, cuda, cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise GenlabError(f"{what} {text}: genlab runs on cpu or cuda (auto picks)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise GenlabError(f"{what} {text}: no CUDA GPU is available here (use {what} cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise GenlabError(f"{what} {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """train.precision -> what runs on `device`: fp32, bf16 or fp8 (auto: bf16 on CUDA, fp32 on CPU)."""
    if precision not in PRECISIONS:
        raise GenlabError(f"train.precision {precision!r} is not allowed; choose one of: {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of a resolved or unresolved precision on `device`; None = no autocast."""
    p = resolve_precision(precision, device)
    if p == "bf16" or (p == "fp8" and torch.device(device).type == "cuda"):
        return torch.bfloat16
    return None


def autocast(precision: str, device: torch.device | str):
    """A reusable context manager: torch.autocast(device type, bf16) or a no-op (fp32)."""
    dtype = autocast_dtype(precision, device)
    return nullcontext() if dtype is None else torch.autocast(torch.device(device).type, dtype=dtype)
