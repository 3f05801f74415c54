"""Presets of post-training (`genlab presets`): each starts from weights given by --init-from."""

from __future__ import annotations

from genlab.config import Preset

_PRESETS = {
    "sft-small": (
        "SFT of an lm-small run (--init-from RUN, e.g. the demo's) on the embedded Python-docs conversations; "
        "150 steps (10-15 minutes on a loaded 2-core CPU)",
        {
            "task": "sft",
            "data": {"packing_length": 512},
            "train": {
                "steps": 150,
                "batch_rows": 4,
                "lr": 5e-4,
                "schedule": "cosine",
                "warmup_steps": 20,
                "weight_decay": 0.0,
                "eval_every": 50,
                "eval_batches": 16,
                "ckpt_every": 100,
            },
        },
    ),
    "dpo-small": (
        "DPO of an sft-small run (--init-from RUN) on the embedded preference pairs (+ an SFT term on chosen); "
        "300 steps (about 15 minutes on a loaded 2-core CPU)",
        {
            "task": "dpo",
            "data": {"packing_length": 512},
            "train": {
                "steps": 300,
                "batch_rows": 8,
                "lr": 5e-5,
                "schedule": "cosine",
                "warmup_steps": 10,
                "weight_decay": 0.0,
                "beta": 0.1,
                "sft_weight": 0.5,
                "eval_every": 100,
                "eval_batches": 15,
                "ckpt_every": 100,
            },
        },
    ),
}

PRESETS = tuple(Preset(name, desc, settings) for name, (desc, settings) in _PRESETS.items())
SFT_PRESETS = tuple(p for p in PRESETS if p.settings["task"] == "sft")
DPO_PRESETS = tuple(p for p in PRESETS if p.settings["task"] == "dpo")
