"""Post-training of language models (DeepSeek LLM's SFT then DPO): start from a run or a Hugging Face
checkpoint (`genlab train --init-from SRC`), supervised fine-tuning on conversations with the loss on
the assistant's tokens only (task = "sft"), preference optimisation (task = "dpo": DPO / IPO), and
the embedded offline data both use.

    args.py      SFTData / SFTTrain, DPOData / DPOTrain
    dpo.py       DPOTask: preference pairs, the reference's log-probabilities cached, DPO / IPO
    sft.py       SFTTask: conversations -> chat template -> packed rows, loss on the assistant's tokens
    presets.py   sft-small, dpo-small
    embedded.py  instruction conversations and preference pairs built from Python's own docs
    chat.py      `genlab chat RUN`: a terminal chat through the run's chat template (ChatSession)
"""

from genlab.config import Family, register
from genlab.families.deepseek import FAMILY as DEEPSEEK
from genlab.families.lm import FAMILY as LM
from genlab.families.posttrain.args import DPOData, DPOTrain, SFTData, SFTTrain
from genlab.families.posttrain.dpo import DPOTask
from genlab.families.posttrain.presets import DPO_PRESETS, SFT_PRESETS
from genlab.families.posttrain.sft import SFTTask

SFT = register(Family("lm-sft", "sft", SFTData, LM.model, SFTTrain, SFTTask, LM.build_model, SFT_PRESETS))
DEEPSEEK_SFT = register(Family("deepseek-sft", "sft", SFTData, DEEPSEEK.model, SFTTrain, SFTTask, DEEPSEEK.build_model))
DPO = register(Family("lm-dpo", "dpo", DPOData, LM.model, DPOTrain, DPOTask, LM.build_model, DPO_PRESETS))
DEEPSEEK_DPO = register(Family("deepseek-dpo", "dpo", DPOData, DEEPSEEK.model, DPOTrain, DPOTask, DEEPSEEK.build_model))
