"""`genlab train --nproc N`: check the input, then run the same training under torchrun.

The CLI builds the child's command-line arguments (everything but --nproc); this module knows
nothing of argparse. torchrun runs through genlab.train.torchrun (a quiet Ctrl-C).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from genlab.config import RunConfig
from genlab.errors import GenlabError
from genlab.train.rundir import RunDir

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
    cmd = [
        sys.executable,
        "-m",
        "genlab.train.torchrun",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "genlab",
        "train",
        *child_args,
    ]
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
                print(
                    "stopping after the current step and writing a checkpoint (Ctrl-C again to abort)",
                    file=sys.stderr,
                    flush=True,
                )
                os.killpg(proc.pid, signal.SIGINT)
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    return INTERRUPTED if interrupted and rc in (0, INTERRUPTED) else rc


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def train_under_torchrun(
    nproc: int, out: str | Path | None, resume: bool, cfg: RunConfig | None, child_args: list[str]
) -> int:
    """Check the input here (one-line errors), then run `genlab train *child_args` in `nproc` processes.
    `cfg`: the resolved config of a new run (None with resume: the run's own config.toml is read).
    Raises KeyboardInterrupt after a clean Ctrl-C, GenlabError if a rank failed; else returns 0."""
    if out is None:
        raise GenlabError("--nproc needs --out RUN_DIR (every process must write to the same run directory)")
    if resume:
        run = RunDir.open_for_resume(out, lock=False)  # rank 0 of the workers takes RUN/.lock
        run.check_free()
        ga = run.config().train.grad_accum
    else:
        RunDir.plan(cfg, out)
        ga = cfg.train.grad_accum
    if ga % nproc:
        raise GenlabError(
            f"train.grad_accum = {ga} is not a multiple of --nproc {nproc}; it counts the "
            "micro-batches of a step over all processes"
        )
    rc = launch(nproc, child_args)
    if rc == INTERRUPTED:
        raise KeyboardInterrupt  # the CLI reports it (exit status 130)
    if rc:
        raise GenlabError(f"torchrun with {nproc} processes failed (exit status {rc}); see the messages above")
    return 0
