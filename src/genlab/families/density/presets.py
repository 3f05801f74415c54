"""Presets of the density family (`genlab presets`)."""

from __future__ import annotations

from genlab.config import Preset

# Density presets: the digits ones train in about a minute each on one CPU thread (tiny models: one
# thread beats two); eval_every 13 steps of 100 = one epoch of the 1297 training digits; early stopping
# after 20 epochs without a lower validation NLL. The -uci / -mnist ones follow the papers' setups.
_DIGITS_TRAIN = {
    "steps": 3000,
    "batch_rows": 100,
    "warmup_steps": 0,
    "schedule": "constant",
    "weight_decay": 0.0,
    "grad_clip": 0.0,
    "eval_every": 13,
    "eval_batches": 100,
    "log_every": 13,
    "ckpt_every": 500,
    "early_stop_patience": 20,
    "threads": 1,
}
_DENSITY_DATA = {"val_fraction": 0.1, "test_fraction": 0.1}  # for user files that hold one array of rows


_PRESETS = {
    "fvsbn-digits": (
        "density: FVSBN (a logistic regression per dimension) on binarized 8x8 digits",
        {"task": "density", "data": _DENSITY_DATA, "model": {"arch": "fvsbn"}, "train": {**_DIGITS_TRAIN, "lr": 1e-2}},
    ),
    "nade-digits": (
        "density: NADE, 100 sigmoid hidden units, on binarized 8x8 digits",
        {
            "task": "density",
            "data": _DENSITY_DATA,
            "model": {"arch": "nade", "d_model": 100},
            "train": {**_DIGITS_TRAIN, "lr": 5e-3},
        },
    ),
    "made-digits": (
        "density: MADE, 2 x 256 ReLU, direct connections, 8 masks (order/connectivity-agnostic), on digits",
        {
            "task": "density",
            "data": _DENSITY_DATA,
            "model": {
                "arch": "made",
                "d_model": 256,
                "n_layer": 2,
                "n_masks": 8,
                "mask_resample": "full",
                "direct_connections": True,
            },
            "train": {**_DIGITS_TRAIN, "lr": 3e-3},
        },
    ),
    "transformer-digits": (
        "density: genlab's Transformer (2 x 64, 4 heads) over the 64 binary positions of the digits",
        {
            "task": "density",
            "data": _DENSITY_DATA,
            "model": {"arch": "transformer", "d_model": 64, "n_layer": 2, "n_head": 4},
            "train": {**_DIGITS_TRAIN, "lr": 3e-3},
        },
    ),
    "made-uci": (
        "density: MADE as the paper's UCI runs (1 x 500 ReLU, direct, 32 masks, Adadelta); --set data.path=X.npz",
        {
            "task": "density",
            "data": _DENSITY_DATA,
            "model": {
                "arch": "made",
                "d_model": 500,
                "n_layer": 1,
                "n_masks": 32,
                "mask_resample": "full",
                "direct_connections": True,
            },
            "train": {
                "steps": 200_000,
                "batch_rows": 100,
                "optimizer": "adadelta",
                "lr": 1.0,
                "beta2": 0.95,
                "eps": 1e-5,
                "schedule": "constant",
                "warmup_steps": 0,
                "weight_decay": 0.0,
                "grad_clip": 0.0,
                "eval_every": 20,
                "eval_batches": 1000,
                "log_every": 20,
                "ckpt_every": 2000,
                "early_stop_patience": 30,
            },
        },
    ),
    "nade-uci": (
        "density: NADE, 500 sigmoid units, on UCI-style binary sets (Adam 3e-3: measured, docs); --set data.path=X.npz",
        {
            "task": "density",
            "data": _DENSITY_DATA,
            "model": {"arch": "nade", "d_model": 500},
            "train": {  # optimizer and lr from the curves in docs/benchmarks.md (bench/_explore_nade_lr.py)
                "steps": 200_000,
                "batch_rows": 100,
                "optimizer": "adamw",
                "lr": 3e-3,
                "schedule": "constant",
                "warmup_steps": 0,
                "weight_decay": 0.0,
                "grad_clip": 0.0,
                "eval_every": 20,
                "eval_batches": 1000,
                "log_every": 20,
                "ckpt_every": 2000,
                "early_stop_patience": 30,
            },
        },
    ),
    "made-mnist": (
        "density: MADE's best binarized-MNIST run (2 x 8000, 32 masks, Adagrad 0.01); --set data.path=mnist.npz",
        {
            "task": "density",
            "data": _DENSITY_DATA,
            "model": {
                "arch": "made",
                "d_model": 8000,
                "n_layer": 2,
                "n_masks": 32,
                "mask_resample": "full",
                "direct_connections": True,
            },
            "train": {
                "steps": 1_000_000,
                "batch_rows": 100,
                "optimizer": "adagrad",
                "lr": 0.01,
                "eps": 1e-6,
                "schedule": "constant",
                "warmup_steps": 0,
                "weight_decay": 0.0,
                "grad_clip": 0.0,
                "eval_every": 500,
                "eval_batches": 10,
                "log_every": 50,
                "ckpt_every": 500,
                "early_stop_patience": 30,
            },
        },
    ),
}

PRESETS = tuple(Preset(name, desc, settings) for name, (desc, settings) in _PRESETS.items())
