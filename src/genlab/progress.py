"""Live progress bars (rich): training (step, loss, tokens/s, ETA) and `genlab prepare`."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainProgress:
    def __init__(self, total: int, start: int, enabled: bool = True):
        self.enabled = enabled
        self.total = total
        if enabled:
            self.console = Console(stderr=True)
            self.bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[tps]} tok/s"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self.task = self.bar.add_task("train", total=total, completed=start, loss="-", tps="-")

    def __enter__(self):
        if self.enabled:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)

    def update(self, step: int, loss: float, tps: float) -> None:
        if self.enabled:
            self.bar.update(self.task, completed=step, loss=f"{loss:.4f}", tps=f"{tps:,.0f}")

    def note(self, text: str) -> None:
        if self.enabled:
            self.bar.console.print(text)


class PrepareProgress:
    """Live progress bar for `genlab prepare`: bytes of text, documents, tokens/s, ETA (over the
    sources' size on disk, so compressed sources finish early)."""

    def __init__(self, total_bytes: int, enabled: bool = True):
        self.enabled = enabled
        self.docs = self.tokens = 0
        self.t0 = time.perf_counter()
        if enabled:
            self.bar = Progress(
                TextColumn("[bold]prepare"),
                BarColumn(),
                DownloadColumn(),
                TextColumn("{task.fields[docs]} docs"),
                TextColumn("{task.fields[tps]} tok/s"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self.task = self.bar.add_task("prepare", total=total_bytes or None, docs="0", tps="-")

    def __enter__(self):
        if self.enabled:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)

    def update(self, n_bytes: int, n_docs: int, n_tokens: int) -> None:
        self.docs += n_docs
        self.tokens += n_tokens
        if self.enabled:
            tps = self.tokens / max(1e-9, time.perf_counter() - self.t0)
            self.bar.update(self.task, advance=n_bytes, docs=f"{self.docs:,}", tps=f"{tps:,.0f}")
