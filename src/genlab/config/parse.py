"""Config in and out: presets, TOML files and `--set key=value`, layered in that order.

Settings are plain nested dicts ({"task": ..., "model": {...}, ...}). `build` picks the family from
the last layer that sets `task` / `model.arch`, then fills that family's sections layer by layer.
A key the family does not have is an error, except in a preset's own settings (a preset written
for one arch keeps working when the user switches `model.arch`: its other-family keys are dropped).
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any

import tomli_w
import tomllib

from genlab.config.fields import coerce, key_infos
from genlab.config.registry import Family, families, lookup, presets
from genlab.config.run import SECTIONS, RunConfig
from genlab.errors import GenlabError

TOP_KEYS = ("task", "preset")
Layer = tuple[str, dict[str, Any], bool]  # (origin, settings, lenient: drop keys the family lacks)


def section_keys(family: Family) -> dict[str, dict[str, Any]]:
    """section -> {name: KeyInfo} of a family."""
    return {name: {i.key.split(".", 1)[1]: i for i in key_infos(getattr(family, name), name)} for name in SECTIONS}


def _check_shape(origin: str, settings: dict[str, Any]) -> None:
    for key, value in settings.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise GenlabError(f"{origin}: [{key}] must be a table")
        elif key in TOP_KEYS:
            if not isinstance(value, str):
                raise GenlabError(f"{origin}: {key} = {value!r} must be a string")
        else:
            raise GenlabError(f"{origin}: unknown key {key!r}; allowed: task, preset, {', '.join(SECTIONS)}")


def _hint(keys: dict[str, dict[str, Any]], section: str, name: str) -> str:
    """Which family has the key, or the closest keys of this section."""
    owners = [f.name for f in families() if name in section_keys(f)[section]]
    if owners:
        return f"; it belongs to the {' / '.join(owners)} famil{'y' if len(owners) == 1 else 'ies'}"
    close = difflib.get_close_matches(name, keys[section], n=3)
    return (
        f"; did you mean {' or '.join(f'{section}.{c}' for c in close)}?"
        if close
        else f"; [{section}] has: {', '.join(keys[section])}"
    )


def build(layers: list[Layer]) -> RunConfig:
    """A RunConfig (not yet validated) from settings layers, lowest priority first."""
    task, arch, preset_name = "lm", None, ""
    for origin, settings, _ in layers:
        _check_shape(origin, settings)
        task = settings.get("task", task)
        arch = settings.get("model", {}).get("arch", arch)
        preset_name = settings.get("preset", preset_name)
    family = lookup(task, arch)
    keys = section_keys(family)
    values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for origin, settings, lenient in layers:
        for section in SECTIONS:
            for name, raw in settings.get(section, {}).items():
                info = keys[section].get(name)
                if info is None:
                    if lenient:
                        continue
                    raise GenlabError(
                        f"unknown config key '{section}.{name}' for a {family.name} run (task "
                        f"{task!r}, model.arch {arch or family.model().arch!r}){_hint(keys, section, name)}"
                        f"; see `genlab presets --keys`"
                    )
                if isinstance(raw, dict) and info.type != "table":
                    raise GenlabError(f"{origin}: {section}.{name} must be a value, not a table")
                values[section][name] = coerce(info, raw)
    return RunConfig(
        task=task, preset=preset_name, **{name: getattr(family, name)(**values[name]) for name in SECTIONS}
    )


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """["train.lr=3e-4", "task=density"] -> {"train": {"lr": "3e-4"}, "task": "density"}."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise GenlabError(f"--set {item!r} must look like key=value, e.g. train.lr=3e-4")
        key, value = (s.strip() for s in item.split("=", 1))
        parts = key.split(".")
        if len(parts) == 1 and key in TOP_KEYS:
            out[key] = value
        elif len(parts) == 2 and parts[0] in SECTIONS:
            out.setdefault(parts[0], {})[parts[1]] = value
        else:
            raise GenlabError(
                f"unknown config key {key!r}; keys look like section.name with section one of: "
                f"{', '.join(SECTIONS)} (see `genlab presets --keys`)"
            )
    return out


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return {
        "task": cfg.task,
        "preset": cfg.preset,
        **{name: dataclasses.asdict(getattr(cfg, name)) for name in SECTIONS},
    }


def to_toml(cfg: RunConfig) -> str:
    return tomli_w.dumps(to_dict(cfg))


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise GenlabError(f"config file {str(p)!r} does not exist")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise GenlabError(f"config file {str(p)!r} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise GenlabError(f"config file {str(p)!r} is not valid TOML: {e}") from None


def from_toml_file(path: str | Path) -> RunConfig:
    return build([(str(path), load_toml(path), False)]).validate()


def preset_settings(name: str) -> dict[str, Any]:
    table = presets()
    if name not in table:
        raise GenlabError(f"unknown preset {name!r}; available: {', '.join(table)}")
    return {**table[name][1].settings, "preset": name}


def preset(name: str) -> RunConfig:
    return build([(f"preset {name}", preset_settings(name), False)])


def resolve(
    preset_name: str | None, config_file: str | None, overrides: list[str] | None, skip_model: bool = False
) -> RunConfig:
    """Preset, then config file, then --set overrides; validated. `skip_model`: the config file's and
    --set's model keys are left out (a run started from weights takes its model section from them)."""
    layers: list[Layer] = []
    if preset_name:
        layers.append((f"preset {preset_name}", preset_settings(preset_name), True))
    if config_file:
        layers.append((config_file, load_toml(config_file), False))
    layers.append(("--set", parse_overrides(overrides or []), False))
    if skip_model:
        layers = [(o, {k: v for k, v in st.items() if k != "model"}, lenient) for o, st, lenient in layers]
    return build(layers).validate()


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """A new config: `cfg` with --set overrides applied (not validated)."""
    return build([("config", to_dict(cfg), False), ("--set", parse_overrides(overrides), False)])


def apply_settings(cfg: RunConfig, settings: dict[str, Any], origin: str = "settings") -> RunConfig:
    """A new config: `cfg` with a settings dict applied (not validated)."""
    return build([("config", to_dict(cfg), False), (origin, settings, False)])
