"""Config of the density family: autoregressive (and simpler) models of binary vectors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genlab.config import DataConfig, ModelArgs, opt
from genlab.families.lm.args import check_heads


@dataclass
class DensityData(DataConfig):
    path: str = opt(
        "", "binary rows: '' = binarized 8x8 digits, synthetic:dna = 3000 generated 180-bit rows; else a file (docs)"
    )
    test_fraction: float = opt(0.1, "rows held out for test when a file has no train/valid/test split", 0.0, 0.5)


@dataclass
class DensityArgs(ModelArgs):
    arch: Literal["bernoulli", "mixture", "fvsbn", "nade", "made", "transformer"] = opt(
        "transformer", "independent Bernoullis, a mixture, FVSBN, NADE, MADE, or genlab's Transformer over the bits"
    )
    d_model: int = opt(256, "hidden units (NADE, MADE) or width (transformer)", 1)
    n_layer: int = opt(4, "MADE hidden layers, Transformer blocks", 1)
    n_head: int = opt(4, "transformer: attention heads", 1)
    n_components: int = opt(10, "mixture: components K", 1, 100_000)
    n_masks: int = opt(1, "made: masks cycled over training batches; evaluation averages all", 1, 100_000)
    mask_resample: Literal["full", "ordering", "connectivity"] = opt(
        "full", "made with n_masks > 1: what a new mask redraws"
    )
    direct_connections: bool = opt(False, "made: masked direct input -> output weights")
    made_order: Literal["random", "natural"] = opt(
        "random", "made: ordering of mask 0 (random as the reference code; natural = dimension order)"
    )
    hidden_activation: Literal["relu", "tanh"] = opt(
        "relu", "made: hidden activation (the MADE authors' Adult run uses tanh)"
    )

    def check(self, cfg) -> None:
        if self.arch == "transformer":
            check_heads(self.d_model, self.n_head)
