"""Continuous batching for language-model runs (iteration-level scheduling, as in Orca).

One engine thread owns the model. Every step it
1. admits waiting requests (up to `max_batch` running), each with its own decode cache
   (`model.new_cache`: dense KV or DeepSeek's MLA latents), sized to its prompt + max_new_tokens;
2. builds one flat token stream: each new request's prompt (in chunks of at most `prefill_chunk`
   tokens, so a long prompt cannot stall the others), each running request's last sampled token;
3. runs ONE forward over it (`genlab.ops.cache.CacheBatch`: every layer but attention sees the whole
   stream, attention runs per sequence over its own cache), the head on each sequence's last row;
4. samples each request's next token with its own settings and seeded generator
   (`genlab.generate.sample_next`, exactly as `generate` does alone), hands text to the request's
   callback, and retires requests that are done, cancelled or disconnected.

So requests join and leave between decode steps, and a request's tokens do not depend on what else
is in the batch (tests/serve/test_engine.py runs each alone through `genlab.generate.generate`).
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from genlab.errors import GenlabError
from genlab.families.lm.transformer import Transformer
from genlab.generate import SamplingSettings, model_device, sample_next
from genlab.ops.cache import CacheBatch, KVPool, PooledDecode, SlotCache


class QueueFull(Exception):
    """More requests are waiting than the engine keeps (the server answers 429)."""


@dataclass
class Event:
    """What a request's callback receives: a text delta with the tokens it took, or the end."""

    text: str = ""
    tokens: int = 0
    finish: str | None = None  # "stop" | "length" | "cancelled" | "error"
    error: str | None = None


class TextTail:
    """Token ids -> text deltas: holds back an unfinished UTF-8 character and any tail that could be
    the start of a stop string; reports a stop string as soon as it is complete (its text is cut)."""

    def __init__(self, tokenizer, stops: tuple[str, ...] = ()):
        self.tok, self.stops = tokenizer, tuple(s for s in stops if s)
        self.ids: list[int] = []
        self.shown = 0  # characters already handed out
        self.text = ""

    def push(self, tok: int) -> tuple[str, bool]:
        """(new text, a stop string completed)."""
        self.ids.append(tok)
        self.text = self.tok.decode(self.ids)
        stable = self.text.rstrip("\ufffd")
        if self.stops:
            lo = max(0, self.shown - max(map(len, self.stops)))
            hits = [i for i in (stable.find(s, lo) for s in self.stops) if i >= 0]
            if hits:
                cut = min(hits)
                self.text = stable[:cut]
                return self._take(cut), True
            hold = 0
            for s in self.stops:  # the longest suffix of `stable` that begins a stop string
                for k in range(min(len(s) - 1, len(stable)), hold, -1):
                    if stable.endswith(s[:k]):
                        hold = k
                        break
            return self._take(len(stable) - hold), False
        return self._take(len(stable)), False

    def flush(self) -> str:
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        if upto <= self.shown:
            return ""
        out, self.shown = self.text[self.shown : upto], upto
        return out


@dataclass
class GenRequest:
    """One sequence to generate. `on_event(Event)` is called from the engine thread."""

    prompt: list[int]
    settings: SamplingSettings
    on_event: Callable[[Event], None]
    stop_ids: frozenset[int] = frozenset()
    stop_strings: tuple[str, ...] = ()
    cancelled: bool = False
    # engine state
    cache: object = None
    generator: torch.Generator | None = None
    pending: list[int] = field(default_factory=list)  # tokens still to feed
    out: list[int] = field(default_factory=list)  # sampled tokens
    tail: TextTail | None = None
    t_submit: float = 0.0
    t_last: float | None = None  # when the last token was handed out
    drafter: object = None  # speculative decoding: the MTP drafter, its pending rows, the last draft
    pend_h: torch.Tensor | None = None
    pend_tok: torch.Tensor | None = None
    draft: int = 0

    def cancel(self) -> None:
        """Ask the engine to drop this request at its next step (a client that went away)."""
        self.cancelled = True


class NullMetrics:
    """The engine's hooks into /metrics (serve.metrics.Metrics); nothing by default."""

    def queue(self, waiting: int, running: int) -> None: ...

    def step(self, batch: int, tokens: int) -> None: ...

    def first_token(self, seconds: float) -> None: ...

    def inter_token(self, seconds: float) -> None: ...

    def generated(self, n: int) -> None: ...


class Engine:
    """Continuous batching over one model. `submit` from any thread; the engine thread does the rest."""

    def __init__(
        self,
        model,
        tokenizer,
        max_batch: int = 16,
        max_queue: int = 64,
        prefill_chunk: int = 512,
        metrics=None,
        batched: bool = True,
        speculative: bool = False,
        max_len: int | None = None,
    ):
        if max_batch < 1 or max_queue < 0 or prefill_chunk < 1:
            raise GenlabError("max_batch and prefill_chunk must be >= 1, max_queue >= 0")
        self.model, self.tok = model, tokenizer
        self.max_batch, self.max_queue, self.prefill_chunk = max_batch, max_queue, prefill_chunk
        self.batched = batched  # False: one forward per request per step (models without CacheBatch: RNNs)
        self.metrics = metrics or NullMetrics()
        self.speculative = speculative  # greedy requests decode with the model's MTP drafter (deepseek)
        self.drafted = self.accepted = 0
        self.pool = None  # dense Transformers: every request's KV cache is a slot of one pool (PooledDecode)
        if batched and max_len and isinstance(model, Transformer) and model.causal:
            w, c = model.embed.weight, model.cfg
            n_kv = c.n_kv_head or c.n_head
            self.pool = KVPool(c.n_layer, max_batch, max_len, n_kv, model.head_dim, w.device, w.dtype)
        self.device = model_device(model)
        self.waiting: deque[GenRequest] = deque()
        self.running: list[GenRequest] = []
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.steps = 0
        self.after_step: list[Callable[[], None]] = []  # called by the engine thread after every step

    # ------------------------------------------------------------------ public
    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._loop, name="genlab-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel everything still queued or running and end the engine thread."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, req: GenRequest) -> GenRequest:
        with self._cv:
            if self._stop:
                raise QueueFull("the server is shutting down")
            if len(self.waiting) >= self.max_queue and len(self.running) + len(self.waiting) >= self.max_batch:
                raise QueueFull(f"{len(self.waiting)} requests are already waiting")
            req.t_submit = time.perf_counter()
            self.waiting.append(req)
            self.metrics.queue(len(self.waiting), len(self.running))
            self._cv.notify_all()
        return req

    @property
    def load(self) -> tuple[int, int]:
        return len(self.waiting), len(self.running)

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self.waiting and not self.running:
                    self._cv.wait()
                if self._stop:
                    for r in [*self.running, *self.waiting]:
                        self._finish(r, "cancelled")
                    self.running, self.waiting = [], deque()
                    self._after_step()
                    return
                self._admit()
            try:
                self.step()
            except Exception as e:  # a fault in the model must not take the server down
                for r in self.running:
                    self._finish(r, "error", f"{type(e).__name__}: {e}")
                self.running = []
            self._after_step()

    def _after_step(self) -> None:
        for fn in self.after_step:
            fn()

    def _admit(self) -> None:
        while self.waiting and len(self.running) < self.max_batch:
            r = self.waiting.popleft()
            if r.cancelled:
                self._finish(r, "cancelled")
                continue
            s = r.settings
            spec = self.speculative and s.temperature == 0
            need = len(r.prompt) + s.max_new_tokens + (2 if spec else 0)
            r.cache = self.pool.cache() if self.pool is not None and need <= self.pool.max_len else None
            r.cache = r.cache or self.model.new_cache(need)
            r.drafter = self.model.new_drafter(len(r.prompt) + s.max_new_tokens + 2) if spec else None
            r.generator = torch.Generator().manual_seed(s.seed)
            r.pending = list(r.prompt)
            r.tail = TextTail(self.tok, r.stop_strings)
            self.running.append(r)
        self.metrics.queue(len(self.waiting), len(self.running))

    @torch.no_grad()
    def step(self) -> None:
        """One forward over every running request: prefill chunks and decode tokens together."""
        for r in self.running:
            if r.cancelled:
                self._finish(r, "cancelled")
        self.running = [r for r in self.running if not r.cancelled]
        if not self.running:
            return
        feeds, prefill = [], []
        for r in self.running:
            prefill.append(r.t_last is None)
            if r.t_last is None:  # the prompt, in chunks (a speculative request's at once: its drafter
                n = len(r.pending) if r.drafter else min(len(r.pending), self.prefill_chunk)  # needs every row)
            elif r.drafter is not None:  # [last token, MTP draft of the next], verified in this forward
                r.draft = r.drafter.draft(r.pend_h, r.pend_tok)
                r.pending = r.pending + [r.draft]
                n = 2
            else:
                n = 1
            feeds.append(r.pending[:n])
            r.pending = r.pending[n:]
        if self.batched:
            h, bounds = self._forward_batch(feeds)
        else:
            hs = [self._forward_one(r, f) for r, f in zip(self.running, feeds)]
            h, bounds = torch.cat(hs), [0, *itertools.accumulate(map(len, feeds))]
        self.steps += 1
        self.metrics.step(len(self.running), sum(map(len, feeds)))
        rows, owners = [], []  # the rows whose logits are needed, and each one's request
        for i, r in enumerate(self.running):
            if r.pending:
                continue  # more prompt to read
            a, b = bounds[i], bounds[i + 1]
            want = [a, b - 1] if (r.drafter is not None and not prefill[i]) else [b - 1]
            rows += want
            owners += [i] * len(want)
        if not rows:
            return
        logits = self.model.head(h[rows]).float().cpu()  # (R, V)
        best = logits.argmax(-1).tolist()  # every greedy choice at once (sample_next's own for temperature 0)
        rows_of: dict[int, list[int]] = {}
        for j, o in enumerate(owners):
            rows_of.setdefault(o, []).append(j)
        now = time.perf_counter()
        done = set()
        for i, r in enumerate(self.running):
            mine = rows_of.get(i)
            if not mine:
                continue
            a, b = bounds[i], bounds[i + 1]
            if r.drafter is None and r.settings.temperature <= 0:
                toks = [best[mine[0]]]
            elif r.drafter is None:
                toks = [sample_next(logits[mine[0]], r.settings, r.generator)]
            elif prefill[i]:
                toks = [int(logits[mine[0]].argmax())]
                r.pend_h, r.pend_tok = h[a:b], torch.tensor(r.prompt[1:] + toks, device=self.device)
            else:
                y = logits[mine].argmax(-1).tolist()
                self.drafted += 1
                if y[0] == r.draft:  # the draft was the model's own next token: one more for free
                    self.accepted += 1
                    toks = [r.draft, y[1]]
                    r.pend_h = h[a:b]
                else:  # forget the rejected draft's cache entry
                    r.cache.len -= 1
                    toks = [y[0]]
                    r.pend_h = h[a : a + 1]
                r.pend_tok = torch.tensor(toks, device=self.device)
            for tok in toks:
                if self._take(r, tok, now):
                    done.add(i)
                    break
        if done:
            self.running = [r for i, r in enumerate(self.running) if i not in done]
            self.metrics.queue(len(self.waiting), len(self.running))

    def _forward_batch(self, feeds: list[list[int]]) -> tuple[torch.Tensor, list[int]]:
        """(T, d) hidden states of the fed tokens, and each request's rows bounds[i]:bounds[i + 1]."""
        dev = self.device
        caches = [r.cache for r in self.running]
        if all(len(f) == 1 for f in feeds) and PooledDecode.fits(caches):  # a pure decode step: one call per layer
            batch = PooledDecode(caches)
        else:
            batch = CacheBatch(caches, [len(f) for f in feeds])
        ids = torch.tensor([t for f in feeds for t in f], device=dev)
        h = self.model(ids, batch.positions(dev), batch.cu_seqlens(dev), max(batch.counts), batch)
        return h, batch.bounds

    def _forward_one(self, r: GenRequest, feed: list[int]) -> torch.Tensor:
        dev = self.device
        x = torch.tensor(feed, device=dev)
        pos = torch.arange(r.cache.len, r.cache.len + len(feed), device=dev)
        cu = torch.tensor([0, len(feed)], dtype=torch.int32, device=dev)
        return self.model(x, pos, cu, len(feed), r.cache)

    def _take(self, r: GenRequest, tok: int, now: float) -> bool:
        """Hand one sampled token to the request; True when the request is finished."""
        r.out.append(tok)
        if r.t_last is None:
            self.metrics.first_token(now - r.t_submit)
        else:
            self.metrics.inter_token(now - r.t_last)
        r.t_last = now
        self.metrics.generated(1)
        if tok in r.stop_ids:
            r.on_event(Event(r.tail.flush(), 1))
            self._finish(r, "stop")
            return True
        text, stopped = r.tail.push(tok)
        if stopped:
            r.on_event(Event(text, 1))
            self._finish(r, "stop")
            return True
        if len(r.out) >= r.settings.max_new_tokens:
            r.on_event(Event(text + r.tail.flush(), 1))
            self._finish(r, "length")
            return True
        r.on_event(Event(text, 1))
        r.pending = [tok]
        return False

    def _finish(self, r: GenRequest, reason: str, error: str | None = None) -> None:
        if isinstance(r.cache, SlotCache):
            r.cache.release()
        r.cache = r.drafter = r.pend_h = None  # the slot's memory goes back at once
        r.on_event(Event(finish=reason, error=error))


def random_seed() -> int:
    """A request without a seed samples differently each time (the OpenAI default)."""
    return secrets.randbits(31)
