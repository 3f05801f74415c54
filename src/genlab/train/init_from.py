"""`genlab train --init-from SRC`: a new run that starts from another run's weights.

SRC is a genlab run directory (its best checkpoint, else its newest intact one) or a Hugging Face
directory, which the CLI first imports once into the cache (GENLAB_CACHE/imports/, see
`import_cache_dir`) so the library only ever reads genlab run directories. The new run takes its
model section and tokenizer from SRC and its data and training sections from the preset, --config and
--set; a --set / --config model key that changes a parameter's shape is refused (one line).
Unlike `--resume`, which continues a run in place (same config, its optimizer state and data
position), --init-from starts a new run dir at step 0 with a fresh optimizer.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from genlab.config import RunConfig, build, from_toml_file, load_toml, parse_overrides, resolve, to_dict
from genlab.data.corpus import cache_root
from genlab.errors import GenlabError
from genlab.train import checkpoint
from genlab.train.rundir import BEST_DIR, CONFIG

HF_CONFIG = "config.json"


def import_cache_dir(hf_dir: str | Path) -> Path:
    """Where the CLI keeps the genlab import of an HF directory: keyed by its path and its files' sizes
    and modification times, so a changed directory is imported again."""
    p = Path(hf_dir).expanduser().resolve()
    h = hashlib.sha256(str(p).encode())
    for f in sorted(p.iterdir()):
        if f.is_file() and (f.suffix in (".json", ".safetensors", ".jinja") or f.name == "tokenizer.model"):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return cache_root() / "imports" / h.hexdigest()[:20]


def is_hf_dir(src: str | Path) -> bool:
    p = Path(src).expanduser()
    return (p / HF_CONFIG).is_file() and not (p / CONFIG).is_file()


def source_run(src: str) -> Path:
    """The genlab run directory behind train.init_from (an HF directory: its import in the cache)."""
    p = Path(src).expanduser()
    if (p / CONFIG).is_file():
        return p
    if (p / HF_CONFIG).is_file():
        cached = import_cache_dir(p)
        if (cached / CONFIG).is_file():
            return cached
        raise GenlabError(
            f"train.init_from = {src!r} is a Hugging Face directory that has not been imported: start the run with "
            f"`genlab train --init-from {src}` (it imports it), or `genlab import {src} RUN` and --init-from RUN"
        )
    what = "does not exist" if not p.exists() else "is neither a genlab run directory (config.toml) nor a Hugging Face"
    if p.exists():
        what += " directory (config.json)"
    raise GenlabError(f"train.init_from = {src!r} {what}")


def source_config(src: str) -> RunConfig:
    run = source_run(src)
    try:
        return from_toml_file(run / CONFIG)
    except GenlabError as e:
        raise GenlabError(f"train.init_from = {src!r}: its config.toml cannot be used ({e})") from None


def adopt_model(cfg: RunConfig, src: str, user_model: dict) -> RunConfig:
    """`cfg` with SRC's model section, then the user's explicit model keys (--config / --set) on top;
    refused when those change any parameter's shape (checked by building both models on the meta device)."""
    src_cfg = source_config(src)
    if src_cfg.family.build_model is None:
        raise GenlabError(
            f"train.init_from = {src!r} is a {src_cfg.family.name} run; only language models start from one"
        )
    if getattr(src_cfg.train, "objective", "causal") != "causal":
        raise GenlabError(
            f"train.init_from = {src!r} was trained with objective {src_cfg.train.objective!r}; start from a "
            "causal language model"
        )
    if getattr(src_cfg.train, "lora_rank", 0):
        raise GenlabError(f"train.init_from = {src!r} is a LoRA run (adapters only): `genlab merge` it first")
    settings = to_dict(cfg)
    settings["model"] = {**to_dict(src_cfg)["model"], **user_model}
    new = build([("--init-from", settings, False)]).validate()
    before, after = _shapes(src_cfg), _shapes(new)
    if before != after:
        changed = sorted(k for k, v in user_model.items() if to_dict(src_cfg)["model"].get(k) != v)
        raise GenlabError(
            f"--init-from {src}: model key(s) {', '.join(changed) or '(from the preset)'} change the shape of the "
            "weights; a run started from weights keeps the source's shape (drop those model keys)"
        )
    return new


def resolve_config(preset: str | None, config_file: str | None, overrides: list[str]) -> RunConfig:
    """The config of a run started from weights: preset, --config and --set without their model keys,
    then SRC's model section with the user's model keys (--config, then --set) on top (adopt_model)."""
    cfg = resolve(preset, config_file, overrides, skip_model=True)
    if not isinstance(getattr(cfg.train, "init_from", None), str) or not cfg.train.init_from:
        return resolve(preset, config_file, overrides)
    user_model = dict(load_toml(config_file).get("model", {})) if config_file else {}
    user_model.update(parse_overrides(overrides).get("model", {}))
    return adopt_model(cfg, cfg.train.init_from, user_model)


def _shapes(cfg: RunConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = cfg.family.build_model(cfg.model, 1000, 64, causal=True)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def source_checkpoint(src: str) -> Path:
    run = source_run(src)
    ckpt = checkpoint.latest_valid(run / BEST_DIR) or checkpoint.latest_valid(run)
    if ckpt is None:
        raise GenlabError(f"train.init_from = {src!r} has no complete checkpoint")
    return ckpt


def load_weights(model: torch.nn.Module, src: str) -> None:
    """SRC's weights into `model`. Rows a grown vocabulary added (a chat template's special tokens) start
    at the mean of the source's rows, as is usual when tokens are added to a pretrained model."""
    ckpt = source_checkpoint(src)
    problem = checkpoint.verify(ckpt)
    if problem:
        raise GenlabError(f"train.init_from = {src!r}: checkpoint {ckpt.name} cannot be used: {problem}")
    sd = load_file(str(ckpt / "model.safetensors"))
    own = model.state_dict()
    # tied weights (a shared embedding and head) are one tensor, saved under one of their names
    by_storage: dict[int, list[str]] = {}
    for k, t in own.items():
        by_storage.setdefault(t.data_ptr(), []).append(k)
    for names in by_storage.values():
        saved = next((k for k in names if k in sd), None)
        for k in names:
            if saved is not None and k not in sd and own[k].numel():
                sd[k] = sd[saved]
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing or unexpected:
        raise GenlabError(
            f"train.init_from = {src!r}: its weights do not fit this model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]})"
        )
    out = {}
    for k, t in own.items():
        s = sd[k].to(t.dtype)
        if s.shape != t.shape:
            if s.shape[1:] != t.shape[1:] or s.shape[0] > t.shape[0]:
                raise GenlabError(
                    f"train.init_from = {src!r}: {k} has shape {tuple(s.shape)}, this model {tuple(t.shape)}"
                )
            extra = s.mean(0, keepdim=True).expand(t.shape[0] - s.shape[0], *s.shape[1:])
            s = torch.cat([s, extra])
        out[k] = s
    model.load_state_dict(out, strict=True)


def source_tokenizer(src: str) -> Path:
    path = source_run(src) / "tokenizer.json"
    if not path.is_file():
        raise GenlabError(f"train.init_from = {src!r} has no tokenizer.json")
    return path


def absolute(src: str) -> str:
    return os.path.abspath(os.path.expanduser(src)) if src else src
