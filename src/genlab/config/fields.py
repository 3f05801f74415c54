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
    """A config field: its default, its one-line meaning and (for numbers, or a table's values) an
    inclusive range. A table (`dict[str, T]`) default is copied for every instance."""
    meta = {"doc": doc, "range": (lo, hi)}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class KeyInfo:
    """Everything known about one config key, for checking and for `genlab presets --keys`."""

    key: str  # section.name
    type: str  # bool | int | float | str | table (a `dict[str, item]`: TOML table, --set k=v,k=v)
    default: Any
    choices: tuple | None
    lo: float | None
    hi: float | None
    doc: str
    item: str | None = None  # a table's value type (its range is lo..hi)

    def allowed(self) -> str:
        if self.type == "table":
            values = dataclasses.replace(self, type=self.item, item=None).allowed()
            return f"{{str: {self.item}}}" + (f", values {values}" if values else "")
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
        choices, item = None, None
        if typing.get_origin(hint) is Literal:
            choices = typing.get_args(hint)
            typename = type(choices[0]).__name__
        elif typing.get_origin(hint) is dict:
            typename, item = "table", typing.get_args(hint)[1].__name__
        else:
            typename = hint.__name__
        lo, hi = f.metadata.get("range", (None, None))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append(
            KeyInfo(
                f"{prefix}.{f.name}" if prefix else f.name,
                typename,
                default,
                choices,
                lo,
                hi,
                f.metadata.get("doc", ""),
                item,
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
            if info.type == "table":
                for k, v in value.items():
                    _check_number(f"{info.key}[{k!r}]", v, info)
                continue
            if info.choices is not None and value not in info.choices:
                raise GenlabError(
                    f"{info.key} = {value!r} is not allowed; choose one of: {', '.join(map(str, info.choices))}"
                )
            _check_number(info.key, value, info)


def _check_number(key: str, value: Any, info: KeyInfo) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise GenlabError(f"{key} = {value!r} must be a finite number")
    if (info.lo is not None and value < info.lo) or (info.hi is not None and value > info.hi):
        raise GenlabError(f"{key} = {value!r} is out of range; allowed: {info.allowed()}")


def coerce(info: KeyInfo, raw: Any) -> Any:
    """A TOML value or a --set string converted to the key's type, or a GenlabError."""
    key, typename = info.key, info.type
    if typename == "table":
        return _coerce_table(info, raw)
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


def _coerce_table(info: KeyInfo, raw: Any) -> dict[str, Any]:
    """A TOML table, or the --set form `k=v,k=v` ('' = empty), to {str: item}."""
    example = f"{info.key}=/data/a=0.7,/data/b=0.3"
    if isinstance(raw, str):
        pairs = {}
        for part in filter(None, (p.strip() for p in raw.split(","))):
            k, sep, v = part.rpartition("=")
            if not sep or not k.strip():
                raise GenlabError(f"{info.key}: {part!r} must look like key=value; e.g. --set {example}")
            pairs[k.strip()] = v.strip()
        raw = pairs
    if not isinstance(raw, dict):
        raise GenlabError(f"{info.key} = {raw!r} must be a table of key = value (TOML) or --set {example}")
    item = dataclasses.replace(info, type=info.item, item=None)
    out = {}
    for k, v in raw.items():
        if isinstance(v, dict):
            raise GenlabError(f"{info.key}[{k!r}] must be a value, not a table")
        out[str(k)] = coerce(dataclasses.replace(item, key=f"{info.key}[{k!r}]"), v)
    return out
