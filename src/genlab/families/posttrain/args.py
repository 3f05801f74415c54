"""Config sections of post-training (task = "sft" | "dpo"); the model section is the source run's
(LMArgs or DeepSeekArgs, taken from train.init_from)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genlab.config import DataConfig, opt
from genlab.errors import GenlabError
from genlab.families.lm.args import LMTrain


@dataclass
class SFTData(DataConfig):
    path: str = opt(
        "",
        "conversations, JSONL with {'messages': [{'role': 'system'|'user'|'assistant', 'content': ...}]} per line; "
        "'' = the embedded set (questions about Python's docs)",
    )
    val_fraction: float = opt(
        0.05, "a JSONL file: share of conversations held out, chosen by a hash (embedded: split by source)", 0.0, 0.5
    )
    chat_template: str = opt(
        "",
        "a Jinja2 chat template file; '' = the source run's chat_template.jinja, else genlab's (its special "
        "tokens are added to the tokenizer)",
    )
    packing_length: int = opt(512, "tokens per packed row; longer conversations are truncated or dropped", 16, 1 << 20)
    pack_buffer: int = opt(1000, "conversations packed together by best-fit-decreasing", 1)
    overlong: Literal["truncate", "drop"] = opt(
        "truncate", "a conversation over packing_length tokens: keep its first tokens, or drop it (counted)"
    )
    padded: bool = opt(
        False, "one conversation per row, padded to the batch's longest (the baseline of `genlab bench posttrain`)"
    )


@dataclass
class SFTTrain(LMTrain):
    def check(self, cfg) -> None:
        super().check(cfg)
        if self.objective != "causal":
            raise GenlabError(f"train.objective = {self.objective!r}: post-training is causal (next token)")


@dataclass
class DPOData(SFTData):
    path: str = opt(
        "",
        "preference pairs, JSONL with {'prompt', 'chosen', 'rejected'} per line (strings, or message lists as in "
        "TRL's conversational format); '' = the embedded pairs",
    )


@dataclass
class DPOTrain(SFTTrain):
    beta: float = opt(0.1, "DPO's beta: the strength of the pull towards the reference", 1e-6, 100.0)
    loss_type: Literal["sigmoid", "ipo"] = opt(
        "sigmoid", "sigmoid: DPO's -log sigmoid(beta h); ipo: (h - 1/(2 beta))^2 on per-token mean log-ratios"
    )
    sft_weight: float = opt(0.0, "weight of an SFT term: the chosen answers' mean token NLL", 0.0, 100.0)
