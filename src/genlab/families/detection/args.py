"""Config of the detection family: OadTR and GRU/LSTM online action detectors over feature streams."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genlab.config import DataConfig, ModelArgs, TrainConfig, opt
from genlab.errors import GenlabError


@dataclass
class DetectionData(DataConfig):
    path: str = opt(
        "",
        "features: '' = the generated synthetic stream; else a directory of per-video .npy "
        "features and labels (see docs)",
    )
    history: int = opt(32, "feature frames T per decision, the current frame last", 1, 4096)


@dataclass
class DetectionTrain(TrainConfig):
    future_weight: float = opt(0.5, "weight of the future-frame cross-entropy (OadTR)", 0.0, 100.0)


@dataclass
class DetectionArgs(ModelArgs):
    arch: Literal["oadtr", "gru", "lstm"] = opt("oadtr", "OadTR encoder-decoder, or an RNN baseline")
    d_model: int = opt(256, "width (RNN: hidden units)", 1)
    n_layer: int = opt(4, "encoder layers (RNN layers)", 1)
    n_head: int = opt(4, "OadTR encoder attention heads", 1)
    ffn_hidden: int = opt(0, "OadTR MLP width; 0 = d_model (the reference's choice)", 0)
    dec_layers: int = opt(2, "OadTR decoder layers", 1, 64)
    dec_heads: int = opt(4, "OadTR decoder attention heads", 1)
    future_steps: int = opt(4, "OadTR decoder queries, one per upcoming frame predicted", 1, 256)
    dropout: float = opt(0.1, "dropout", 0.0, 0.9)

    def check(self, cfg) -> None:
        if self.arch == "oadtr":
            for heads, key in ((self.n_head, "n_head"), (self.dec_heads, "dec_heads")):
                if self.d_model % heads:
                    raise GenlabError(f"model.d_model ({self.d_model}) must be divisible by model.{key} ({heads})")
