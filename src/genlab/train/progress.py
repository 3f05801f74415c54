"""Live progress bar for training (rich): step, loss, tokens/s, ETA."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


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
