"""`genlab merge RUN OUT`: a LoRA run (train.lora_rank > 0) as a new full-weight run directory.

RUN's checkpoints hold only its adapters; its base weights are train.init_from's. `load_run` builds the
base, loads the adapters and folds them in (W + (alpha / r) B A, genlab.train.lora.merge_lora); this
writes the result as a run dir of its own (config with lora_rank 0 and no init_from, the merged weights
in a step-0 checkpoint, tokenizer.json and chat_template.jinja copied byte for byte) that `genlab
sample`, `eval`, `export`, `chat` and `train --resume` / `--init-from` use like any run.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from genlab.errors import GenlabError
from genlab.interop.hf import write_run_dir
from genlab.interop.hf_tokenizer import CHAT_TEMPLATE_FILES
from genlab.train.rundir import RunDir, load_run

TOKENIZER_FILE = "tokenizer.json"


class _CopiedTokenizer:
    """write_run_dir's tokenizer: saving it copies RUN's file unchanged."""

    def __init__(self, src: Path):
        self.src = src

    def save(self, path) -> None:
        shutil.copyfile(self.src, path)


def merge_run(run_dir: str | Path, out: str | Path) -> Path:
    """Fold RUN's LoRA adapters into its base weights and write the full model as the run dir OUT."""
    src = RunDir.open(run_dir)
    cfg = src.config()
    rank = getattr(cfg.train, "lora_rank", 0)  # only the LM families have the LoRA keys
    if not rank:
        raise GenlabError(
            f"{src.path} is not a LoRA run (train.lora_rank = 0): its checkpoints already hold whole weights"
        )
    merged_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lora_rank=0, init_from=""))
    RunDir.plan(merged_cfg, out)  # OUT must be new or empty: checked before any weights are read
    run, _, _, model = load_run(src.path)  # adapters folded in (load_run -> merge_lora)
    source = f"{run.path} (LoRA rank {rank} merged, {run.checkpoint_used.name})"
    path = write_run_dir(merged_cfg, model, _CopiedTokenizer(run.path / TOKENIZER_FILE), out, None, source)
    for name in CHAT_TEMPLATE_FILES:
        if (run.path / name).is_file():
            shutil.copyfile(run.path / name, path / name)
    return path
