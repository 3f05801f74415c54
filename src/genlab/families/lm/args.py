"""Config sections of the language-model family: dense Transformer and LSTM/GRU baselines.

DecoderArgs holds what every decoder-only Transformer here shares (the deepseek family extends it)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from genlab.config import DataConfig, ModelArgs, TrainConfig, opt
from genlab.errors import GenlabError
from genlab.train.flops import LayerShapes, attention_shapes, swiglu_shapes
from genlab.train.lora import parse_targets as parse_lora_targets


@dataclass
class LMData(DataConfig):
    path: str = opt(
        "",
        "corpus: '' = embedded (pydoc topics + stdlib sources); a .txt file, a directory of text files, .jsonl, "
        "or a DATA_DIR (genlab prepare)",
    )
    tokenizer: Literal["bpe", "byte"] = opt("bpe", "byte-level BPE trained on the corpus, or plain bytes (256)")
    vocab_size: int = opt(2048, "BPE vocabulary size (the byte tokenizer always has 256)", 260, 1 << 20)
    packing_length: int = opt(256, "tokens per packed row", 2, 1 << 20)
    pack_buffer: int = opt(1000, "documents packed together by best-fit-decreasing", 1)
    mix: dict[str, float] = opt(
        {},
        "a mixture of prepared DATA_DIRs (one tokenizer): DATA_DIR -> weight > 0, each row drawn from a source "
        "with probability weight / sum; {} = off (data.path); --set data.mix=/data/a=0.7,/data/b=0.3",
    )

    def check(self, cfg) -> None:
        """data.mix: weights > 0 and data.path unset. That each path is a prepared DATA_DIR of the same
        tokenizer is checked when the data is opened (genlab.data.mix.open_mix), so a run whose corpora
        moved still loads for sampling."""
        if not self.mix:
            return
        if self.path:
            raise GenlabError(
                f"data.mix and data.path = {self.path!r} exclude each other; put {self.path!r} into data.mix "
                "with a weight, or unset data.mix (--set data.mix=)"
            )
        for path, w in self.mix.items():
            if not w > 0:
                raise GenlabError(f"data.mix[{path!r}] = {w!r}: a weight must be a finite number > 0")


@dataclass
class LMTrain(TrainConfig):
    lora_rank: int = opt(
        0, "LoRA adapters' rank r: 0 = off (full fine-tuning); > 0 freezes the base (train.init_from)", 0
    )
    lora_alpha: float = opt(16.0, "LoRA scale alpha: the update is (alpha / r) B A", 1e-6)
    lora_dropout: float = opt(0.0, "dropout on the LoRA adapters' input", 0.0, 0.99)
    lora_targets: str = opt(
        "attention,mlp", "projections LoRA adapts, comma-separated: attention, mlp (dense and shared experts), experts"
    )

    def check(self, cfg) -> None:
        super().check(cfg)
        targets = parse_lora_targets(self.lora_targets)
        if not self.lora_rank:
            return
        arch = cfg.model.arch
        if arch not in ("transformer", "deepseek"):
            raise GenlabError(
                f"train.lora_rank = {self.lora_rank}: LoRA adapts Transformer projections; "
                f"model.arch = {arch!r} has none (use transformer or deepseek, or lora_rank=0)"
            )
        if "experts" in targets:
            why = (
                "routed experts are stacked tensors run by one grouped kernel: an adapter there needs W + BA built "
                "each step and a full-size weight gradient, no saving over full fine-tuning"
                if arch == "deepseek"
                else "a dense model has no experts"
            )
            raise GenlabError(f"train.lora_targets = experts is not supported ({why}); use attention,mlp")
        if not self.init_from:
            raise GenlabError(
                "train.lora_rank > 0 needs train.init_from (the frozen base weights: LoRA checkpoints hold the "
                "adapters only); `genlab train --init-from RUN_OR_HF_DIR ...`"
            )
        if self.parallel == "fsdp":
            raise GenlabError(
                "train.lora_rank > 0 with train.parallel = fsdp is not supported (sharded checkpoints hold whole "
                "models, LoRA's hold adapters); use train.parallel=ddp: only the adapters' gradients are all-reduced"
            )

    objective: Literal["causal", "masked", "any-order"] = opt(
        "causal",
        "next token | BERT's masked tokens | random orderings; the last two train a bidirectional "
        "Transformer for `genlab sample --infill`",
    )
    mask_prob: float = opt(0.15, "objective masked: share of each sequence's tokens chosen for prediction", 0.01, 1.0)
    init_from: str = opt(
        "",
        "start from weights: a genlab run dir (best or last checkpoint) or a Hugging Face directory; the run takes "
        "its model section and tokenizer ('' = from scratch; `genlab train --init-from SRC`)",
    )


@dataclass
class DecoderArgs(ModelArgs):
    d_model: int = opt(256, "residual stream width", 1)
    n_layer: int = opt(4, "blocks", 1)
    n_head: int = opt(4, "attention heads", 1)
    ffn_hidden: int = opt(0, "SwiGLU width; 0 = about 8/3 d_model rounded up to a multiple of 32", 0)
    rope_theta: float = opt(10000.0, "RoPE base", 1.0)
    norm_eps: float = opt(1e-5, "RMSNorm epsilon", 0.0, 1.0)
    tie_embeddings: bool = opt(False, "share the input embedding and the output head")
    attn_backend: Literal["auto", "naive", "sdpa", "flash", "triton"] = opt(
        "auto",
        "attention kernel: naive (reference), sdpa (per-document fused), flash (genlab's tiled online "
        "softmax), triton (GPU kernel); auto picks",
    )
    init_std: float = opt(0.02, "std of the normal initialisation", 0.0, 10.0)

    def ffn_width(self) -> int:
        return self.ffn_hidden or 32 * math.ceil(8 * self.d_model / 3 / 32)


@dataclass
class LMArgs(DecoderArgs):
    arch: Literal["transformer", "lstm", "gru"] = opt("transformer", "dense Transformer or an RNN baseline")
    n_kv_head: int = opt(0, "key/value heads: 0 = n_head (multi-head); fewer = grouped-query attention", 0)

    def check(self, cfg) -> None:
        if cfg.train.objective != "causal" and self.arch != "transformer":
            raise GenlabError(
                f"train.objective = {cfg.train.objective!r} needs model.arch = 'transformer' (a "
                f"bidirectional model); this run has {self.arch!r}; or use train.objective=causal"
            )
        if self.arch != "transformer":
            return
        check_heads(self.d_model, self.n_head)
        kv = self.n_kv_head or self.n_head
        if self.n_head % kv:
            raise GenlabError(f"model.n_head ({self.n_head}) must be a multiple of model.n_kv_head ({kv})")

    def layer_shapes(self) -> list[LayerShapes]:
        """Per-layer matmul shapes for FLOPs accounting (genlab.train.flops)."""
        d = self.d_model
        if self.arch == "transformer":
            layer = attention_shapes(d, self.n_head, self.n_kv_head or self.n_head, d // self.n_head)
            layer = layer + swiglu_shapes(d, self.ffn_width())
        else:
            gates = 4 if self.arch == "lstm" else 3
            layer = LayerShapes(gates * (d * d + d * d))  # input-to-hidden and hidden-to-hidden per gate
        return [layer] * self.n_layer


def check_heads(d_model: int, n_head: int) -> None:
    if d_model % n_head:
        raise GenlabError(f"model.d_model ({d_model}) must be divisible by model.n_head ({n_head})")
    if (d_model // n_head) % 2:
        raise GenlabError(f"head dim d_model/n_head = {d_model // n_head} must be even for RoPE")
