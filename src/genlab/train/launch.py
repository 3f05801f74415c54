"""`genlab train --nproc N [--nnodes N --node-rank R --master-addr A --master-port P]`: check the
input, then run the same training under torchrun (--standalone on one machine; a static rendezvous
at A:P across machines, this command run once on every node).

The CLI builds the child's command-line arguments (everything but --nproc); this module knows
nothing of argparse. torchrun runs through genlab.train.torchrun (a quiet Ctrl-C).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from genlab.config import RunConfig
from genlab.errors import GenlabError
from genlab.train.rundir import RunDir

SHUTDOWN_TIMEOUT_S = 120  # torchrun's wait for workers to finish their step and checkpoint after Ctrl-C
INTERRUPTED = 130


DEFAULT_MASTER_PORT = 29500  # torchrun's


@dataclass(frozen=True)
class Nodes:
    """Where this launch sits among the machines of the job (the defaults: one machine)."""

    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int = DEFAULT_MASTER_PORT

    def check(self) -> None:
        if self.node_rank >= self.nnodes:
            raise GenlabError(
                f"--node-rank {self.node_rank} is not below --nnodes {self.nnodes}: nodes are numbered 0 to "
                f"{self.nnodes - 1}"
            )
        if self.nnodes > 1 and not self.master_addr:
            raise GenlabError(
                f"--nnodes {self.nnodes} needs --master-addr HOST: the address of node 0, which every node "
                "can reach (and --master-port, default 29500)"
            )

    def torchrun_args(self) -> list[str]:
        if self.nnodes == 1:
            return ["--standalone"]
        return [
            f"--nnodes={self.nnodes}",
            f"--node-rank={self.node_rank}",
            f"--master-addr={self.master_addr}",
            f"--master-port={self.master_port}",
        ]


def launch(nproc: int, child_args: list[str], nodes: Nodes = Nodes()) -> int:
    """`genlab train --nproc N`: run `torchrun --standalone --nproc-per-node N -m genlab train ...` (through
    genlab.train.torchrun) in its own process group; with several nodes, torchrun's static rendezvous
    (--nnodes --node-rank --master-addr --master-port) instead of --standalone.

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
        *nodes.torchrun_args(),
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
    nproc: int,
    out: str | Path | None,
    resume: bool,
    cfg: RunConfig | None,
    child_args: list[str],
    nodes: Nodes = Nodes(),
) -> int:
    """Check the input here (one-line errors), then run `genlab train *child_args` in `nproc` processes
    (per node, on `nodes.nnodes` nodes). `cfg`: the resolved config of a new run (None with resume: the
    run's own config.toml is read). Raises KeyboardInterrupt after a clean Ctrl-C, GenlabError if a rank
    failed; else returns 0."""
    nodes.check()
    flag = "--nproc" if nodes.nnodes == 1 else "--nnodes"
    if out is None:
        raise GenlabError(f"{flag} needs --out RUN_DIR (every process must write to the same run directory)")
    if nodes.node_rank == 0:  # node 0 owns the run dir (its rank 0 writes); other nodes only read it
        if resume:
            RunDir.open_for_resume(out, lock=False).check_free()  # rank 0 of the workers takes RUN/.lock
        else:
            RunDir.plan(cfg, out)
    rc = launch(nproc, child_args, nodes)
    if rc == INTERRUPTED:
        raise KeyboardInterrupt  # the CLI reports it (exit status 130)
    if rc:
        what = f"{nproc} processes" if nodes.nnodes == 1 else f"node {nodes.node_rank} of {nodes.nnodes}"
        raise GenlabError(f"torchrun with {what} failed (exit status {rc}); see the messages above")
    return 0
