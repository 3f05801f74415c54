"""Typed configuration: dataclasses, presets, TOML in and out, and `--set key=value` overrides.

Every field has a type and, where it matters, an allowed set or range; anything else is a
GenlabError naming the key, the value and what is allowed. Nothing here evaluates user text.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genlab.errors import GenlabError


@dataclass
class DataConfig:
    path: str = ""  # "" = embedded corpus; else a .txt file, a directory of text files, or .jsonl
    tokenizer: str = "bpe"  # bpe | byte
    vocab_size: int = 2048  # BPE only; the byte tokenizer always has 256
    packing_length: int = 256  # tokens per packed row
    mode: str = "packed"  # packed | padded (padded is the benchmark baseline only)
    val_fraction: float = 0.05  # fraction of documents held out, chosen by a hash of the document
    pack_buffer: int = 1000  # documents packed together by best-fit-decreasing


@dataclass
class ModelConfig:
    arch: str = "transformer"  # transformer | lstm | gru
    d_model: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 0  # 0 = same as n_head (multi-head); fewer = grouped-query attention
    ffn_hidden: int = 0  # SwiGLU width; 0 = about 8/3 d_model rounded up to a multiple of 32
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    attn_backend: str = "auto"  # auto | naive | sdpa
    init_std: float = 0.02


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_rows: int = 8  # packed rows per micro-batch
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine floor
    warmup_steps: int = 50
    schedule: str = "multistep"  # multistep | cosine | constant
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 20
    ckpt_every: int = 500
    keep_ckpts: int = 2
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # 0 = leave torch's default


@dataclass
class RunConfig:
    task: str = "lm"
    preset: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "RunConfig":
        _validate(self)
        return self


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}

TASK_NAMES = ("lm",)  # the same names as genlab.tasks.TASKS

CHOICES = {
    "task": TASK_NAMES,
    "data.tokenizer": ("bpe", "byte"),
    "data.mode": ("packed", "padded"),
    "model.arch": ("transformer", "lstm", "gru"),
    "model.attn_backend": ("auto", "naive", "sdpa"),
    "train.schedule": ("multistep", "cosine", "constant"),
    "train.device": ("auto", "cpu", "cuda"),
}

# key: (low, high) inclusive; None = unbounded on that side.
RANGES = {
    "data.vocab_size": (260, 1 << 20),
    "data.packing_length": (2, 1 << 20),
    "data.val_fraction": (0.0, 0.5),
    "data.pack_buffer": (1, None),
    "model.d_model": (1, None),
    "model.n_layer": (1, None),
    "model.n_head": (1, None),
    "model.n_kv_head": (0, None),
    "model.ffn_hidden": (0, None),
    "model.rope_theta": (1.0, None),
    "model.norm_eps": (0.0, 1.0),
    "model.init_std": (0.0, 10.0),
    "train.steps": (1, None),
    "train.batch_rows": (1, None),
    "train.grad_accum": (1, None),
    "train.lr": (0.0, 10.0),
    "train.min_lr_ratio": (0.0, 1.0),
    "train.warmup_steps": (0, None),
    "train.weight_decay": (0.0, 10.0),
    "train.beta1": (0.0, 0.999999),
    "train.beta2": (0.0, 0.999999),
    "train.grad_clip": (0.0, None),
    "train.log_every": (1, None),
    "train.eval_every": (1, None),
    "train.eval_batches": (1, None),
    "train.ckpt_every": (1, None),
    "train.keep_ckpts": (1, None),
    "train.threads": (0, 1024),
}


def _validate(cfg: RunConfig) -> None:
    for key, allowed in CHOICES.items():
        value = get_key(cfg, key)
        if value not in allowed:
            raise GenlabError(f"{key} = {value!r} is not allowed; choose one of: {', '.join(allowed)}")
    for key, (lo, hi) in RANGES.items():
        value = get_key(cfg, key)
        if isinstance(value, float) and not math.isfinite(value):
            raise GenlabError(f"{key} = {value!r} must be a finite number")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            span = f"{lo} to {hi}" if hi is not None else f">= {lo}"
            raise GenlabError(f"{key} = {value!r} is out of range; allowed: {span}")
    m = cfg.model
    if m.arch == "transformer":
        if m.d_model % m.n_head:
            raise GenlabError(f"model.d_model ({m.d_model}) must be divisible by model.n_head ({m.n_head})")
        if (m.d_model // m.n_head) % 2:
            raise GenlabError(f"head dim d_model/n_head = {m.d_model // m.n_head} must be even for RoPE")
        kv = m.n_kv_head or m.n_head
        if m.n_head % kv:
            raise GenlabError(f"model.n_head ({m.n_head}) must be a multiple of model.n_kv_head ({kv})")


def get_key(cfg: RunConfig, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def all_keys() -> list[str]:
    keys = [f.name for f in dataclasses.fields(RunConfig) if f.name not in SECTIONS]
    for name, cls in SECTIONS.items():
        keys += [f"{name}.{f.name}" for f in dataclasses.fields(cls)]
    return keys


def _coerce(key: str, typ: Any, raw: Any) -> Any:
    """Convert a TOML value or a --set string to the field's type, or raise a GenlabError."""
    typename = typ if isinstance(typ, str) else typ.__name__
    if typename == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false", "1", "0", "yes", "no"):
            return raw.lower() in ("true", "1", "yes")
        raise GenlabError(f"{key} = {raw!r} must be true or false")
    if typename == "int":
        if isinstance(raw, bool):
            raise GenlabError(f"{key} = {raw!r} must be an integer")
        if isinstance(raw, int):
            return raw
        if isinstance(raw, str):
            try:
                return int(raw.replace("_", ""))
            except ValueError:
                pass
        raise GenlabError(f"{key} = {raw!r} must be an integer")
    if typename == "float":
        if isinstance(raw, bool):
            raise GenlabError(f"{key} = {raw!r} must be a number")
        if isinstance(raw, (int, float)):
            return float(raw)
        if isinstance(raw, str):
            try:
                return float(raw)
            except ValueError:
                pass
        raise GenlabError(f"{key} = {raw!r} must be a number")
    if typename == "str":
        if isinstance(raw, str):
            return raw
        raise GenlabError(f"{key} = {raw!r} must be a string")
    raise GenlabError(f"{key}: unsupported type {typename}")  # pragma: no cover


def _field_types(cls: type) -> dict[str, Any]:
    return {f.name: f.type for f in dataclasses.fields(cls)}


def set_key(cfg: RunConfig, key: str, raw: Any) -> None:
    parts = key.split(".")
    if len(parts) == 1 and parts[0] in ("task", "preset"):
        setattr(cfg, parts[0], _coerce(key, "str", raw))
        return
    if len(parts) != 2 or parts[0] not in SECTIONS:
        raise GenlabError(f"unknown config key {key!r}; keys look like section.name with section one of: "
                          f"{', '.join(SECTIONS)} (see `genlab presets --keys`)")
    section, name = parts
    types = _field_types(SECTIONS[section])
    if name not in types:
        raise GenlabError(f"unknown config key {key!r}; allowed in [{section}]: {', '.join(types)}")
    setattr(getattr(cfg, section), name, _coerce(key, types[name], raw))


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    for item in overrides:
        if "=" not in item:
            raise GenlabError(f"--set {item!r} must look like key=value, e.g. train.lr=3e-4")
        key, value = item.split("=", 1)
        set_key(cfg, key.strip(), value.strip())
    return cfg


def apply_dict(cfg: RunConfig, data: dict[str, Any], origin: str) -> RunConfig:
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise GenlabError(f"{origin}: [{key}] must be a table")
            for name, v in value.items():
                if isinstance(v, dict):
                    raise GenlabError(f"{origin}: {key}.{name} must be a value, not a table")
                set_key(cfg, f"{key}.{name}", v)
        elif key in ("task", "preset"):
            set_key(cfg, key, value)
        else:
            raise GenlabError(f"{origin}: unknown key {key!r}; allowed: task, preset, {', '.join(SECTIONS)}")
    return cfg


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


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    s = str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{s}"'


def to_toml(cfg: RunConfig) -> str:
    lines = [f"task = {_toml_value(cfg.task)}", f"preset = {_toml_value(cfg.preset)}"]
    for name in SECTIONS:
        lines.append(f"\n[{name}]")
        for f in dataclasses.fields(getattr(cfg, name)):
            lines.append(f"{f.name} = {_toml_value(getattr(getattr(cfg, name), f.name))}")
    return "\n".join(lines) + "\n"


def from_toml_file(path: str | Path) -> RunConfig:
    return apply_dict(RunConfig(), load_toml(path), str(path)).validate()


# ----------------------------------------------------------------------------------- presets

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "lm-tiny": (
        "dense Transformer, 2 layers x 128 wide, byte tokens; trains in about a minute",
        {"data": {"tokenizer": "byte", "packing_length": 128},
         "model": {"d_model": 128, "n_layer": 2, "n_head": 4, "n_kv_head": 2},
         "train": {"steps": 150, "batch_rows": 8, "lr": 3e-3, "warmup_steps": 15, "eval_every": 50,
                   "eval_batches": 8, "ckpt_every": 50}},
    ),
    "lm-small": (
        "demo default: dense Transformer, 4 layers x 256 wide, BPE 2048, GQA; about 3 minutes",
        {"data": {"tokenizer": "bpe", "vocab_size": 2048, "packing_length": 256},
         "model": {"d_model": 256, "n_layer": 4, "n_head": 8, "n_kv_head": 4, "tie_embeddings": True},
         "train": {"steps": 300, "batch_rows": 8, "lr": 2e-3, "warmup_steps": 30, "eval_every": 100,
                   "eval_batches": 16, "ckpt_every": 100}},
    ),
    "lstm-tiny": (
        "LSTM baseline, 2 layers x 256 wide, byte tokens",
        {"data": {"tokenizer": "byte", "packing_length": 128},
         "model": {"arch": "lstm", "d_model": 256, "n_layer": 2},
         "train": {"steps": 150, "batch_rows": 8, "lr": 3e-3, "warmup_steps": 15, "eval_every": 50,
                   "eval_batches": 8, "ckpt_every": 50}},
    ),
    "gru-tiny": (
        "GRU baseline, 2 layers x 256 wide, byte tokens",
        {"data": {"tokenizer": "byte", "packing_length": 128},
         "model": {"arch": "gru", "d_model": 256, "n_layer": 2},
         "train": {"steps": 150, "batch_rows": 8, "lr": 3e-3, "warmup_steps": 15, "eval_every": 50,
                   "eval_batches": 8, "ckpt_every": 50}},
    ),
    "lm-bench": (
        "the benchmark shape: d_model 512, 8 layers, 8 heads, SwiGLU 1376, BPE 8192, rows of 512",
        {"data": {"tokenizer": "bpe", "vocab_size": 8192, "packing_length": 512},
         "model": {"d_model": 512, "n_layer": 8, "n_head": 8, "ffn_hidden": 1376},
         "train": {"steps": 200, "batch_rows": 8, "lr": 1e-3, "warmup_steps": 20}},
    ),
}

DEMO_PRESET = "lm-small"


def preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise GenlabError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    cfg = apply_dict(RunConfig(), PRESETS[name][1], f"preset {name}")
    cfg.preset = name
    return cfg


def resolve(preset_name: str | None, config_file: str | None, overrides: list[str]) -> RunConfig:
    """Preset, then config file, then --set overrides; validated."""
    cfg = preset(preset_name) if preset_name else RunConfig()
    if config_file:
        apply_dict(cfg, load_toml(config_file), config_file)
    apply_overrides(cfg, overrides or [])
    return cfg.validate()
