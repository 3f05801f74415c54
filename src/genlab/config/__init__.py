"""Typed run configuration.

fields.py    one place per fact about a key: type, default, choices, range, meaning
run.py       RunConfig and the sections every family shares (DataConfig, TrainConfig, ModelArgs)
registry.py  families register their sections, task, model builder and presets
parse.py     presets, TOML and --set, layered; TOML out
"""

from genlab.config.fields import KeyInfo, Section, key_infos, opt
from genlab.config.parse import (
    apply_overrides,
    apply_settings,
    build,
    from_toml_file,
    load_toml,
    parse_overrides,
    preset,
    preset_settings,
    resolve,
    section_keys,
    to_dict,
    to_toml,
)
from genlab.config.registry import Family, Preset, families, family_of_args, lookup, presets, register, task_names
from genlab.config.run import DataConfig, ModelArgs, RunConfig, TrainConfig, parse_log, parse_policy

__all__ = [
    "KeyInfo",
    "Section",
    "key_infos",
    "opt",
    "apply_overrides",
    "apply_settings",
    "build",
    "from_toml_file",
    "load_toml",
    "parse_overrides",
    "preset",
    "preset_settings",
    "resolve",
    "section_keys",
    "to_dict",
    "to_toml",
    "Family",
    "Preset",
    "families",
    "family_of_args",
    "lookup",
    "presets",
    "register",
    "task_names",
    "DataConfig",
    "ModelArgs",
    "RunConfig",
    "TrainConfig",
    "parse_log",
    "parse_policy",
]
