"""Density models over x in {0,1}^D, each with exact log_prob(x) and sample(num, seed).

model.arch: bernoulli | mixture | fvsbn | nade | made | transformer (see each module).
"""

from __future__ import annotations

from genlab.families.density.base import AutoregressiveModel, DensityModel
from genlab.families.density.classic import FVSBN, NADE, IndependentBernoulli, MixtureOfBernoullis
from genlab.families.density.made import MADE
from genlab.families.density.transformer import BinaryTransformer

__all__ = [
    "AutoregressiveModel",
    "DensityModel",
    "IndependentBernoulli",
    "MixtureOfBernoullis",
    "FVSBN",
    "NADE",
    "MADE",
    "BinaryTransformer",
    "build_density",
]


def build_density(cfg, n_dims: int, seed: int = 0) -> DensityModel:
    """model.d_model is the hidden width (NADE, MADE, Transformer); model.n_layer the MADE hidden
    layers (and Transformer blocks); `seed` draws MADE's masks."""
    if cfg.arch == "bernoulli":
        return IndependentBernoulli(n_dims)
    if cfg.arch == "mixture":
        return MixtureOfBernoullis(n_dims, cfg.n_components)
    if cfg.arch == "fvsbn":
        return FVSBN(n_dims)
    if cfg.arch == "nade":
        return NADE(n_dims, cfg.d_model)
    if cfg.arch == "made":
        return MADE(
            n_dims,
            [cfg.d_model] * cfg.n_layer,
            cfg.n_masks,
            cfg.mask_resample,
            cfg.direct_connections,
            seed,
            cfg.hidden_activation,
            cfg.made_order == "natural",
        )
    if cfg.arch == "transformer":
        return BinaryTransformer(cfg, n_dims)
    raise ValueError(f"unknown density arch {cfg.arch!r}")  # config validation rejects it first
