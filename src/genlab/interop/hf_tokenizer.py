"""Tokenizer files of a Hugging Face export, for both genlab tokenizers, and the way back.

    tokenizer.json           the `tokenizers` serialization `AutoTokenizer` (PreTrainedTokenizerFast)
                             reads. The byte tokenizer becomes a byte-level BPE with no merges: one
                             token per byte, id = byte value (as genlab's ByteTokenizer). The BPE
                             tokenizer is genlab's own file plus a TemplateProcessing post-processor
                             that puts <|endoftext|> in front, as genlab does per document.
    tokenizer_config.json    tokenizer_class, bos/eos/pad, model_max_length, split_special_tokens,
                             the chat template when the run has one
    special_tokens_map.json  bos/eos/pad
    generation_config.json   bos/eos/pad ids and genlab's sampling defaults

BOS semantics: genlab prepends <|endoftext|> to every document (BPE runs; byte runs have no BOS), so
`tok(text)` (add_special_tokens=True, the default) gives [bos] + ids: the ids a genlab prompt gets.
`tok(text, add_special_tokens=False)` gives the bare ids of genlab's `encode`. The same token ends a
document, so it is also eos (and pad). Text that spells "<|endoftext|>" is ordinary text in genlab;
`split_special_tokens: true` makes transformers encode it the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from genlab.data.tokenizer import EOT, ByteTokenizer

CHAT_TEMPLATE_FILES = ("chat_template.jinja",)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map, which the ByteLevel pre-tokenizer applies."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, n = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + n)
            n += 1
    return out


def _byte_level_json() -> dict:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    m = bytes_to_unicode()
    tok = Tokenizer(models.BPE(vocab={m[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return json.loads(tok.to_str())


def _with_bos(tj: dict, bos_id: int) -> dict:
    """A post-processor that puts <|endoftext|> before each sequence when add_special_tokens=True."""

    def special(t):
        return {"SpecialToken": {"id": EOT, "type_id": t}}

    def seq(name, t):
        return {"Sequence": {"id": name, "type_id": t}}

    tj["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [special(0), seq("A", 0)],
        "pair": [special(0), seq("A", 0), special(1), seq("B", 1)],
        "special_tokens": {EOT: {"id": EOT, "ids": [bos_id], "tokens": [EOT]}},
    }
    return tj


def is_byte_level_export(tj: dict) -> bool:
    """True for the tokenizer.json that `export` writes for a byte run (ids = byte values)."""
    model = tj.get("model") if isinstance(tj, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE" or model.get("merges") or tj.get("added_tokens"):
        return False
    m = bytes_to_unicode()
    return model.get("vocab") == {m[b]: b for b in range(256)}


def tokenizer_files(tok, max_len: int, chat_template: str | None) -> dict[str, dict]:
    """{file name: JSON object} of the tokenizer files for genlab tokenizer `tok`."""
    byte = isinstance(tok, ByteTokenizer)
    tj = _byte_level_json() if byte else json.loads(tok.tok.to_str())
    special = {} if tok.bos_id is None else {"bos_token": EOT, "eos_token": EOT, "pad_token": EOT}
    if tok.bos_id is not None:
        tj = _with_bos(tj, tok.bos_id)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_len,
        "bos_token": special.get("bos_token"),
        "eos_token": special.get("eos_token"),
        "pad_token": special.get("pad_token"),
        "add_bos_token": tok.bos_id is not None,  # the post-processor does it; informative for other readers
        "add_eos_token": False,
        # "<|endoftext|>" typed in text is text, as in genlab's corpora; a run with a chat template reads its
        # rendered special tokens (<|user|>, <|end|>, ...) as special, as genlab's chat encoding does
        "split_special_tokens": chat_template is None,
        "clean_up_tokenization_spaces": False,
    }
    if tok.bos_id is not None:
        config["added_tokens_decoder"] = {
            str(tok.bos_id): {
                "content": EOT,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "single_word": False,
                "special": True,
            }
        }
    if chat_template is not None:
        config["chat_template"] = chat_template
    return {"tokenizer.json": tj, "tokenizer_config.json": config, "special_tokens_map.json": special}


def generation_config(tok) -> dict:
    """generation_config.json: stop at the next document's <|endoftext|>; genlab's `sample` defaults."""
    return {
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.bos_id,
        "pad_token_id": tok.bos_id,
        "do_sample": True,
        "temperature": 0.8,
        "top_k": 0,
        "top_p": 1.0,
    }


def chat_template(run_path: Path) -> str | None:
    for name in CHAT_TEMPLATE_FILES:
        if (run_path / name).is_file():
            return (run_path / name).read_text(encoding="utf-8")
    return None


def hf_chat_template(hf_dir: Path) -> str | None:
    """The chat template of an HF directory: chat_template.jinja (transformers 5) or tokenizer_config.json's."""
    found = chat_template(hf_dir)
    if found is not None:
        return found
    try:
        tc = json.loads((hf_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    t = tc.get("chat_template") if isinstance(tc, dict) else None
    return t if isinstance(t, str) else None
