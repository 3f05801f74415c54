"""The language-model family: a dense decoder-only Transformer (causal, masked or any-order
objectives) and LSTM/GRU baselines, trained on packed, padding-free token streams.

    args.py         LMData, LMTrain, DecoderArgs (shared with deepseek), LMArgs
    transformer.py  the Transformer (RMSNorm, RoPE, SwiGLU, GQA) and the DecoderLM skeleton
    rnn.py          LSTM / GRU language models on the same stream
    objectives.py   masked-token and any-order corruption of packed batches
    task.py         LMTask: corpus -> tokenizer -> packer -> loss, evaluation, `genlab sample`
    presets.py      lm-tiny, lm-small (the demo), lstm-tiny, gru-tiny, infill-small, mlm-small
"""

from genlab.config import Family, register
from genlab.families.lm.args import LMArgs, LMData, LMTrain
from genlab.families.lm.model import build_model
from genlab.families.lm.presets import PRESETS
from genlab.families.lm.task import LMTask

FAMILY = register(Family("lm", "lm", LMData, LMArgs, LMTrain, LMTask, build_model, PRESETS))
