"""Decoding for every genlab language model: sampling settings, KV-cache generation, speculative
decoding, streaming text, and infilling for bidirectional (masked / any-order) models.

Used by `genlab sample`, `genlab demo`, `genlab.from_pretrained` and the benchmarks. A model here is
anything with the decoder protocol: `model(ids, positions, cu_seqlens, max_seqlen, cache=None)`
returning hidden states (T, d), `model.head(h)` giving logits, and `model.new_cache(max_len)`
returning a cache with a `.len` (see the lm and deepseek families). Speculative decoding also needs
`model.new_drafter(max_len)` (deepseek: the MTP module).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from genlab.errors import GenlabError


@dataclass(frozen=True)
class SamplingSettings:
    """How each next token is chosen. temperature 0 = greedy."""

    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int = 0  # keep the K most likely tokens (0 = all)
    top_p: float = 1.0  # nucleus mass (1 = off)
    seed: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise GenlabError(f"max_new_tokens = {self.max_new_tokens} must be >= 1")
        if not 0 <= self.temperature < float("inf"):
            raise GenlabError(f"temperature = {self.temperature} must be a finite number >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise GenlabError(f"top_k = {self.top_k} must be >= 0 (0 = all tokens)")
        if not 0 <= self.top_p <= 1:
            raise GenlabError(f"top_p = {self.top_p} must be between 0 and 1")


def sample_next(logits: torch.Tensor, s: SamplingSettings, generator: torch.Generator) -> int:
    """One token from (V,) logits."""
    if s.temperature <= 0:
        return int(logits.argmax())
    logits = logits.float() / s.temperature
    if s.top_k and s.top_k < logits.shape[-1]:
        kth = torch.topk(logits, s.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if 0 < s.top_p < 1:
        sp, si = probs.sort(descending=True)
        keep = sp.cumsum(0) - sp < s.top_p  # keep the smallest prefix whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter(0, si, sp * keep)
        probs /= probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


def _cu(n: int, device) -> torch.Tensor:
    return torch.tensor([0, n], dtype=torch.int32, device=device)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def generate(
    model, prompt: list[int], s: SamplingSettings, use_cache: bool = True, stop_id: int | None = None
) -> Iterator[int]:
    """Yield new token ids one at a time. With `use_cache` the prompt is encoded once and each step
    feeds one token; without it the whole sequence is re-run every step (the reference)."""
    model.eval()
    device = model_device(model)
    g = torch.Generator().manual_seed(s.seed)
    ids = list(prompt)
    cache = model.new_cache(len(ids) + s.max_new_tokens) if use_cache else None
    feed = ids
    for _ in range(s.max_new_tokens):
        if cache is not None:
            x = torch.tensor(feed, device=device)
            pos = torch.arange(cache.len, cache.len + len(feed), device=device)
        else:
            x = torch.tensor(ids, device=device)
            pos = torch.arange(len(ids), device=device)
        h = model(x, pos, _cu(len(x), device), len(x), cache)
        nxt = sample_next(model.head(h[-1]).cpu(), s, g)
        yield nxt
        if stop_id is not None and nxt == stop_id:
            return
        ids.append(nxt)
        feed = [nxt]


@torch.no_grad()
def speculative_greedy(
    model, prompt: list[int], max_new_tokens: int, stop_id: int | None = None
) -> tuple[list[int], dict]:
    """Greedy continuation of `prompt`, each round drafted by `model.new_drafter` and verified by the
    main model in one forward of two tokens. Every emitted token is the main model's own argmax, so
    the output equals plain greedy decoding.

    State between rounds: the main cache holds tokens 0..n-1, `nxt` is the greedy token n (already
    emitted), and the drafter has not yet seen the hidden states `pend_h` with their next tokens
    `pend_tok`. A round: draft d for token n+1; verify [nxt, d] at n, n+1; y1 = argmax at n is the true
    token n+1. If y1 == d the logits at n+1 give token n+2 for free; otherwise position n+1 is dropped.
    Returns (new token ids, {"accepted", "drafted", "acceptance", "main_forwards", "tokens_per_s"})."""
    model.eval()
    dev = model_device(model)
    total = len(prompt) + max_new_tokens + 2
    cache = model.new_cache(total)
    drafter = model.new_drafter(total)
    t0 = time.perf_counter()
    x = torch.tensor(prompt, device=dev)
    h = model(x, torch.arange(len(prompt), device=dev), _cu(len(prompt), dev), len(prompt), cache)  # (P, d)
    nxt = int(model.head(h[-1]).argmax())
    out = [nxt]
    pend_h, pend_tok = h, torch.tensor(prompt[1:] + [nxt], device=dev)
    accepted = drafted = forwards = 0

    def done() -> bool:
        return len(out) >= max_new_tokens or (stop_id is not None and out[-1] == stop_id)

    while not done():
        n = cache.len
        draft = drafter.draft(pend_h, pend_tok)
        drafted += 1
        hv = model(
            torch.tensor([nxt, draft], device=dev), torch.arange(n, n + 2, device=dev), _cu(2, dev), 2, cache
        )  # (2, d)
        forwards += 1
        y = model.head(hv).argmax(-1).tolist()
        if y[0] == draft:
            accepted += 1
            new = [draft, y[1]]
            pend_h, pend_tok = hv, torch.tensor(new, device=dev)
        else:
            cache.len = n + 1  # forget the rejected draft's cache entry
            new = [y[0]]
            pend_h, pend_tok = hv[:1], torch.tensor(new, device=dev)
        for tok in new:
            if not done():
                out.append(tok)
        nxt = new[-1]
    dt = time.perf_counter() - t0
    return out, {
        "accepted": accepted,
        "drafted": drafted,
        "acceptance": accepted / max(1, drafted),
        "main_forwards": forwards + 1,
        "tokens_per_s": len(out) / max(dt, 1e-9),
    }


def stream_text(tokenizer, ids: Iterable[int]) -> Iterator[str]:
    """Text pieces as token ids arrive, holding back a multi-byte character still being spelled."""
    got: list[int] = []
    shown = ""
    for nxt in ids:
        got.append(nxt)
        stable = tokenizer.decode(got).rstrip("\ufffd")
        if len(stable) > len(shown):
            yield stable[len(shown) :]
            shown = stable
    text = tokenizer.decode(got)
    if len(text) > len(shown):
        yield text[len(shown) :]


# ---------------------------------------------------------------------------- infilling
INFILL_ORDERS = ("left-to-right", "random", "confident")
_MASK_RE = re.compile(r"<mask(?::(\d+))?>")


def parse_infill(text: str, tokenizer, mask_id: int, span: int) -> tuple[list[int], int]:
    """ "text with <mask> spans" -> token ids with `mask_id` in every span, and the number of spans.
    `<mask>` stands for `span` tokens, `<mask:N>` for N (1..4096)."""
    ids: list[int] = []
    pos, n_spans = 0, 0
    for m in _MASK_RE.finditer(text):
        if m.start() > pos:
            ids += tokenizer.encode(text[pos : m.start()])
        n = int(m.group(1)) if m.group(1) else span
        if not 1 <= n <= 4096:
            raise GenlabError(f"{m.group(0)}: a span holds 1 to 4096 tokens")
        ids += [mask_id] * n
        pos, n_spans = m.end(), n_spans + 1
    if pos < len(text):
        ids += tokenizer.encode(text[pos:])
    if n_spans == 0:
        raise GenlabError('--infill text has no <mask> span; write e.g. "def <mask>(x):" or <mask:N> for N tokens')
    return ids, n_spans


@torch.no_grad()
def infill(model, ids: list[int], mask_id: int, s: SamplingSettings, order: str = "left-to-right") -> list[int]:
    """Fill every `mask_id` position of one sequence, one token per model call, each sampled from
    p(x_i | every token known so far) of a bidirectional (masked / any-order) model.

    order: left-to-right (the leftmost hole next), random (a uniformly random hole next: for an
    any-order model this is ancestral sampling under a random ordering), confident (the hole whose
    most likely token is most probable next, as iterative masked-LM decoding does)."""
    if order not in INFILL_ORDERS:
        raise GenlabError(f"unknown infill order {order!r}; choose one of: {', '.join(INFILL_ORDERS)}")
    model.eval()
    device = model_device(model)
    g = torch.Generator().manual_seed(s.seed)
    x = torch.tensor(ids, device=device)
    pos = torch.arange(len(ids), device=device)
    cu = _cu(len(ids), device)
    holes = [i for i, t in enumerate(ids) if t == mask_id]
    while holes:
        h = model(x, pos, cu, len(ids))
        if order == "confident":  # every hole's logits are needed to choose
            logits = model.head(h[holes]).float().cpu()  # (n_holes, V)
            logits[:, mask_id] = float("-inf")  # the mask token itself is never a filling
            j = int(torch.log_softmax(logits, -1).max(-1).values.argmax())
            row = logits[j]
        else:  # the head runs on the chosen hole only
            j = 0 if order == "left-to-right" else int(torch.randint(len(holes), (1,), generator=g))
            row = model.head(h[holes[j]]).float().cpu()
            row[mask_id] = float("-inf")
        x[holes[j]] = sample_next(row, s, g)
        del holes[j]
    return x.tolist()
