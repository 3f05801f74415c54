"""`genlab.from_pretrained(PATH, device="auto", dtype=None)`: a language model as one object.

    m = genlab.from_pretrained("runs/small")           # a genlab run dir, or a Hugging Face directory
    m.generate("def ", max_new_tokens=50)              # text in, continuation out (greedy by default)
    m.generate([0, 100, 101], max_new_tokens=5)        # ids in, new ids out
    logits = m(ids)                                    # (batch, seq) LongTensor -> (batch, seq, vocab)
    m.save_pretrained("out", format="hf")              # or format="genlab" (a run dir)
    m.tokenizer, m.model, m.forward_packed(...)        # genlab's tokenizer and packed model

genlab's models take the packed varlen form (a flat token stream, positions and `cu_seqlens`: one
document after another, no padding; see data/packing.py). `__call__` turns ordinary (batch, seq) ids into
that form (one document per row, or per row's unpadded prefix with `attention_mask`), runs the model once
and scatters the logits back; `forward_packed` is the packed form itself. Decoding is genlab.generate's
(KV cache, the same tokens as `genlab sample`).

Before this object, `genlab.from_pretrained` returned a `(model, tokenizer)` tuple; unpacking still gives
that pair (`model, tok = genlab.from_pretrained(p)`: the packed model and the tokenizer).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from genlab.errors import GenlabError
from genlab.generate import SamplingSettings, generate, stream_text
from genlab.interop.hf import DEFAULT_SHARD_SIZE, export_model, load_lm, write_run_dir
from genlab.train.device import resolve_device

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float64": torch.float64,
    "fp64": torch.float64,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
FORMATS = ("genlab", "hf")


def resolve_dtype(dtype) -> torch.dtype | None:
    """None (keep the checkpoint's fp32), a floating torch.dtype, or its name ("bfloat16", "bf16", ...)."""
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    raise GenlabError(f"dtype {dtype!r} is not allowed; use torch.float32, float64, bfloat16 or float16 (or None)")


def from_pretrained(path: str | Path, device="auto", dtype=None) -> Pretrained:
    """A `Pretrained` language model from a genlab run dir or a Hugging Face directory, in eval mode on
    `device` (auto: cuda when available, else cpu) with parameters in `dtype` (None: fp32 as saved)."""
    dev = resolve_device(device, "device")
    dt = resolve_dtype(dtype)
    cfg, model, tok, template = load_lm(path, dev)
    if dt is not None:
        model.to(dtype=dt)
    return Pretrained(model, tok, cfg, template, str(path))


class Pretrained:
    """A genlab language model with its tokenizer: ordinary (batch, seq) forward, generate, save_pretrained."""

    def __init__(self, model: torch.nn.Module, tokenizer, config, chat_template: str | None = None, source: str = ""):
        self.model, self.tokenizer, self.config = model.eval(), tokenizer, config
        self.chat_template, self.source = chat_template, source

    # ------------------------------------------------------------------ description
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size

    @property
    def causal(self) -> bool:
        return getattr(self.config.train, "objective", "causal") == "causal"

    def __repr__(self) -> str:
        m = self.config.model
        return (
            f"Pretrained({self.source!r}, arch={m.arch}, vocab={self.vocab_size}, "
            f"params={sum(p.numel() for p in self.model.parameters()):,}, device={self.device}, dtype={self.dtype})"
        )

    def __iter__(self) -> Iterator:
        """The old `(model, tokenizer)` tuple: `model, tok = genlab.from_pretrained(p)` keeps working."""
        return iter((self.model, self.tokenizer))

    def to(self, device=None, dtype=None) -> Pretrained:
        """Move (device: auto | cpu | cuda | cuda:N) and/or cast (dtype) the model in place; returns self."""
        if device is not None:
            self.model.to(resolve_device(device, "device"))
        if dtype is not None:
            self.model.to(dtype=resolve_dtype(dtype))
        return self

    # ------------------------------------------------------------------ forward
    def forward_packed(self, input_ids, position_ids, cu_seqlens, max_seqlen, cache=None) -> torch.Tensor:
        """The packed varlen form: flat ids (T,), positions (T,), cu_seqlens (n + 1,) int32 -> logits (T, vocab)."""
        return self.model.head(self.model(input_ids, position_ids, cu_seqlens, max_seqlen, cache))

    def __call__(self, ids, attention_mask=None) -> torch.Tensor:
        """Logits (batch, seq, vocab) of ordinary (batch, seq) integer ids (a 1-D sequence gives (seq, vocab)).

        Each row is one document (attention stays inside it; positions start at 0). `attention_mask`
        (batch, seq) of 1s then 0s marks right padding: padded positions are not run and get zero logits."""
        x = _as_ids(ids, "ids")
        one_d = x.dim() == 1
        if one_d:
            x = x[None]
        if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise GenlabError(f"ids of shape {tuple(x.shape)}: give (batch, seq) or (seq,) with batch, seq >= 1")
        B, S = x.shape
        if attention_mask is None:
            keep = torch.ones(B, S, dtype=torch.bool)
        else:
            keep = torch.as_tensor(attention_mask).cpu()
            keep = keep[None] if one_d and keep.dim() == 1 else keep
            if keep.shape != x.shape:
                raise GenlabError(f"attention_mask has shape {tuple(keep.shape)}; the ids have {tuple(x.shape)}")
            keep = keep.bool()
        lens = keep.sum(1)
        if bool((lens == 0).any()) or not bool((keep == (torch.arange(S)[None] < lens[:, None])).all()):
            raise GenlabError("attention_mask must be 1s then 0s in every row (right padding), at least one 1 a row")
        self._check_range(x[keep])
        dev = self.device
        cu = torch.zeros(B + 1, dtype=torch.int32)
        cu[1:] = lens.cumsum(0)
        pos = torch.cat([torch.arange(int(n)) for n in lens])
        logits = self.forward_packed(x[keep].to(dev), pos.to(dev), cu.to(dev), int(lens.max()))  # (T, V)
        out = logits.new_zeros(B, S, logits.shape[-1])
        out[keep.to(dev)] = logits
        return out[0] if one_d else out

    def _check_range(self, flat: torch.Tensor) -> None:
        lo, hi = (int(flat.min()), int(flat.max())) if flat.numel() else (0, 0)
        if lo < 0 or hi >= self.vocab_size:
            raise GenlabError(f"token ids must be in 0..{self.vocab_size - 1} (got {lo}..{hi})")

    # ------------------------------------------------------------------ generation
    def prompt_ids(self, prompt: str) -> list[int]:
        """The ids `genlab sample --prompt` feeds: the start token (BPE runs), then the prompt's tokens."""
        ids = self.tokenizer.encode(prompt)
        if self.tokenizer.bos_id is not None:
            ids = [self.tokenizer.bos_id] + ids
        if not ids:
            raise GenlabError("the prompt is empty and this tokenizer has no start token; give some text")
        return ids

    def generate(
        self,
        prompt: str | Sequence[int] | torch.Tensor,
        max_new_tokens: int = 200,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        stop: str | int | Sequence[str | int] | None = None,
        use_cache: bool = True,
    ) -> str | list[int]:
        """The continuation of `prompt` (genlab.generate: KV cache; temperature 0 = greedy, the default).

        A str prompt gets the start token first, as `genlab sample` does, and the continuation comes back
        as text; a list (or 1-D tensor) of ids is fed as it is and the new ids come back. `stop`: strings
        and/or token ids. Decoding ends at the first of them; the text is cut before it, while the ids
        include it (as transformers' generate does)."""
        if not self.causal:
            raise GenlabError(
                f"this model was trained with train.objective = {self.config.train.objective!r} (bidirectional); "
                "it fills <mask> spans: use `genlab sample RUN --infill TEXT`"
            )
        text_mode = isinstance(prompt, str)
        if text_mode:
            ids = self.prompt_ids(prompt)
        else:
            t = _as_ids(prompt, "prompt")
            if t.dim() != 1 or t.numel() == 0:
                raise GenlabError(f"prompt ids of shape {tuple(t.shape)}: give a non-empty 1-D list of ids")
            self._check_range(t)
            ids = t.tolist()
        stop_ids, stop_strs = _parse_stop(stop)
        settings = SamplingSettings(max_new_tokens, temperature, top_k, top_p, seed)
        out: list[int] = []
        cut = None  # where the text ends when a stop string was produced
        for nxt in generate(self.model, ids, settings, use_cache=use_cache):
            out.append(nxt)
            if nxt in stop_ids:
                break
            if stop_strs:
                text = self.tokenizer.decode(out)
                hits = [i for i in (text.find(s) for s in stop_strs) if i >= 0]
                if hits:
                    cut = min(hits)
                    break
        if not text_mode:
            return out
        if out and out[-1] in stop_ids:
            out = out[:-1]
        text = "".join(stream_text(self.tokenizer, out))  # the pieces `genlab sample` prints
        return text if cut is None else text[:cut]

    # ------------------------------------------------------------------ saving
    def save_pretrained(
        self, directory: str | Path, format: str = "genlab", shard_size: int | str = DEFAULT_SHARD_SIZE
    ) -> Path:
        """format="genlab": a new run dir (config.toml, tokenizer.json, a step-0 checkpoint; `genlab sample`,
        `eval` and `train --resume` take it). format="hf": a Hugging Face directory (`genlab export --format
        hf`: AutoModelForCausalLM + AutoTokenizer). Weights are written in fp32 whatever `dtype` was."""
        if format not in FORMATS:
            raise GenlabError(f"format {format!r} is not known; choose one of: {', '.join(FORMATS)}")
        if format == "hf":
            return export_model(
                self.config, self.model, self.tokenizer, directory, shard_size, self.chat_template, self.source
            )
        return write_run_dir(self.config, self.model, self.tokenizer, directory, self.chat_template, self.source)


def _as_ids(ids, what: str) -> torch.Tensor:
    try:
        x = torch.as_tensor(ids)
    except (TypeError, ValueError, RuntimeError):
        raise GenlabError(f"{what}: not a sequence of integer token ids") from None
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise GenlabError(f"{what}: token ids must be integers (got {x.dtype})")
    return x.long().cpu()


def _parse_stop(stop) -> tuple[set[int], list[str]]:
    if stop is None:
        return set(), []
    items = [stop] if isinstance(stop, (str, int)) else list(stop)
    ids = {int(s) for s in items if isinstance(s, int) and not isinstance(s, bool)}
    strs = [s for s in items if isinstance(s, str)]
    if len(ids) + len(strs) != len(items) or any(s == "" for s in strs):
        raise GenlabError("stop: give non-empty strings and/or token ids")
    return ids, strs
