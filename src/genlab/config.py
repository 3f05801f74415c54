"""Typed configuration: dataclasses, presets, TOML in and out, and `--set key=value` overrides.

Every field has a type and, where it matters, an allowed set or range; anything else is a
GenlabError naming the key, the value and what is allowed. Nothing here evaluates user text.
"""

from __future__ import annotations

import copy
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
    history: int = 32  # detection: feature frames T per decision, the current frame last
    test_fraction: float = 0.1  # density: rows held out for test when a file has no train/valid/test split
    image_size: int = 16  # diffusion: images are resized to image_size x image_size pixels
    image_channels: int = 1  # diffusion: 1 = grayscale, 3 = RGB


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
    dec_layers: int = 2  # detection, OadTR: decoder layers
    dec_heads: int = 4  # detection, OadTR: decoder attention heads
    future_steps: int = 4  # detection, OadTR: decoder queries, one per upcoming frame predicted
    dropout: float = 0.1  # detection models (OadTR, GRU/LSTM detector) only
    n_components: int = 10  # density, arch mixture: mixture components K
    n_masks: int = 1  # density, arch made: masks cycled over training batches; evaluation averages all
    mask_resample: str = "full"  # density, made with n_masks > 1: full | ordering | connectivity
    direct_connections: bool = False  # density, made: masked direct input -> output weights
    hidden_activation: str = "relu"  # density, made: relu | tanh (the MADE authors' Adult run uses tanh)
    # deepseek (arch deepseek; Hugging Face DeepseekV3Config names): d_model, n_layer, n_head, ffn_hidden (the
    # dense layers' SwiGLU width), rope_theta, norm_eps, tie_embeddings, init_std, attn_backend apply too
    q_lora_rank: int = 0  # deepseek, MLA: query latent rank; 0 = a plain query projection
    kv_lora_rank: int = 64  # deepseek, MLA: the cached KV latent width
    qk_nope_head_dim: int = 32  # deepseek, MLA: per-head query/key dims without RoPE
    qk_rope_head_dim: int = 16  # deepseek, MLA: per-head query dims with RoPE (+ one shared rope key)
    v_head_dim: int = 32  # deepseek, MLA: per-head value dims
    n_routed_experts: int = 8  # deepseek, MoE: routed experts
    n_shared_experts: int = 1  # deepseek, MoE: always-on experts (one SwiGLU of n x moe_intermediate_size)
    moe_intermediate_size: int = 64  # deepseek, MoE: each expert's SwiGLU width
    num_experts_per_tok: int = 2  # deepseek, MoE: routed experts per token (top-k)
    n_group: int = 1  # deepseek, MoE: expert groups for group-limited routing
    topk_group: int = 1  # deepseek, MoE: groups each token may use
    routed_scaling_factor: float = 1.0  # deepseek, MoE: gates are multiplied by this
    first_k_dense_replace: int = 1  # deepseek: the first k layers use a dense SwiGLU (ffn_hidden)
    balance: str = "aux_free"  # deepseek: aux_free (bias; + sequence-wise loss if alpha > 0) | seq_aux | aux | none
    balance_gamma: float = 0.001  # deepseek, aux_free: bias update speed; 0 freezes the bias
    balance_gamma_until: int = 0  # deepseek, aux_free: optimizer step from which gamma is 0; 0 = never
    balance_gamma_schedule: str = "constant"  # deepseek, aux_free: constant | lr (gamma follows the lr schedule)
    balance_alpha: float = 0.0  # deepseek: balance-loss weight (seq_aux: per document, aux: per micro-batch)
    mtp_depth: int = 0  # deepseek: multi-token prediction modules D (0 = none)
    mtp_lambda: float = 0.3  # deepseek: loss = main + lambda / D * sum of MTP losses
    mtp_lambda_late: float = 0.1  # deepseek: lambda from step mtp_lambda_until on
    mtp_lambda_until: int = 0  # deepseek: 0 = lambda stays mtp_lambda
    rope_scaling: str = "none"  # deepseek: none | yarn (on the rope dims; softmax scale x mscale^2)
    rope_factor: float = 40.0  # deepseek, yarn: context extension factor s
    rope_original_max_position_embeddings: int = 4096  # deepseek, yarn: the pre-extension context
    rope_beta_fast: float = 32.0  # deepseek, yarn
    rope_beta_slow: float = 1.0  # deepseek, yarn
    rope_mscale: float = 1.0  # deepseek, yarn: cos/sin scaled by mscale(s, mscale) / mscale(s, mscale_all_dim)
    rope_mscale_all_dim: float = 1.0  # deepseek, yarn: softmax scale x mscale(s, mscale_all_dim)^2
    # diffusion (arch unet): the text encoder uses d_model, n_layer, n_head; the UNet's attention uses n_head
    latent_channels: int = 4  # diffusion: channels of the autoencoder's latent
    vae_channels: int = 32  # diffusion: autoencoder base width (a multiple of 8)
    downsample: int = 2  # diffusion: autoencoder downsampling factor f (a power of two)
    unet_channels: int = 64  # diffusion: UNet base width (a multiple of 8)
    channel_mult: str = "1,2"  # diffusion: UNet width multipliers, one per resolution level
    res_blocks: int = 1  # diffusion: UNet residual blocks per level
    beta_schedule: str = "squaredcos_cap_v2"  # diffusion: linear | scaled_linear | squaredcos_cap_v2 (cosine)
    beta_start: float = 1e-4  # diffusion: first beta (linear, scaled_linear)
    beta_end: float = 0.02  # diffusion: last beta (linear, scaled_linear)
    diffusion_steps: int = 1000  # diffusion: training timesteps T


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
    peak_flops: float = 0.0  # FLOP/s behind the "mfu" metric; 0 = this machine's measured matmul rate
    future_weight: float = 0.5  # detection: weight of the future-frame cross-entropy (OadTR)
    spike_window: int = 100  # loss-spike guard: recent steps compared against; 0 = guard off
    spike_factor: float = 10.0  # a step whose loss or grad norm exceeds factor x the window's max is skipped
    nan_patience: int = 3  # a NaN/inf loss or gradient skips the step; this many in a row stop the run
    parallel: str = "ddp"  # ddp | fsdp (fully_shard per block): used only under torchrun (WORLD_SIZE > 1)
    early_stop_patience: int = 0  # evaluations without a lower val_loss before stopping; 0 = off. When on,
    #                               the best weights are kept in RUN/best/ and sample/eval use them
    optimizer: str = "adamw"  # adamw | adagrad | adadelta (rho = beta2) | sgd (plain)
    eps: float = 1e-8  # optimizer epsilon (all optimizers but sgd)
    lr_decay: float = 0.0  # schedule inverse: lr / (1 + lr_decay * step) (NADE/MADE's decrease constant)
    vae_steps: int = 500  # diffusion: the first vae_steps train the autoencoder, the rest the denoiser
    kl_weight: float = 1e-4  # diffusion: weight of the autoencoder's KL term (per summed squared error)
    cond_drop: float = 0.1  # diffusion: probability a caption is replaced by "" (classifier-free guidance)
    ema_decay: float = 0.999  # diffusion: EMA of the denoiser's weights, used for sampling and eval
    activation_checkpointing: str = "none"  # none | full | every:K | selective (models with `model.blocks`)
    precision: str = "fp32"  # fp32 | fp8 (DeepSeek-V3 block-scaled E4M3 Linears; emulated on CPU; genlab.ops.fp8)
    objective: str = "causal"  # lm: causal (next token) | masked (BERT) | any-order (random orderings); the
    #                            last two train a bidirectional Transformer for `genlab sample --infill`
    mask_prob: float = 0.15  # lm, objective masked: share of each sequence's tokens chosen for prediction


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

TASK_NAMES = ("lm", "detection", "density", "diffusion")  # the same names as genlab.tasks.TASKS

CHOICES = {
    "task": TASK_NAMES,
    "data.tokenizer": ("bpe", "byte"),
    "data.mode": ("packed", "padded"),
    "model.arch": ("transformer", "lstm", "gru", "oadtr",  # oadtr: detection only
                   "unet",  # diffusion only
                   "deepseek",  # lm: MLA + DeepSeekMoE + MTP (genlab.models.deepseek)
                   "bernoulli", "mixture", "fvsbn", "nade", "made"),  # density only (with transformer)
    "model.mask_resample": ("full", "ordering", "connectivity"),
    "model.hidden_activation": ("relu", "tanh"),
    "train.optimizer": ("adamw", "adagrad", "adadelta", "sgd"),
    "model.attn_backend": ("auto", "naive", "sdpa", "flash", "triton"),  # flash: genlab.ops.flash
    "train.precision": ("fp32", "fp8"),
    "train.objective": ("causal", "masked", "any-order"),  # genlab.data.objectives
    "train.parallel": ("ddp", "fsdp"),  # genlab.train.distributed
    "train.schedule": ("multistep", "cosine", "constant", "inverse"),
    "train.device": ("auto", "cpu", "cuda"),
    "model.beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2"),
    "model.balance": ("aux_free", "seq_aux", "aux", "none"),
    "model.balance_gamma_schedule": ("constant", "lr"),
    "model.rope_scaling": ("none", "yarn"),
}

# key: (low, high) inclusive; None = unbounded on that side.
RANGES = {
    "data.vocab_size": (260, 1 << 20),
    "data.packing_length": (2, 1 << 20),
    "data.val_fraction": (0.0, 0.5),
    "data.pack_buffer": (1, None),
    "data.history": (1, 4096),
    "data.test_fraction": (0.0, 0.5),
    "model.d_model": (1, None),
    "model.n_layer": (1, None),
    "model.n_head": (1, None),
    "model.n_kv_head": (0, None),
    "model.ffn_hidden": (0, None),
    "model.rope_theta": (1.0, None),
    "model.norm_eps": (0.0, 1.0),
    "model.init_std": (0.0, 10.0),
    "model.dec_layers": (1, 64),
    "model.dec_heads": (1, None),
    "model.future_steps": (1, 256),
    "model.dropout": (0.0, 0.9),
    "model.n_components": (1, 100_000),
    "model.n_masks": (1, 100_000),
    "model.q_lora_rank": (0, None),  # deepseek ranges: see models/deepseek/config.py for the cross-checks
    "model.kv_lora_rank": (1, None),
    "model.qk_nope_head_dim": (0, None),
    "model.qk_rope_head_dim": (2, None),
    "model.v_head_dim": (1, None),
    "model.n_routed_experts": (1, None),
    "model.n_shared_experts": (0, None),
    "model.moe_intermediate_size": (1, None),
    "model.num_experts_per_tok": (1, None),
    "model.n_group": (1, None),
    "model.topk_group": (1, None),
    "model.routed_scaling_factor": (0.0, 1000.0),
    "model.first_k_dense_replace": (0, None),
    "model.balance_gamma": (0.0, 1.0),
    "model.balance_gamma_until": (0, None),
    "model.balance_alpha": (0.0, 100.0),
    "model.mtp_depth": (0, 16),
    "model.mtp_lambda": (0.0, 100.0),
    "model.mtp_lambda_late": (0.0, 100.0),
    "model.mtp_lambda_until": (0, None),
    "model.rope_factor": (1.0, 1e6),
    "model.rope_original_max_position_embeddings": (1, None),
    "model.rope_beta_fast": (0.0, None),
    "model.rope_beta_slow": (0.0, None),
    "model.rope_mscale": (0.0, 100.0),
    "model.rope_mscale_all_dim": (0.0, 100.0),
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
    "train.peak_flops": (0.0, None),
    "train.future_weight": (0.0, 100.0),
    "train.spike_window": (0, 100_000),
    "train.spike_factor": (1.0, None),
    "train.nan_patience": (1, 1_000_000),
    "train.early_stop_patience": (0, None),
    "train.eps": (0.0, 1.0),
    "train.lr_decay": (0.0, None),
    "train.mask_prob": (0.01, 1.0),
    "data.image_size": (4, 512),
    "data.image_channels": (1, 3),
    "model.latent_channels": (1, 64),
    "model.vae_channels": (8, 1024),
    "model.downsample": (1, 64),
    "model.unet_channels": (8, 4096),
    "model.res_blocks": (1, 16),
    "model.beta_start": (1e-8, 0.5),
    "model.beta_end": (1e-8, 0.999),
    "model.diffusion_steps": (2, 100_000),
    "train.vae_steps": (0, None),
    "train.kl_weight": (0.0, 100.0),
    "train.cond_drop": (0.0, 1.0),
    "train.ema_decay": (0.0, 1.0),
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
    from genlab.train.activation_checkpoint import parse_policy

    parse_policy(cfg.train.activation_checkpointing)  # none | full | every:K | selective, or a GenlabError
    m = cfg.model
    if cfg.task == "detection" and m.arch not in ("oadtr", "gru", "lstm"):
        raise GenlabError(f"model.arch = {m.arch!r} cannot detect actions; for task detection choose one of: "
                          "oadtr, gru, lstm")
    density_only = ("bernoulli", "mixture", "fvsbn", "nade", "made")  # density also takes transformer
    if cfg.task == "density" and m.arch not in (*density_only, "transformer"):
        raise GenlabError(f"model.arch = {m.arch!r} is not a density model; for task density choose one of: "
                          f"{', '.join(density_only)}, transformer")
    if cfg.task != "density" and m.arch in density_only:
        raise GenlabError(f"model.arch = {m.arch!r} needs task = 'density' (task is {cfg.task!r})")
    if cfg.task != "detection" and m.arch == "oadtr":
        raise GenlabError(f"model.arch = 'oadtr' needs task = 'detection' (task is {cfg.task!r})")
    if m.arch == "oadtr":
        for heads, key in ((m.n_head, "n_head"), (m.dec_heads, "dec_heads")):
            if m.d_model % heads:
                raise GenlabError(f"model.d_model ({m.d_model}) must be divisible by model.{key} ({heads})")
    if cfg.task == "diffusion" or m.arch == "unet":
        _validate_diffusion(cfg)
    if m.arch == "deepseek":
        from genlab.models.deepseek.config import validate_deepseek

        validate_deepseek(cfg)
    if cfg.train.objective != "causal":
        obj = f"train.objective = {cfg.train.objective!r}"
        if cfg.task != "lm" or m.arch != "transformer":
            raise GenlabError(f"{obj} needs task = 'lm' with model.arch = 'transformer' (a bidirectional "
                              f"model); this run has task {cfg.task!r}, arch {m.arch!r}; or use train.objective=causal")
        if cfg.data.mode != "packed":
            raise GenlabError(f"{obj} needs data.mode = 'packed' (bidirectional attention would see padding)")
    if m.arch == "transformer":
        if m.d_model % m.n_head:
            raise GenlabError(f"model.d_model ({m.d_model}) must be divisible by model.n_head ({m.n_head})")
        if (m.d_model // m.n_head) % 2:
            raise GenlabError(f"head dim d_model/n_head = {m.d_model // m.n_head} must be even for RoPE")
        kv = m.n_kv_head or m.n_head
        if m.n_head % kv:
            raise GenlabError(f"model.n_head ({m.n_head}) must be a multiple of model.n_kv_head ({kv})")


def channel_mult(m: ModelConfig) -> tuple[int, ...]:
    """model.channel_mult "1,2,2" -> (1, 2, 2), or a GenlabError."""
    try:
        mult = tuple(int(x) for x in m.channel_mult.split(","))
    except ValueError:
        mult = ()
    if not mult or len(mult) > 6 or min(mult) < 1 or max(mult) > 16:
        raise GenlabError(f"model.channel_mult = {m.channel_mult!r} must be 1 to 6 comma-separated integers "
                          "from 1 to 16, e.g. '1,2'")
    return mult


def _validate_diffusion(cfg: RunConfig) -> None:
    m, d, t = cfg.model, cfg.data, cfg.train
    if cfg.task != "diffusion" or m.arch != "unet":
        raise GenlabError(f"task = {cfg.task!r} with model.arch = {m.arch!r}: task diffusion needs "
                          "model.arch = 'unet' and arch unet needs task = 'diffusion'")
    if d.image_channels not in (1, 3):
        raise GenlabError(f"data.image_channels = {d.image_channels} is not allowed; choose 1 (grayscale) or 3 (RGB)")
    if m.downsample & (m.downsample - 1):
        raise GenlabError(f"model.downsample = {m.downsample} must be a power of two (1, 2, 4, 8, ...)")
    mult = channel_mult(m)
    unit = m.downsample << (len(mult) - 1)
    if d.image_size % unit:
        raise GenlabError(f"data.image_size = {d.image_size} must be a multiple of downsample x 2^(levels-1) = "
                          f"{unit} (model.downsample {m.downsample}, {len(mult)} UNet levels)")
    for key, v in (("vae_channels", m.vae_channels), ("unet_channels", m.unet_channels)):
        if v % 8:
            raise GenlabError(f"model.{key} = {v} must be a multiple of 8 (group norm)")
    for width in (m.d_model, *(m.unet_channels * k for k in mult)):
        if width % m.n_head:
            raise GenlabError(f"width {width} (model.d_model or unet_channels x channel_mult) must be divisible "
                              f"by model.n_head ({m.n_head})")
    if m.beta_schedule != "squaredcos_cap_v2" and not m.beta_start < m.beta_end:
        raise GenlabError(f"model.beta_start ({m.beta_start}) must be below model.beta_end ({m.beta_end})")
    if not 1 <= t.vae_steps < t.steps:
        raise GenlabError(f"train.vae_steps = {t.vae_steps} must be from 1 to train.steps - 1 ({t.steps - 1}): "
                          "the autoencoder trains first, then the denoiser")


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
         "train": {"steps": 400, "batch_rows": 8, "lr": 2e-3, "warmup_steps": 40, "eval_every": 100,
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
    "ldm-digits": (
        "latent diffusion on scikit-learn's digits (16x16 -> 4x4x4 latents): KL autoencoder, then a text UNet",
        {"task": "diffusion",
         "data": {"image_size": 16, "image_channels": 1, "val_fraction": 0.2},
         "model": {"arch": "unet", "d_model": 32, "n_layer": 2, "n_head": 4, "latent_channels": 4,
                   "vae_channels": 16, "downsample": 4, "unet_channels": 32, "channel_mult": "1,2",
                   "res_blocks": 1, "beta_schedule": "squaredcos_cap_v2", "diffusion_steps": 1000},
         "train": {"steps": 2000, "vae_steps": 400, "batch_rows": 64, "lr": 1e-3, "warmup_steps": 50,
                   "schedule": "cosine", "min_lr_ratio": 0.1, "weight_decay": 0.0, "beta2": 0.999,
                   "kl_weight": 1e-4, "cond_drop": 0.1, "ema_decay": 0.995, "log_every": 50,
                   "eval_every": 500, "eval_batches": 8, "ckpt_every": 250, "keep_ckpts": 10, "spike_window": 0}},
    ),
    "oadtr-synth": (
        "OadTR online action detector on the synthetic streaming benchmark (64-d features, 8 actions)",
        {"task": "detection", "data": {"history": 32},
         "model": {"arch": "oadtr", "d_model": 64, "n_layer": 2, "n_head": 4, "dec_layers": 2, "dec_heads": 4,
                   "future_steps": 4, "dropout": 0.1},
         "train": {"steps": 4000, "batch_rows": 32, "lr": 2e-3, "warmup_steps": 40, "weight_decay": 1e-4,
                   "eval_every": 500, "eval_batches": 8, "ckpt_every": 500, "log_every": 20}},
    ),
    "gru-synth": (
        "GRU online detector (the RNN baseline, about OadTR's parameter count) on the synthetic benchmark",
        {"task": "detection", "data": {"history": 32},
         "model": {"arch": "gru", "d_model": 144, "n_layer": 1, "dropout": 0.1},
         "train": {"steps": 4000, "batch_rows": 32, "lr": 3e-3, "warmup_steps": 40, "weight_decay": 1e-4,
                   "eval_every": 500, "eval_batches": 8, "ckpt_every": 500, "log_every": 20}},
    ),
    "deepseek-tiny": (
        "DeepSeek-V3 in small: MLA + 16-expert MoE (top-4, aux-loss-free) + 1 MTP module, 4 x 128, BPE 2048",
        {"data": {"tokenizer": "bpe", "vocab_size": 2048, "packing_length": 256},
         "model": {"arch": "deepseek", "d_model": 128, "n_layer": 4, "n_head": 4, "ffn_hidden": 384,
                   "q_lora_rank": 64, "kv_lora_rank": 32, "qk_nope_head_dim": 32, "qk_rope_head_dim": 16,
                   "v_head_dim": 32, "n_routed_experts": 16, "n_shared_experts": 1, "moe_intermediate_size": 64,
                   "num_experts_per_tok": 4, "n_group": 4, "topk_group": 2, "routed_scaling_factor": 1.0,
                   "first_k_dense_replace": 1, "balance": "aux_free", "balance_gamma": 0.001,
                   "mtp_depth": 1, "mtp_lambda": 0.3, "tie_embeddings": False},
         "train": {"steps": 300, "batch_rows": 8, "lr": 2e-3, "warmup_steps": 30, "eval_every": 100,
                   "eval_batches": 16, "ckpt_every": 100}},
    ),
    "deepseek-v3-671b": (
        "the published DeepSeek-V3 configuration (671B total, 37B activated); for `genlab info` and export",
        {"data": {"tokenizer": "bpe", "vocab_size": 129280, "packing_length": 4096},
         "model": {"arch": "deepseek", "d_model": 7168, "n_layer": 61, "n_head": 128, "ffn_hidden": 18432,
                   "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
                   "v_head_dim": 128, "n_routed_experts": 256, "n_shared_experts": 1,
                   "moe_intermediate_size": 2048, "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4,
                   "routed_scaling_factor": 2.5, "first_k_dense_replace": 3, "balance": "aux_free",
                   "balance_gamma": 0.001, "balance_alpha": 1e-4, "mtp_depth": 1, "mtp_lambda": 0.3,
                   "norm_eps": 1e-6, "init_std": 0.006, "rope_theta": 10000.0, "rope_scaling": "yarn",
                   "rope_factor": 40.0, "rope_original_max_position_embeddings": 4096},
         "train": {"steps": 1000, "batch_rows": 1, "lr": 2.2e-4, "warmup_steps": 2000}},
    ),
}

# Density presets: the digits ones train in about a minute each on one CPU thread (tiny models: one
# thread beats two); eval_every 13 steps of 100 = one epoch of the 1297 training digits; early stopping
# after 20 epochs without a lower validation NLL. The -uci / -mnist ones follow the papers' setups.
_DIGITS_TRAIN = {"steps": 3000, "batch_rows": 100, "warmup_steps": 0, "schedule": "constant", "weight_decay": 0.0,
                 "grad_clip": 0.0, "eval_every": 13, "eval_batches": 100, "log_every": 13, "ckpt_every": 500,
                 "early_stop_patience": 20, "threads": 1}
_DENSITY_DATA = {"val_fraction": 0.1, "test_fraction": 0.1}  # for user files that hold one array of rows


def _with_train(name: str, **train) -> dict[str, Any]:
    """A copy of preset `name`'s settings with some train.* values replaced."""
    d = copy.deepcopy(PRESETS[name][1])
    d["train"] = {**d.get("train", {}), **train}
    return d


PRESETS.update({
    "infill-small": ("lm-small trained with the any-order objective: bidirectional, for `genlab sample --infill`",
                     _with_train("lm-small", objective="any-order")),
    "mlm-small": ("lm-small trained with BERT's masked-token objective (15%, 80/10/10), for `genlab sample --infill`",
                  _with_train("lm-small", objective="masked")),
})

PRESETS.update({
    "fvsbn-digits": (
        "density: FVSBN (a logistic regression per dimension) on binarized 8x8 digits",
        {"task": "density", "data": _DENSITY_DATA, "model": {"arch": "fvsbn"},
         "train": {**_DIGITS_TRAIN, "lr": 1e-2}},
    ),
    "nade-digits": (
        "density: NADE, 100 sigmoid hidden units, on binarized 8x8 digits",
        {"task": "density", "data": _DENSITY_DATA, "model": {"arch": "nade", "d_model": 100},
         "train": {**_DIGITS_TRAIN, "lr": 5e-3}},
    ),
    "made-digits": (
        "density: MADE, 2 x 256 ReLU, direct connections, 8 masks (order/connectivity-agnostic), on digits",
        {"task": "density", "data": _DENSITY_DATA,
         "model": {"arch": "made", "d_model": 256, "n_layer": 2, "n_masks": 8, "mask_resample": "full",
                   "direct_connections": True},
         "train": {**_DIGITS_TRAIN, "lr": 3e-3}},
    ),
    "transformer-digits": (
        "density: genlab's Transformer (2 x 64, 4 heads) over the 64 binary positions of the digits",
        {"task": "density", "data": _DENSITY_DATA,
         "model": {"arch": "transformer", "d_model": 64, "n_layer": 2, "n_head": 4},
         "train": {**_DIGITS_TRAIN, "lr": 3e-3}},
    ),
    "made-uci": (
        "density: MADE as the paper's UCI runs (1 x 500 ReLU, direct, 32 masks, Adadelta); --set data.path=X.npz",
        {"task": "density", "data": _DENSITY_DATA,
         "model": {"arch": "made", "d_model": 500, "n_layer": 1, "n_masks": 32, "mask_resample": "full",
                   "direct_connections": True},
         "train": {"steps": 200_000, "batch_rows": 100, "optimizer": "adadelta", "lr": 1.0, "beta2": 0.95,
                   "eps": 1e-5, "schedule": "constant", "warmup_steps": 0, "weight_decay": 0.0, "grad_clip": 0.0,
                   "eval_every": 20, "eval_batches": 1000, "log_every": 20, "ckpt_every": 2000,
                   "early_stop_patience": 30}},
    ),
    "nade-uci": (
        "density: NADE as the paper's UCI runs (500 sigmoid units, SGD, decreasing lr); --set data.path=X.npz",
        {"task": "density", "data": _DENSITY_DATA, "model": {"arch": "nade", "d_model": 500},
         "train": {"steps": 200_000, "batch_rows": 100, "optimizer": "sgd", "lr": 5e-3, "schedule": "inverse",
                   "lr_decay": 1e-6, "warmup_steps": 0, "weight_decay": 0.0, "grad_clip": 0.0, "eval_every": 20,
                   "eval_batches": 1000, "log_every": 20, "ckpt_every": 2000, "early_stop_patience": 30}},
    ),
    "made-mnist": (
        "density: MADE's best binarized-MNIST run (2 x 8000, 32 masks, Adagrad 0.01); --set data.path=mnist.npz",
        {"task": "density", "data": _DENSITY_DATA,
         "model": {"arch": "made", "d_model": 8000, "n_layer": 2, "n_masks": 32, "mask_resample": "full",
                   "direct_connections": True},
         "train": {"steps": 1_000_000, "batch_rows": 100, "optimizer": "adagrad", "lr": 0.01, "eps": 1e-6,
                   "schedule": "constant", "warmup_steps": 0, "weight_decay": 0.0, "grad_clip": 0.0,
                   "eval_every": 500, "eval_batches": 10, "log_every": 50, "ckpt_every": 500,
                   "early_stop_patience": 30}},
    ),
})

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
