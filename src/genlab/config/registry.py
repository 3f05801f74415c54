"""Families register themselves here; the core finds a family only by (task, model.arch).

A family is one home for a kind of model: its config sections, its task (data, loss, evaluation,
sampling), its model builder and its presets. `genlab.families` imports every family, and each
family's `__init__` calls `register`. The core never names a family: `families()` loads the
package of families the first time it is asked.
"""

from __future__ import annotations

import importlib
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from genlab.errors import GenlabError

FAMILIES_PACKAGE = "genlab.families"  # imported on first lookup; its modules call register()


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    settings: dict[str, Any]  # {"task": ..., "data": {...}, "model": {...}, "train": {...}}


@dataclass(frozen=True)
class Family:
    name: str
    task: str  # the task name in config (`task = "lm"`); several families may share one task
    data: type  # DataConfig subclass
    model: type  # ModelArgs subclass; its `arch` annotation is a Literal of this family's archs
    train: type  # TrainConfig subclass
    make_task: Callable[..., Any]  # RunConfig -> Task
    build_model: Callable[..., Any] | None = None  # language models: (args, vocab, max_len, causal) -> nn.Module
    presets: tuple[Preset, ...] = field(default_factory=tuple)

    @property
    def archs(self) -> tuple[str, ...]:
        return typing.get_args(typing.get_type_hints(self.model)["arch"])


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    if family.name in _FAMILIES:
        raise ValueError(f"family {family.name!r} registered twice")
    _FAMILIES[family.name] = family
    return family


def families() -> list[Family]:
    if not _FAMILIES:
        importlib.import_module(FAMILIES_PACKAGE)
    return list(_FAMILIES.values())


def task_names() -> list[str]:
    return list(dict.fromkeys(f.task for f in families()))


def lookup(task: str, arch: str | None = None) -> Family:
    """The family of `task` with architecture `arch` (None: the task's first family's default arch)."""
    of_task = [f for f in families() if f.task == task]
    if not of_task:
        raise GenlabError(f"task = {task!r} is not allowed; choose one of: {', '.join(task_names())}")
    if arch is None:
        return of_task[0]
    for f in of_task:
        if arch in f.archs:
            return f
    allowed = [a for f in of_task for a in f.archs]
    raise GenlabError(f"model.arch = {arch!r} is not allowed for task {task!r}; choose one of: {', '.join(allowed)}")


def family_of_args(args: Any) -> Family:
    for f in families():
        if type(args) is f.model:
            return f
    raise GenlabError(f"{type(args).__name__} is not the model section of a registered family")


def presets() -> dict[str, tuple[Family, Preset]]:
    return {p.name: (f, p) for f in families() for p in f.presets}
