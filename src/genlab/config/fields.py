"""Config sections as typed, documented dataclasses: one place per fact.

A key's type is its annotation (``Literal[...]`` for a closed set of choices), its default the
field's default, its range and one-line meaning the field's metadata (``opt``). Parsing, checking
and `genlab presets --keys` all read them from here; nothing repeats them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from genlab.errors import GenlabError


def opt(default: Any, doc: str, lo: float | None = None, hi: float | None = None) -> Any:
    """A config field: its default, its one-line meaning and (for numbers) an inclusive range."""
    return field(default=default, metadata={"doc": doc, "range": (lo, hi)})


@dataclass(frozen=True)
class KeyInfo:
    """Everything known about one config key, for checking and for `genlab presets --keys`."""

    key: str  # section.name
    type: str  # bool | int | float | str
    default: Any
    choices: tuple | None
    lo: float | None
    hi: float | None
    doc: str

    def allowed(self) -> str:
        if self.choices:
            return " | ".join(map(str, self.choices))
        if self.lo is None and self.hi is None:
            return ""
        if self.hi is None:
            return f">= {self.lo}"
        return f"{self.lo} to {self.hi}"


@functools.cache
def key_infos(cls: type, prefix: str) -> tuple[KeyInfo, ...]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        choices = None
        if typing.get_origin(hint) is Literal:
            choices = typing.get_args(hint)
            typename = type(choices[0]).__name__
        else:
            typename = hint.__name__
        lo, hi = f.metadata.get("range", (None, None))
        out.append(
            KeyInfo(
                f"{prefix}.{f.name}" if prefix else f.name,
                typename,
                f.default,
                choices,
                lo,
                hi,
                f.metadata.get("doc", ""),
            )
        )
    return tuple(out)


class Section:
    """Base of every config section. Subclasses are dataclasses whose fields use `opt`; `check`
    holds the rules that span several keys (the run's whole config is passed in)."""

    def check(self, cfg) -> None:  # noqa: B027 - optional hook, no rule by default
        """Cross-key rules; raise a GenlabError naming the keys."""

    def validate_fields(self, prefix: str) -> None:
        for info in key_infos(type(self), prefix):
            value = getattr(self, info.key.rsplit(".", 1)[-1])
            if info.choices is not None and value not in info.choices:
                raise GenlabError(
                    f"{info.key} = {value!r} is not allowed; choose one of: {', '.join(map(str, info.choices))}"
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise GenlabError(f"{info.key} = {value!r} must be a finite number")
            if (info.lo is not None and value < info.lo) or (info.hi is not None and value > info.hi):
                raise GenlabError(f"{info.key} = {value!r} is out of range; allowed: {info.allowed()}")


def coerce(info: KeyInfo, raw: Any) -> Any:
    """A TOML value or a --set string converted to the key's type, or a GenlabError."""
    key, typename = info.key, info.type
    if typename == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false", "1", "0", "yes", "no"):
            return raw.lower() in ("true", "1", "yes")
        raise GenlabError(f"{key} = {raw!r} must be true or false")
    if typename == "int":
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, str):
            try:
                return int(raw.replace("_", ""))
            except ValueError:
                pass
        raise GenlabError(f"{key} = {raw!r} must be an integer")
    if typename == "float":
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
        if isinstance(raw, str):
            try:
                return float(raw)
            except ValueError:
                pass
        raise GenlabError(f"{key} = {raw!r} must be a number")
    if isinstance(raw, str):
        return raw
    raise GenlabError(f"{key} = {raw!r} must be a string")
