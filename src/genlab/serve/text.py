"""`POST /v1/completions` and `POST /v1/chat/completions`: OpenAI request and response schemas, streamed
as server-sent events, on top of the continuous-batching engine."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from genlab.data.chat import check_messages
from genlab.errors import GenlabError
from genlab.generate import SamplingSettings
from genlab.serve import params as P
from genlab.serve.engine import GenRequest, QueueFull, random_seed
from genlab.serve.models import ApiError, TextModel

MAX_N = 16


def _settings(body: dict, max_tokens: int, seed: int) -> SamplingSettings:
    return SamplingSettings(
        max_new_tokens=max_tokens,
        temperature=P.number(body, "temperature", 1.0, 0.0, 2.0),
        top_k=P.integer(body, "top_k", 0, 0),
        top_p=P.number(body, "top_p", 1.0, 0.0, 1.0),
        seed=seed,
    )


def _max_tokens(body: dict, m: TextModel, prompt_len: int, default: int | None, where: str) -> int:
    room = m.context - prompt_len
    if room < 1:
        raise ApiError(400, f"the {where} is {prompt_len} tokens; this model's context is {m.context} tokens", where)
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    n = P.integer(body, name, None, 1)
    if n is None:
        return min(default or room, room)
    if n > room:
        raise ApiError(
            400,
            f"'{name}' = {n} is beyond the context: the {where} has {prompt_len} tokens and this model's context "
            f"is {m.context}, so at most {room} can be generated",
            name,
        )
    return n


def _common(body: dict) -> tuple[int, bool, bool, int | None]:
    if body.get("logprobs") not in (None, False, 0):
        raise ApiError(400, "'logprobs' is not supported by genlab serve", "logprobs")
    n = P.integer(body, "n", 1, 1, MAX_N)
    stream = P.boolean(body, "stream", False)
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise ApiError(400, "'stream_options' must be an object", "stream_options")
    usage = bool(opts and opts.get("include_usage") is True)
    seed = P.integer(body, "seed", None, 0, P.MAX_SEED)
    return n, stream, usage, seed


def _prompts(body: dict, m: TextModel) -> list[list[int]]:
    p = body.get("prompt")
    if isinstance(p, str):
        p = [p]
    if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        vocab = m.model.vocab_size
        if not all(0 <= t < vocab for t in p):
            raise ApiError(400, f"'prompt' token ids must be from 0 to {vocab - 1}", "prompt")
        return [list(p)]
    if not isinstance(p, list) or not p or len(p) > MAX_N or not all(isinstance(s, str) for s in p):
        raise ApiError(400, f"'prompt' must be a string, a list of up to {MAX_N} strings, or token ids", "prompt")
    out = []
    for s in p:
        try:
            out.append(m.task.prompt_ids(s))
        except GenlabError as e:
            raise ApiError(400, f"'prompt': {e}", "prompt") from None
    return out


def _messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if isinstance(msgs, list):  # content given as OpenAI text parts: [{"type": "text", "text": ...}]
        fixed = []
        for msg in msgs:
            c = msg.get("content") if isinstance(msg, dict) else None
            if isinstance(c, list):
                if not all(isinstance(x, dict) and isinstance(x.get("text"), str) for x in c):
                    raise ApiError(400, "'messages': only text content parts are supported", "messages")
                msg = {**msg, "content": "".join(x["text"] for x in c)}
            fixed.append(msg)
        msgs = fixed
    try:
        return check_messages(msgs, "'messages'")
    except GenlabError as e:
        raise ApiError(400, str(e), "messages") from None


class Relay:
    """Engine thread -> event loop. The engine thread calls `put` for each event of a step; `flush`
    (the engine's after_step hook) hands the whole step's events over in one wake-up of the loop
    (one call_soon_threadsafe per step instead of one per request)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.pending, self.lock = loop, [], threading.Lock()

    def put(self, q: asyncio.Queue, item) -> None:
        with self.lock:
            self.pending.append((q, item))

    def flush(self) -> None:
        with self.lock:
            batch, self.pending = self.pending, []
        if batch:
            try:
                self.loop.call_soon_threadsafe(_deliver, batch)
            except RuntimeError:  # the event loop is gone (server shutting down)
                pass


def _deliver(batch) -> None:
    for q, item in batch:
        q.put_nowait(item)


def _relay(m: TextModel) -> Relay:
    loop = asyncio.get_running_loop()
    relay = getattr(m, "relay", None)
    if relay is None or relay.loop is not loop:
        relay = m.relay = Relay(loop)
        m.engine.after_step = [relay.flush]
    return relay


def _submit(m: TextModel, jobs: list[tuple[list[int], SamplingSettings]], stop_ids, stop_strings):
    """Every job into the engine at once (or none: a full queue is a 429); events arrive on the queue."""
    relay = _relay(m)
    q: asyncio.Queue = asyncio.Queue()

    def deliver(i):
        return lambda ev: relay.put(q, (i, ev))

    reqs = [GenRequest(ids, s, deliver(i), stop_ids, stop_strings) for i, (ids, s) in enumerate(jobs)]
    try:
        for r in reqs:
            m.engine.submit(r)
    except QueueFull as e:
        for r in reqs:
            r.cancel()
        raise ApiError(429, f"the server is busy ({e}); retry later", None, "rate_limit_error") from None
    m.metrics.prompt(sum(len(ids) for ids, _ in jobs))
    return reqs, q


async def _events(request: Request, reqs: list[GenRequest], q: asyncio.Queue, poll: bool):
    """(job index, Event) until every job is finished. Leaving early (a client that went away, a
    cancelled task) cancels what is still running, which frees its batch slot. `poll`: watch for a
    disconnected client (a streaming response is cancelled by Starlette instead)."""

    async def watch():
        while not await request.is_disconnected():
            await asyncio.sleep(0.25)
        q.put_nowait(None)

    watcher = asyncio.create_task(watch()) if poll else None
    left = len(reqs)
    try:
        while left:
            item = await q.get()
            if item is None:  # the client went away
                return
            i, ev = item
            if ev.finish is not None:
                left -= 1
            yield i, ev
    finally:
        if watcher is not None:
            watcher.cancel()
        for r in reqs:
            r.cancel()


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _respond(request: Request, m: TextModel, body: dict, chat: bool):
    n, stream, include_usage, seed = _common(body)
    if chat:
        msgs = _messages(body)
        try:
            prompts = [m.template.encode(m.tokenizer, msgs, add_generation_prompt=True)]
        except GenlabError as e:
            raise ApiError(400, str(e), "messages") from None
        stop_ids, stop_strings = m.chat_stop_ids, m.template.stop_strings + P.stops(body)
        limits = [_max_tokens(body, m, len(prompts[0]), None, "messages")]
    else:
        prompts = _prompts(body, m)
        stop_ids, stop_strings = m.eos_ids, P.stops(body)
        limits = [_max_tokens(body, m, len(ids), 16, "prompt") for ids in prompts]
    if P.boolean(body, "ignore_eos", False):  # genlab extension (benchmarks): generate max_tokens exactly
        stop_ids = frozenset()
    base_seed = random_seed() if seed is None else seed
    jobs = []
    for ids, lim in zip(prompts, limits):
        for j in range(n):
            try:
                jobs.append((ids, _settings(body, lim, (base_seed + j) % (P.MAX_SEED + 1))))
            except GenlabError as e:
                raise ApiError(400, str(e)) from None
    kind = "chat.completion" if chat else "text_completion"
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    head = {"id": rid, "object": kind + (".chunk" if chat and stream else ""), "created": created, "model": m.name}
    prompt_tokens = sum(len(ids) for ids in prompts)
    reqs, q = _submit(m, jobs, stop_ids, stop_strings)
    events = _events(request, reqs, q, poll=not stream)
    if stream:
        # a text chunk is the constant head serialised once plus the index and the text
        lead = "data: " + json.dumps(head, ensure_ascii=False)[:-1] + ', "choices": [{"index": '
        tail = ', "logprobs": null, "finish_reason": null}]}\n\n'
        mid = ', "delta": {"content": ' if chat else ', "text": '

        async def gen():
            counts = [0] * len(jobs)
            if chat:
                for i in range(len(jobs)):
                    yield _sse({**head, "choices": [_chat_choice(i, {"role": "assistant", "content": ""}, None)]})
            try:
                async for i, ev in events:
                    counts[i] += ev.tokens
                    if ev.error:
                        yield _sse({"error": {"message": ev.error, "type": "server_error", "param": None}})
                    if ev.finish is None:
                        if ev.text:
                            text = json.dumps(ev.text, ensure_ascii=False)
                            yield f"{lead}{i}{mid}{text}{'}' if chat else ''}{tail}"
                        continue
                    reason = _reason(ev.finish)
                    if chat:
                        delta = {"content": ev.text} if ev.text else {}
                        yield _sse({**head, "choices": [_chat_choice(i, delta, reason)]})
                    else:
                        yield _sse({**head, "choices": [_text_choice(i, ev.text, reason)]})
            finally:
                await events.aclose()
            if include_usage:
                yield _sse({**head, "choices": [], "usage": _usage(prompt_tokens, sum(counts))})
            yield "data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    texts, reasons, counts = [[] for _ in jobs], [None] * len(jobs), [0] * len(jobs)
    try:
        async for i, ev in events:
            texts[i].append(ev.text)
            counts[i] += ev.tokens
            if ev.error:
                raise ApiError(500, f"generation failed: {ev.error}", None, "server_error")
            if ev.finish:
                reasons[i] = _reason(ev.finish)
    finally:
        await events.aclose()
    if chat:
        choices = [
            {**_chat_choice(i, None, reasons[i]), "message": {"role": "assistant", "content": "".join(t)}}
            for i, t in enumerate(texts)
        ]
        choices = [{k: v for k, v in c.items() if k != "delta"} for c in choices]
    else:
        choices = [_text_choice(i, "".join(t), reasons[i]) for i, t in enumerate(texts)]
    return JSONResponse({**head, "choices": choices, "usage": _usage(prompt_tokens, sum(counts))})


def _reason(finish: str | None) -> str | None:
    return None if finish is None else {"cancelled": "abort", "error": "error"}.get(finish, finish)


def _text_choice(i: int, text: str, reason) -> dict:
    return {"text": text, "index": i, "logprobs": None, "finish_reason": reason}


def _chat_choice(i: int, delta, reason) -> dict:
    return {"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def completions(request: Request, m: TextModel, body: dict):
    return await _respond(request, m, body, chat=False)


async def chat_completions(request: Request, m: TextModel, body: dict):
    return await _respond(request, m, body, chat=True)
