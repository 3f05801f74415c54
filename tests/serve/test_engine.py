"""Continuous batching (genlab.serve.engine) against the reference: each request run alone through
genlab.generate. Requests join at different steps, prompts have different lengths, settings differ
(greedy, seeded top-k / top-p sampling); dense KV caches and DeepSeek's MLA latent cache; MTP
speculative decoding against plain greedy; stop strings, cancellation and the queue bound."""

from __future__ import annotations

import pytest
import torch

from genlab.config import RunConfig
from genlab.data.tokenizer import ByteTokenizer
from genlab.families import build_lm
from genlab.families.lm.args import LMArgs
from genlab.generate import SamplingSettings, generate, speculative_greedy
from genlab.serve.engine import Engine, GenRequest, QueueFull, TextTail
from tests.deepseek.helpers import build as build_deepseek

pytestmark = pytest.mark.usefixtures("one_thread")
V = 256  # byte tokens


def dense(seed=0, arch="transformer"):
    cfg = RunConfig(model=LMArgs())
    m = cfg.model
    m.arch, m.d_model, m.n_layer, m.n_head, m.n_kv_head = arch, 32, 2, 4, 2
    torch.manual_seed(seed)
    model = build_lm(cfg.validate().model, V, 128)
    with torch.no_grad():  # larger than the training init, so that the outputs vary
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(std=0.3)
    return model.eval()


PROMPTS = [[1, 2, 3], [7] * 11, [200, 5], [9, 8, 7, 6, 5, 4, 3, 2, 1], [42], [3, 1, 4, 1, 5, 9, 2, 6]]
SETTINGS = [
    SamplingSettings(12, 0.0),
    SamplingSettings(9, 1.0, seed=3),
    SamplingSettings(15, 0.8, top_k=20, seed=7),
    SamplingSettings(6, 1.2, top_p=0.9, seed=1),
    SamplingSettings(10, 0.0),
    SamplingSettings(13, 0.7, top_k=5, top_p=0.8, seed=11),
]


def run_engine(model, jobs, join_at, **kw):
    """Submit job i at engine step join_at[i]; step until everything is done; the ids each produced."""
    eng = Engine(model, ByteTokenizer(), **{"max_len": 64, **kw})
    reqs = [GenRequest(p, s, lambda ev: None) for p, s in jobs]
    step = 0
    while step <= max(join_at) or eng.running or eng.waiting:
        for r, t in zip(reqs, join_at):
            if t == step:
                eng.submit(r)
        eng._admit()
        eng.step()
        step += 1
    return [r.out for r in reqs], eng


@pytest.mark.parametrize("family", ["dense", "dense-unpooled", "deepseek"])
def test_batched_equals_alone(family):
    """dense: decode steps through the KV pool (one attention call per layer); dense-unpooled and
    deepseek (MLA latents): attention per sequence over each request's own cache."""
    model = build_deepseek(vocab=V, mtp_depth=1) if family == "deepseek" else dense()
    jobs = list(zip(PROMPTS, SETTINGS))
    alone = [list(generate(model, p, s)) for p, s in jobs]
    got, eng = run_engine(model, jobs, join_at=[0, 0, 2, 3, 3, 7], max_batch=8, max_len=None if "-" in family else 64)
    assert (eng.pool is not None) == (family == "dense")
    assert got == alone
    assert [len(o) for o in got] == [s.max_new_tokens for s in SETTINGS]
    assert not eng.running and eng.steps < sum(len(o) for o in alone)  # decoded together, not one by one


def test_small_batch_queues_and_chunked_prefill():
    """max_batch 2: the rest wait and join as slots free; a 3-token prefill chunk splits longer prompts."""
    model = dense(1)
    jobs = list(zip(PROMPTS, [SamplingSettings(s.max_new_tokens, 0.0) for s in SETTINGS]))
    alone = [list(generate(model, p, s)) for p, s in jobs]
    got, _ = run_engine(model, jobs, join_at=[0] * 6, max_batch=2, prefill_chunk=3)
    assert got == alone


def test_rnn_runs_one_forward_per_request():
    model = dense(2, arch="gru")
    jobs = list(zip(PROMPTS[:3], SETTINGS[:3]))
    alone = [list(generate(model, p, s)) for p, s in jobs]
    got, _ = run_engine(model, jobs, join_at=[0, 1, 1], batched=False)
    assert got == alone


def test_speculative_equals_greedy():
    model = build_deepseek(vocab=V, mtp_depth=1)
    jobs = [(p, SamplingSettings(14, 0.0)) for p in PROMPTS[:4]] + [(PROMPTS[4], SETTINGS[1])]  # + one sampled
    want = [speculative_greedy(model, p, 14)[0] for p, _ in jobs[:4]] + [list(generate(model, *jobs[4]))]
    assert want[:4] == [list(generate(model, p, s)) for p, s in jobs[:4]]
    got, eng = run_engine(model, jobs, join_at=[0, 0, 1, 4, 2], speculative=True)
    assert got == want
    assert eng.drafted > 0 and eng.accepted >= 0


def test_stop_strings_and_ids():
    tok = ByteTokenizer()
    tail = TextTail(tok, ("\nUser:",))
    pieces = [tail.push(b) for b in b"hi\nUs"]
    assert "".join(p for p, _ in pieces) == "hi"  # "\nUs" held back: it may begin the stop string
    text, stopped = tail.push(ord("e"))
    assert (text, stopped) == ("", False)
    text, stopped = tail.push(ord("x"))  # not the stop string after all
    assert (text, stopped) == ("\nUsex", False)
    for b in b"!\nUser:":
        text, stopped = tail.push(b)
    assert stopped and tail.text == "hi\nUsex!"
    # utf-8 split over tokens: nothing until the character is complete
    t2 = TextTail(tok)
    assert [t2.push(b)[0] for b in "é".encode()] == ["", "é"]

    model = dense(3)
    prompt, s = [5, 6, 7], SamplingSettings(20, 0.0)
    ref = list(generate(model, prompt, s))
    events = []
    eng = Engine(model, tok)
    r = GenRequest(prompt, s, events.append, stop_ids=frozenset([ref[4]]))
    eng.submit(r)
    while eng.running or eng.waiting:
        eng._admit()
        eng.step()
    k = ref.index(ref[4])
    assert r.out == ref[: k + 1] and events[-1].finish == "stop"
    assert "".join(e.text for e in events) == tok.decode(ref[:k])  # the stop token's text is not sent


def test_cancel_frees_the_slot_and_queue_bound():
    model = dense(4)
    events = []
    eng = Engine(model, ByteTokenizer(), max_batch=1, max_queue=1)
    a = eng.submit(GenRequest([1, 2], SamplingSettings(50, 0.0), events.append))
    eng._admit()
    eng.step()
    eng.submit(GenRequest([3], SamplingSettings(3, 0.0), events.append))  # waits: the one slot is taken
    with pytest.raises(QueueFull):
        eng.submit(GenRequest([4], SamplingSettings(3, 0.0), events.append))
    a.cancel()
    eng.step()  # a leaves; its cache is released
    assert a.cache is None and not eng.running
    eng._admit()
    assert len(eng.running) == 1 and not eng.waiting
    assert [e.finish for e in events if e.finish] == ["cancelled"]
