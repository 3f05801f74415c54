"""Supervised fine-tuning (task = "sft"): conversations rendered by a chat template, packed with the
usual packer (per-document attention, so conversations never see each other), the loss on the
assistant's tokens only (the answers and their end-of-turn token)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from genlab.data.chat import TEMPLATE_FILE, ChatTemplate, add_chat_tokens, check_messages, read_template_arg
from genlab.data.packing import MaskedStore, MaskedStream
from genlab.data.text import split_score
from genlab.data.tokenizer import EOT, load_tokenizer
from genlab.errors import GenlabError
from genlab.families.lm.task import TOKENIZER_FILE, LMTask
from genlab.families.posttrain import embedded
from genlab.train import distributed, init_from


def read_jsonl(path: str):
    """(line number, object) for every non-blank line; malformed lines fail with file and line."""
    p = Path(path)
    if not p.is_file():
        raise GenlabError(f"data.path = {path!r}: no such file (give a .jsonl file, or '' for the embedded set)")
    with open(p, encoding="utf-8", errors="strict") as f:
        try:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise GenlabError(f"{path}:{i}: not valid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(obj, dict):
                    raise GenlabError(f"{path}:{i}: each line must be a JSON object")
                yield i, obj
        except UnicodeDecodeError:
            raise GenlabError(f"{path}: not UTF-8 text") from None


def in_split(key: str, split: str, val_fraction: float) -> bool:
    return (split_score(key) < val_fraction) == (split == "val")


class ChatRunMixin:
    """Tokenizer + chat template of a post-training run: a new run takes the source's tokenizer and template
    (data.chat_template overrides; genlab's default otherwise) and adds the template's special tokens; a
    resumed or loaded run reads its own."""

    def _load_chat(self, run_dir: Path | None, fresh: bool) -> None:
        if not fresh or self.cfg.train.init_from == "":
            if run_dir is None or not (Path(run_dir) / TOKENIZER_FILE).is_file():
                raise GenlabError(
                    f"task {self.cfg.task!r} starts from weights: give --init-from RUN (a pretrained genlab run such "
                    "as the demo's runs/demo-..., an SFT run for dpo, or a Hugging Face directory)"
                )
            self.tokenizer = load_tokenizer(Path(run_dir) / TOKENIZER_FILE)
            source = (Path(run_dir) / TEMPLATE_FILE).read_text(encoding="utf-8")
        else:
            src = self.cfg.train.init_from
            self.tokenizer = load_tokenizer(init_from.source_tokenizer(src))
            src_template = init_from.source_run(src) / TEMPLATE_FILE
            if self.cfg.data.chat_template or not src_template.is_file():
                source = read_template_arg(self.cfg.data.chat_template)
            else:
                source = src_template.read_text(encoding="utf-8")
        bos = EOT if self.tokenizer.bos_id is not None else ""
        self.template = ChatTemplate(source, bos_token=bos, eos_token=bos)
        self.template._template  # noqa: B018 - parse now: a broken template is a one-line error before training
        self.added_tokens = add_chat_tokens(self.tokenizer, self.template) if fresh else []

    def save_artifacts(self, run_dir: Path) -> None:
        self.tokenizer.save(Path(run_dir) / TOKENIZER_FILE)
        (Path(run_dir) / TEMPLATE_FILE).write_text(self.template.source, encoding="utf-8")

    def load_for_inference(self, run_dir: Path) -> None:
        self.fresh = False
        self._load_chat(Path(run_dir), fresh=False)

    def build_model(self) -> torch.nn.Module:
        return LMTask.build_model(self)


class SFTTask(ChatRunMixin, LMTask):
    def prepare(self, run_dir: Path | None, fresh: bool = True) -> None:
        self.fresh = fresh
        self._load_chat(run_dir, fresh)
        d, t = self.cfg.data, self.cfg.train
        self.counts = {"conversations": 0, "truncated": 0, "dropped": 0}
        train, val = self._conversations("train"), self._conversations("val")
        self.train_data = self._stream(train, t.batch_rows, t.seed, True)
        self.val_data = self._stream(val, t.batch_rows, 0, False) if val else None
        if self.train_data is None:
            raise GenlabError(f"{d.path or 'the embedded set'}: no training conversations left")
        c = self.counts
        if fresh and distributed.is_main():
            print(
                f"sft data: {c['conversations']:,} conversations ({len(train):,} train, {len(val):,} held out), "
                f"{c['truncated']:,} truncated and {c['dropped']:,} dropped at {d.packing_length} tokens "
                f"(data.overlong = {d.overlong}); special tokens added: {', '.join(self.added_tokens) or 'none'}"
            )

    def _conversations(self, split: str) -> list[list[dict]]:
        d = self.cfg.data
        if not d.path:
            return [r["messages"] for r in embedded.sft_conversations(split, seed=0)]
        out = []
        for i, obj in read_jsonl(d.path):
            if "messages" not in obj:
                raise GenlabError(f"{d.path}:{i}: a conversation needs a 'messages' list")
            msgs = check_messages(obj["messages"], f"{d.path}:{i}", need_assistant=True)
            if in_split(json.dumps(msgs, sort_keys=True), split, d.val_fraction):
                out.append(msgs)
        return out

    def encode(self, messages: list[dict]) -> tuple[list[int], np.ndarray] | None:
        """(ids, assistant mask) within packing_length, or None when dropped (counted)."""
        ids, mask = self.template.encode_with_mask(self.tokenizer, messages)
        self.counts["conversations"] += 1
        L = self.cfg.data.packing_length
        if len(ids) > L:
            if self.cfg.data.overlong == "drop" or not mask[:L].any():
                self.counts["dropped"] += 1
                return None
            self.counts["truncated"] += 1
            ids, mask = ids[:L], mask[:L]
        return ids, mask

    def _stream(self, convs: list[list[dict]], rows: int, seed: int, shuffle: bool) -> MaskedStream | None:
        enc = [e for e in (self.encode(m) for m in convs) if e is not None]
        if not enc:
            return None
        d = self.cfg.data
        store = MaskedStore([e[0] for e in enc], [e[1] for e in enc])
        mode = "padded" if d.padded else "packed"
        return MaskedStream(store, d.packing_length, rows, mode, seed, d.pack_buffer, shuffle)

    def initial_state(self):
        return (0, 0, 0)

    def next_batch(self, state):
        if len(state) != 3:
            raise GenlabError(f"the saved data position {list(state)} is not an sft run's")
        rows, new_state = self.train_data.layout_at(tuple(state))
        self._position = new_state
        return self.train_data.materialize(rows), new_state

    def on_optimizer_step(self, model, lr_factor: float, skipped: bool) -> dict:
        out = model.on_optimizer_step(lr_factor=lr_factor, skipped=skipped)
        if self._position is not None:  # epochs of the conversations, fractional
            epoch, block, row = self._position
            n = self.train_data.n_blocks(epoch)
            rows = len(self.train_data.block_rows(epoch, block)) if block < n else 1
            out = {**out, "epoch": epoch + (block + row / max(1, rows)) / max(1, n)}
        return out

    def eval_dataset(self, path: str, run_dir: Path):
        raise GenlabError("genlab eval --data on an sft run: evaluate its held-out conversations (drop --data)")

    def info_lines(self, run_dir: Path | None) -> list[str]:
        if run_dir is None:
            return [f"task sft from {self.cfg.train.init_from or '(set --init-from)'}"]
        return super().info_lines(run_dir)
