"""The deepseek family: DeepSeek-V3 as a language model of the lm task.

args.py     DeepSeekArgs (MLA, DeepSeekMoE, balancing, MTP, YaRN) and their cross-checks
mla.py      Multi-head Latent Attention with the latent KV cache and absorbed decoding
moe.py      DeepSeekMoE: group-limited sigmoid routing, grouped dispatch, aux-loss-free balancing
mtp.py      multi-token prediction's drafter for self-speculative decoding
model.py    DeepSeekLM on the shared DecoderLM skeleton
presets.py  deepseek-tiny, deepseek-v3-671b
"""

from genlab.config import Family, register
from genlab.families.deepseek.args import DeepSeekArgs
from genlab.families.deepseek.model import build_model
from genlab.families.deepseek.presets import PRESETS
from genlab.families.lm.args import LMData, LMTrain
from genlab.families.lm.task import LMTask

FAMILY = register(Family("deepseek", "lm", LMData, DeepSeekArgs, LMTrain, LMTask, build_model, PRESETS))
