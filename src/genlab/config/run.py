"""The run's config: what every family shares (data source, training loop) plus the family's own
model section. Families extend DataConfig / TrainConfig with their own keys and define a
ModelArgs subclass; RunConfig holds the instances of the family the task and arch select."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from genlab.config.fields import Section, opt
from genlab.config.registry import Family, lookup
from genlab.errors import GenlabError


@dataclass
class DataConfig(Section):
    path: str = opt("", "the corpus: '' = the family's embedded default, else a file or directory")
    val_fraction: float = opt(0.05, "share of documents held out for validation, chosen by a hash", 0.0, 0.5)


@dataclass
class ModelArgs(Section):
    """Base of each family's model section; `arch` is a Literal of the family's architectures."""

    arch: str = "transformer"


@dataclass
class TrainConfig(Section):
    steps: int = opt(1000, "optimizer steps", 1)
    batch_rows: int = opt(8, "rows per micro-batch (packed token rows, images, feature windows)", 1)
    grad_accum: int = opt(1, "micro-batches per optimizer step", 1)
    lr: float = opt(1e-3, "peak learning rate", 0.0, 10.0)
    min_lr_ratio: float = opt(0.1, "cosine schedule: final lr as a share of the peak", 0.0, 1.0)
    warmup_steps: int = opt(50, "linear warmup steps", 0)
    schedule: Literal["multistep", "cosine", "constant", "inverse"] = opt(
        "multistep",
        "lr schedule after warmup (multistep: DeepSeek LLM's 80%/90% steps to 31.6%/10%; "
        "inverse: lr / (1 + lr_decay * step))",
    )
    weight_decay: float = opt(0.1, "decoupled weight decay (matrices only)", 0.0, 10.0)
    beta1: float = opt(0.9, "AdamW beta1", 0.0, 0.999999)
    beta2: float = opt(0.95, "AdamW beta2 (Adadelta: rho)", 0.0, 0.999999)
    grad_clip: float = opt(1.0, "clip the global gradient norm to this; 0 = off", 0.0)
    seed: int = opt(0, "seed of the data order, initialisation and sampling", 0)
    log_every: int = opt(10, "steps between metrics.jsonl records", 1)
    eval_every: int = opt(200, "steps between validation evaluations", 1)
    eval_batches: int = opt(20, "validation batches per evaluation", 1)
    ckpt_every: int = opt(500, "steps between checkpoints", 1)
    keep_ckpts: int = opt(2, "complete checkpoints kept (the newest)", 1)
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "where to train (auto: cuda when available)")
    threads: int = opt(0, "torch CPU threads; 0 = torch's default", 0, 1024)
    peak_flops: float = opt(0.0, "FLOP/s behind the mfu metric; 0 = this machine's measured matmul rate", 0.0)
    spike_window: int = opt(100, "loss-spike guard: recent steps compared against; 0 = guard off", 0, 100_000)
    spike_factor: float = opt(10.0, "a step whose loss or grad norm exceeds factor x the window max is skipped", 1.0)
    nan_patience: int = opt(3, "NaN/inf steps in a row (each skipped) before the run stops", 1, 1_000_000)
    parallel: Literal["ddp", "fsdp"] = opt("ddp", "data parallelism under torchrun (fsdp: fully_shard per block)")
    early_stop_patience: int = opt(
        0, "evaluations without a lower val_loss before stopping (best weights kept in RUN/best/); 0 = off", 0
    )
    optimizer: Literal["adamw", "adagrad", "adadelta", "sgd"] = opt("adamw", "optimizer (adadelta: rho = beta2)")
    eps: float = opt(1e-8, "optimizer epsilon (all but sgd)", 0.0, 1.0)
    lr_decay: float = opt(0.0, "schedule inverse: lr / (1 + lr_decay * step) (NADE/MADE's decrease constant)", 0.0)
    activation_checkpointing: str = opt("none", "none | full | every:K | selective (models with blocks)")
    precision: Literal["fp32", "bf16", "fp8", "auto"] = opt(
        "auto",
        "fp32: no autocast; bf16: bf16 autocast (slow on CPUs without AMX); fp8: DeepSeek-V3 block-scaled E4M3 "
        "Linears (emulated on CPU; + bf16 autocast on CUDA); auto: bf16 on CUDA, fp32 on CPU",
    )
    log: str = opt("jsonl", "live loggers, comma-separated: jsonl (always on), tensorboard (RUN/tensorboard/), wandb")
    compile: bool = opt(
        False,
        "torch.compile each block (dynamic shapes; attention stays eager); falls back to eager with a warning "
        "where it cannot compile (no C++ compiler, selective checkpointing)",
    )

    def check(self, cfg) -> None:
        parse_policy(self.activation_checkpointing)
        parse_log(self.log)


def parse_policy(text: str) -> tuple[str, int]:
    """train.activation_checkpointing: 'none' | 'full' | 'every:K' | 'selective' -> (kind, K)."""
    text = str(text).strip()
    if text in ("none", "full", "selective"):
        return text, 1
    if text.startswith("every:"):
        k = text.split(":", 1)[1]
        if k.isdigit() and int(k) >= 1:
            return "every", int(k)
    raise GenlabError(
        f"activation checkpointing policy {text!r} is not allowed; "
        f"use none, full, every:K (K a whole number >= 1) or selective"
    )


LOGGERS = ("jsonl", "tensorboard", "wandb")


def parse_log(text: str) -> tuple[str, ...]:
    """train.log ('jsonl', 'jsonl,tensorboard', 'tensorboard,wandb', ...) -> the loggers, jsonl first."""
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    bad = [n for n in names if n not in LOGGERS]
    if bad:
        raise GenlabError(f"train.log: unknown logger {bad[0]!r}; choose from {', '.join(LOGGERS)} (comma-separated)")
    return ("jsonl",) + tuple(dict.fromkeys(n for n in names if n != "jsonl"))


SECTIONS = ("data", "model", "train")


@dataclass
class RunConfig:
    """task + preset name + the three sections of the family that (task, model.arch) select.
    Build one with `genlab.config.build` (from settings) or `RunConfig.default(task)`."""

    task: str = "lm"
    preset: str = ""
    data: DataConfig = field(default=None)  # type: ignore[assignment]
    model: ModelArgs = field(default=None)  # type: ignore[assignment]
    train: TrainConfig = field(default=None)  # type: ignore[assignment]

    def __post_init__(self):
        if self.data is None or self.model is None or self.train is None:
            fam = lookup(self.task, self.model.arch if self.model is not None else None)
            self.data = self.data if self.data is not None else fam.data()
            self.model = self.model if self.model is not None else fam.model()
            self.train = self.train if self.train is not None else fam.train()

    @property
    def family(self) -> Family:
        return lookup(self.task, self.model.arch)

    def validate(self) -> RunConfig:
        fam = self.family
        for name, cls in (("data", fam.data), ("model", fam.model), ("train", fam.train)):
            section = getattr(self, name)
            if type(section) is not cls:
                raise GenlabError(f"[{name}] of a {fam.name} run must be {cls.__name__}, not {type(section).__name__}")
            section.validate_fields(name)
        for name in SECTIONS:
            getattr(self, name).check(self)
        return self
