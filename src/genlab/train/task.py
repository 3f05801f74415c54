"""The task protocol: all the trainer, `genlab sample` and `genlab eval` know about a family.

A task builds its data, model, loss, evaluation and sampler. Methods marked optional have no-op
defaults here; the trainer calls every method unconditionally (no getattr / hasattr).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Protocol

import torch

from genlab.errors import GenlabError


class Batch(Protocol):
    """What the trainer needs of a batch; each family's batch carries only what it means."""

    @property
    def n_targets(self) -> int:
        """Loss terms summed in `Task.loss`: the trainer normalises the step's loss by their sum."""
        ...

    def to(self, device) -> Batch: ...


class Task(ABC):
    """One family's job. `cfg` is the run's validated RunConfig."""

    def __init__(self, cfg):
        self.cfg = cfg

    # ------------------------------------------------------------------ data and artifacts
    @abstractmethod
    def prepare(self, run_dir: Path | None, fresh: bool = True) -> None:
        """Read the data; build (fresh run) or load (resume) artifacts such as a tokenizer."""

    def save_artifacts(self, run_dir: Path) -> None:  # noqa: B027 - optional
        """Write the artifacts `prepare` built into a new run dir."""

    def load_for_inference(self, run_dir: Path) -> None:  # noqa: B027 - optional
        """Load the artifacts sample / eval need (no training data)."""

    @abstractmethod
    def initial_state(self) -> tuple[int, ...]:
        """Position in the training stream: JSON-able ints, saved in checkpoints."""

    @abstractmethod
    def next_batch(self, state: tuple[int, ...]) -> tuple[Batch, tuple[int, ...]]:
        """The batch at `state` and the state after it (a pure function of the state: exact resume)."""

    def batch_units(self, batch: Batch) -> tuple[int, int]:
        """(real items, item slots) of a batch, for tokens/s and the real fraction; default: targets."""
        return batch.n_targets, batch.n_targets

    # ------------------------------------------------------------------ model and loss
    @abstractmethod
    def build_model(self) -> torch.nn.Module: ...

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        """(summed loss, number of terms)."""

    def on_optimizer_step(self, model: torch.nn.Module, lr_factor: float, skipped: bool) -> dict[str, Any]:
        """Once per optimizer step (skipped: the update was discarded); returns metrics to log."""
        return {}

    def after_step(self, model: torch.nn.Module, step: int) -> None:  # noqa: B027 - optional
        """Called after every optimizer step (e.g. an EMA of the weights)."""

    def model_flops_per_token(self) -> float | None:
        """M (training FLOPs per token, genlab.train.flops) behind the mfu metric; None = no accounting."""
        return None

    # ------------------------------------------------------------------ evaluation, sampling, description
    @abstractmethod
    def evaluate(
        self, model: torch.nn.Module, data: Any = None, max_batches: int | None = None, device: Any = "cpu"
    ) -> dict[str, float]:
        """Validation metrics with at least "val_loss", or {} where there is no validation data."""

    def eval_report(self, run, model: torch.nn.Module, data_path: str | None) -> dict[str, Any]:
        """`genlab eval`: the full report (default: evaluate on the validation split)."""
        self.prepare(run.path, fresh=False)
        return self.evaluate(model, device=next(model.parameters()).device)

    def eval_images(self, model: torch.nn.Module, device: Any = "cpu") -> dict[str, Any]:
        """At eval steps when train.log names tensorboard or wandb: {tag: (H, W) or (H, W, 3) uint8
        numpy image}, a few cheap samples (genlab.train.loggers.tile makes a grid); default none.
        Called on every rank; must leave the global RNG and the model's train/eval mode as they were."""
        return {}

    def info_lines(self, run_dir: Path | None) -> list[str]:
        """`genlab info`: lines describing the model (parameters, FLOPs, ...)."""
        return []

    sample_options: type | None = None  # the dataclass `sample` takes; None = the family has no sampler

    def sample(self, run, model: torch.nn.Module, options: Any) -> None:
        """`genlab sample`: draw from the model with a `sample_options` instance, print or write files.
        Families without a sampler (sample_options None) raise a GenlabError saying what to do instead."""
        raise GenlabError(f"{run.path} is a {self.cfg.family.name} run; it has nothing to sample")
