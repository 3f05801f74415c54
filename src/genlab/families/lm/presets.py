"""Presets of the language-model family (`genlab presets`)."""

from __future__ import annotations

import copy

from genlab.config import Preset

_PRESETS = {
    "lm-tiny": (
        "dense Transformer, 2 layers x 128 wide, byte tokens; trains in about a minute",
        {
            "data": {"tokenizer": "byte", "packing_length": 128},
            "model": {"d_model": 128, "n_layer": 2, "n_head": 4, "n_kv_head": 2},
            "train": {
                "steps": 150,
                "batch_rows": 8,
                "lr": 3e-3,
                "warmup_steps": 15,
                "eval_every": 50,
                "eval_batches": 8,
                "ckpt_every": 50,
            },
        },
    ),
    "lm-small": (
        "demo default: dense Transformer, 4 layers x 256 wide, BPE 2048, GQA; about 3 minutes",
        {
            "data": {"tokenizer": "bpe", "vocab_size": 2048, "packing_length": 256},
            "model": {"d_model": 256, "n_layer": 4, "n_head": 8, "n_kv_head": 4, "tie_embeddings": True},
            "train": {
                "steps": 400,
                "batch_rows": 8,
                "lr": 2e-3,
                "warmup_steps": 40,
                "eval_every": 100,
                "eval_batches": 16,
                "ckpt_every": 100,
            },
        },
    ),
    "lstm-tiny": (
        "LSTM baseline, 2 layers x 256 wide, byte tokens",
        {
            "data": {"tokenizer": "byte", "packing_length": 128},
            "model": {"arch": "lstm", "d_model": 256, "n_layer": 2},
            "train": {
                "steps": 150,
                "batch_rows": 8,
                "lr": 3e-3,
                "warmup_steps": 15,
                "eval_every": 50,
                "eval_batches": 8,
                "ckpt_every": 50,
            },
        },
    ),
    "gru-tiny": (
        "GRU baseline, 2 layers x 256 wide, byte tokens",
        {
            "data": {"tokenizer": "byte", "packing_length": 128},
            "model": {"arch": "gru", "d_model": 256, "n_layer": 2},
            "train": {
                "steps": 150,
                "batch_rows": 8,
                "lr": 3e-3,
                "warmup_steps": 15,
                "eval_every": 50,
                "eval_batches": 8,
                "ckpt_every": 50,
            },
        },
    ),
}


def _with_train(name: str, **train) -> dict:
    """A copy of preset `name`'s settings with some train.* values replaced."""
    settings = copy.deepcopy(_PRESETS[name][1])
    settings["train"] = {**settings.get("train", {}), **train}
    return settings


_PRESETS.update(
    {
        "infill-small": (
            "lm-small trained with the any-order objective: bidirectional, for `genlab sample --infill`",
            _with_train("lm-small", objective="any-order"),
        ),
        "mlm-small": (
            "lm-small trained with BERT's masked-token objective (15%, 80/10/10), for `genlab sample --infill`",
            _with_train("lm-small", objective="masked"),
        ),
    }
)

PRESETS = tuple(Preset(name, desc, settings) for name, (desc, settings) in _PRESETS.items())
