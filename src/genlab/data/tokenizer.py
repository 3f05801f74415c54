"""Tokenizers: byte-level BPE (trained with the `tokenizers` library) and plain bytes.

Both are lossless on any UTF-8 text. The BPE tokenizer reserves one special token,
`<|endoftext|>`, used as the beginning-of-document marker; the byte tokenizer has none.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

from genlab.errors import GenlabError

EOT = "<|endoftext|>"


class ByteTokenizer:
    kind = "byte"
    vocab_size = 256
    bos_id: int | None = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self) -> list[int]:
        """UTF-8 bytes each token id stands for (for bits per byte)."""
        return [1] * 256

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps({"genlab_tokenizer": "byte", "vocab_size": 256}) + "\n")


class BPETokenizer:
    kind = "bpe"

    def __init__(self, tok):
        self.tok = tok
        # user text that happens to spell "<|endoftext|>" is ordinary text, so encoding is lossless
        tok.encode_special_tokens = True
        self.vocab_size = tok.get_vocab_size()
        self.bos_id = tok.token_to_id(EOT)

    @classmethod
    def train(cls, docs: list[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            min_frequency=2,
        )
        tok.train_from_iterator(docs, trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: Path) -> BPETokenizer:
        from tokenizers import Tokenizer

        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as e:  # the library raises a bare Exception on malformed files
            raise GenlabError(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0][:120]})") from None

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # ids only: encode_batch_fast (tokenizers >= 0.21) skips the offsets that encode_batch tracks
        encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def specials(self) -> set[str]:
        return {t.content for t in self.tok.get_added_tokens_decoder().values() if t.special}

    def add_special_tokens(self, tokens: list[str]) -> None:
        """Append special tokens (chat templates' role and end-of-turn markers) at the end of the vocabulary."""
        self.tok.add_special_tokens(list(tokens))
        self.vocab_size = self.tok.get_vocab_size()
        self.__dict__.pop("chat_encoder", None)

    @cached_property
    def chat_encoder(self):
        """A copy of the tokenizer that reads special tokens in text (rendered chat templates)."""
        from tokenizers import Tokenizer

        tok = Tokenizer.from_str(self.tok.to_str())
        tok.encode_special_tokens = False
        return tok

    def token_bytes(self) -> list[int]:
        # Byte-level BPE spells every byte as one character, so a piece's length is its byte count;
        # special tokens (<|endoftext|>, chat markers) stand for no text.
        out = [0] * self.vocab_size
        specials = self.specials() | {EOT}
        for piece, idx in self.tok.get_vocab().items():
            out[idx] = 0 if piece in specials else len(piece)
        return out

    def save(self, path: Path) -> None:
        self.tok.save(str(path))


Tokenizer = ByteTokenizer | BPETokenizer


def build_tokenizer(kind: str, docs: list[str], vocab_size: int) -> Tokenizer:
    if kind == "byte":
        return ByteTokenizer()
    return BPETokenizer.train(docs, vocab_size)


def load_tokenizer(path: Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise GenlabError(f"{path}: tokenizer file is missing")
    try:
        head = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise GenlabError(f"{path}: tokenizer file is not valid JSON") from None
    if isinstance(head, dict) and head.get("genlab_tokenizer") == "byte":
        return ByteTokenizer()
    return BPETokenizer.load(path)
