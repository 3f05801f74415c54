"""Presets of the detection family (`genlab presets`)."""

from __future__ import annotations

from genlab.config import Preset

_PRESETS = {
    "oadtr-synth": (
        "OadTR online action detector on the synthetic streaming benchmark (64-d features, 8 actions)",
        {
            "task": "detection",
            "data": {"history": 32},
            "model": {
                "arch": "oadtr",
                "d_model": 64,
                "n_layer": 2,
                "n_head": 4,
                "dec_layers": 2,
                "dec_heads": 4,
                "future_steps": 4,
                "dropout": 0.1,
            },
            "train": {
                "steps": 4000,
                "batch_rows": 32,
                "lr": 2e-3,
                "warmup_steps": 40,
                "weight_decay": 1e-4,
                "eval_every": 500,
                "eval_batches": 8,
                "ckpt_every": 500,
                "log_every": 20,
            },
        },
    ),
    "gru-synth": (
        "GRU online detector (the RNN baseline, about OadTR's parameter count) on the synthetic benchmark",
        {
            "task": "detection",
            "data": {"history": 32},
            "model": {"arch": "gru", "d_model": 144, "n_layer": 1, "dropout": 0.1},
            "train": {
                "steps": 4000,
                "batch_rows": 32,
                "lr": 3e-3,
                "warmup_steps": 40,
                "weight_decay": 1e-4,
                "eval_every": 500,
                "eval_batches": 8,
                "ckpt_every": 500,
                "log_every": 20,
            },
        },
    ),
}

PRESETS = tuple(Preset(name, desc, settings) for name, (desc, settings) in _PRESETS.items())
