"""Helpers shared by the benchmarks: machine description, step timing, rich tables.

Stable, small API (other benchmark modules import it):

    machine_info() -> dict                      CPU model, cores, torch/python versions, threads, date
    timeit_steps(fn, warmup, steps) -> list     seconds per call of fn(), after `warmup` untimed calls
    interleaved_times(fns, warmup, steps)       the same for several functions, run in turns
    median(xs) -> float
    print_table(title, columns, rows)           a rich table on stdout (rows: lists of anything; str())
    bench_threads(quick) -> int                 $GENLAB_BENCH_THREADS, else 1 for quick, else 0 (leave as is)
    bench_thread_scope(quick)                   a with-block running under bench_threads(quick), restored after
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    info = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timeit_steps(fn: Callable[[], object], warmup: int, steps: int) -> list[float]:
    """Seconds per call of `fn` for `steps` timed calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return times


def interleaved_times(fns: Sequence[Callable[[], object]], warmup: int, steps: int) -> list[list[float]]:
    """Like timeit_steps for several functions, taking turns (A B C A B C ...) so that machine
    noise (other processes, frequency changes) falls on all of them alike. The order within a
    round alternates (A B C, C B A, ...) so that none always runs right after another."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    _sync()
    times: list[list[float]] = [[] for _ in fns]
    for r in range(steps):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            t0 = time.perf_counter()
            fns[i]()
            _sync()
            times[i].append(time.perf_counter() - t0)
    return times


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A rich table on stdout: first column left-aligned, the others right-aligned."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped or captured: don't squeeze the table into 80 columns
        console = Console(width=160)
    table = Table(title=title)
    for i, c in enumerate(columns):
        table.add_column(str(c), justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*[str(x) for x in r])
    console.print(table)


def bench_threads(quick: bool) -> int:
    """Threads for a benchmark: $GENLAB_BENCH_THREADS if set, else 1 for quick (tiny shapes only
    pay thread overhead), else 0 = leave torch's setting."""
    return int(os.environ.get("GENLAB_BENCH_THREADS", "0") or 0) or (1 if quick else 0)


@contextmanager
def bench_thread_scope(quick: bool) -> Iterator[None]:
    """Run the block with bench_threads(quick) torch threads (if set); the caller's setting comes back."""
    before = torch.get_num_threads()
    if bench_threads(quick):
        torch.set_num_threads(bench_threads(quick))
    try:
        yield
    finally:
        torch.set_num_threads(before)
