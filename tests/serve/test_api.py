"""The HTTP API of genlab serve over real loopback HTTP (a live uvicorn server in a thread): OpenAI
schemas, SSE streaming, every family's endpoint, error objects, auth, CORS, body limit, 429,
disconnects, /metrics. The official `openai` client is in test_openai_client.py."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from genlab.generate import SamplingSettings, generate
from tests.serve.conftest import LiveServer


def post(srv, path, body, **kw):
    return httpx.post(srv.url + path, json=body, timeout=60, **kw)


def sse(resp_lines) -> list:
    """The JSON objects of an SSE stream; the last line must be [DONE]."""
    data = [ln[len("data: ") :] for ln in resp_lines if ln.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def is_error(r, status, param=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and "Traceback" not in r.text
    if param is not None:
        assert err["param"] == param
    return err


def test_models_and_health(live):
    assert httpx.get(live.url + "/health").json() == {"status": "ok", "models": ["lm", "ldm", "made", "oadtr"]}
    data = httpx.get(live.url + "/v1/models").json()["data"]
    assert [(m["id"], m["object"], m["genlab"]["kind"]) for m in data] == [
        ("lm", "model", "text"),
        ("ldm", "model", "image"),
        ("made", "model", "samples"),
        ("oadtr", "model", "detection"),
    ]


def test_completion_matches_generate(live):
    m = live.models["lm"]
    r = post(live, "/v1/completions", {"model": "lm", "prompt": "def f", "max_tokens": 12, "temperature": 0})
    assert r.status_code == 200
    out = r.json()
    assert out["object"] == "text_completion" and out["model"] == "lm"
    ids = m.task.prompt_ids("def f")
    want = m.tokenizer.decode(list(generate(m.model, ids, SamplingSettings(12, 0.0))))
    assert out["choices"][0]["text"] == want and out["choices"][0]["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 12, "total_tokens": len(ids) + 12}
    # seeded sampling, n = 2 (seeds s, s + 1), a list of prompts: each choice equals its run alone
    body = {"model": "lm", "prompt": ["ab", "x"], "max_tokens": 6, "temperature": 1.0, "top_k": 30, "seed": 5, "n": 2}
    choices = post(live, "/v1/completions", body).json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    for c, (p, seed) in zip(choices, [("ab", 5), ("ab", 6), ("x", 5), ("x", 6)]):
        ids = list(generate(m.model, m.task.prompt_ids(p), SamplingSettings(6, 1.0, top_k=30, seed=seed)))
        assert c["text"] == m.tokenizer.decode(ids)


def test_streaming_completion_and_chat(live):
    body = {"model": "lm", "prompt": "def ", "max_tokens": 10, "temperature": 0, "stream": True}
    body["stream_options"] = {"include_usage": True}
    with httpx.stream("POST", live.url + "/v1/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        chunks = sse(list(r.iter_lines()))
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    whole = post(live, "/v1/completions", {**body, "stream": False}).json()
    assert text == whole["choices"][0]["text"]
    assert chunks[-1]["usage"]["completion_tokens"] == 10 and chunks[-2]["choices"][0]["finish_reason"] == "length"

    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    body = {"model": "lm", "messages": msgs, "max_tokens": 8, "temperature": 0, "stream": True}
    with httpx.stream("POST", live.url + "/v1/chat/completions", json=body, timeout=60) as r:
        chunks = sse(list(r.iter_lines()))
    assert chunks[0]["object"] == "chat.completion.chunk" and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    out = post(live, "/v1/chat/completions", {**body, "stream": False}).json()
    assert out["object"] == "chat.completion" and out["choices"][0]["message"]["role"] == "assistant"
    assert out["choices"][0]["message"]["content"] == streamed
    m = live.models["lm"]
    prompt = m.template.encode(m.tokenizer, msgs)
    assert out["usage"]["prompt_tokens"] == len(prompt)
    assert "User: hello\nAssistant:" in m.tokenizer.decode(prompt)  # the plain template of a run without one


def test_other_families(live):
    body = {"model": "ldm", "prompt": "a handwritten 3", "n": 3, "steps": 4, "seed": 1, "response_format": "b64_json"}
    out = post(live, "/v1/images/generations", body).json()
    imgs = [Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))) for d in out["data"]]
    assert len(imgs) == 3 and all(im.size == (8, 8) for im in imgs)
    again = post(live, "/v1/images/generations", body).json()
    assert again["data"] == out["data"]  # seeded
    is_error(post(live, "/v1/images/generations", {**body, "size": "1024x1024"}), 400, "size")
    is_error(post(live, "/v1/images/generations", {**body, "response_format": "url"}), 400, "response_format")
    is_error(post(live, "/v1/images/generations", {**body, "steps": 999}), 400, "steps")

    s = post(live, "/v1/samples", {"model": "made", "n": 5, "seed": 2}).json()
    x = np.array(s["data"])
    assert x.shape == (5, 16) and set(np.unique(x)) <= {0, 1} and s["shape"] == [4, 4]
    assert Image.open(io.BytesIO(base64.b64decode(s["grid_b64"]))).format == "PNG"
    png = post(live, "/v1/samples", {"model": "made", "n": 4, "response_format": "png"})
    assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"

    from genlab.families.detection.stream import detect_offline

    feats = np.random.default_rng(0).normal(size=(12, 64)).astype(np.float32)
    d = post(live, "/v1/detections", {"model": "oadtr", "features": feats.tolist()}).json()
    want = detect_offline(live.models["oadtr"].model, feats)
    assert np.allclose(d["scores"], want, atol=1e-5) and len(d["labels"]) == 12
    buf = io.BytesIO()
    np.save(buf, feats)
    d2 = post(live, "/v1/detections", {"model": "oadtr", "features_npy_b64": base64.b64encode(buf.getvalue()).decode()})
    assert d2.json()["scores"] == d["scores"]
    is_error(post(live, "/v1/detections", {"model": "oadtr", "features": [[1.0, 2.0]]}), 400, "features")
    is_error(post(live, "/v1/samples", {"model": "lm"}), 400, "model")  # a text model on the samples endpoint


BAD = [
    ("/v1/completions", b"{not json", 400, None),
    ("/v1/completions", b"[1, 2]", 400, None),
    ("/v1/completions", {"model": "nope", "prompt": "x"}, 404, "model"),
    ("/v1/completions", {"model": "lm", "prompt": "x", "temperature": -1}, 400, "temperature"),
    ("/v1/completions", {"model": "lm", "prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", {"model": "lm", "prompt": "x", "max_tokens": 10_000}, 400, "max_tokens"),
    ("/v1/completions", {"model": "lm", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"model": "lm", "prompt": "y" * 500}, 400, "prompt"),
    ("/v1/completions", {"model": "lm", "prompt": 5}, 400, "prompt"),
    ("/v1/completions", {"model": "lm", "prompt": "x", "n": 1000}, 400, "n"),
    ("/v1/completions", {"model": "lm", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("/v1/completions", {"model": "lm", "prompt": "x", "seed": -3}, 400, "seed"),
    ("/v1/completions", {"model": "lm", "prompt": "x", "logprobs": 3}, 400, "logprobs"),
    ("/v1/chat/completions", {"model": "lm", "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages"),
    ("/v1/chat/completions", {"model": "lm", "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"model": "lm", "messages": "hi"}, 400, "messages"),
    ("/v1/images/generations", {"model": "ldm"}, 400, "prompt"),
]


@pytest.mark.parametrize("path,body,status,param", BAD)
def test_bad_requests(live, path, body, status, param):
    if isinstance(body, bytes):
        r = httpx.post(live.url + path, content=body, headers={"content-type": "application/json"}, timeout=30)
    else:
        r = post(live, path, body)
    is_error(r, status, param)


def test_errors_of_routes_and_sizes(live):
    assert is_error(httpx.get(live.url + "/v1/nothing"), 404)["code"] == "not_found"
    is_error(httpx.get(live.url + "/v1/completions"), 405)
    big = b'{"model": "lm", "prompt": "' + b"x" * (9 << 20) + b'"}'
    is_error(httpx.post(live.url + "/v1/completions", content=big, timeout=60), 413)
    r = post(live, "/v1/completions", {"model": "lm", "prompt": "ok", "max_tokens": 2})
    assert r.status_code == 200  # still serving


def test_cors_off_by_default_and_on_for_an_origin(live, runs):
    h = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    r = httpx.options(live.url + "/v1/completions", headers=h)
    assert "access-control-allow-origin" not in r.headers
    assert "access-control-allow-origin" not in httpx.get(live.url + "/health", headers=h).headers
    srv = LiveServer([runs["made"]], cors_origins=["http://ok.example"])
    try:
        r = httpx.get(srv.url + "/health", headers={"Origin": "http://ok.example"})
        assert r.headers["access-control-allow-origin"] == "http://ok.example"
        r = httpx.get(srv.url + "/health", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers
    finally:
        srv.stop()


def test_api_key(runs):
    srv = LiveServer([runs["made"]], api_key="s3cret")
    try:
        body = {"model": "made", "n": 2}
        assert is_error(post(srv, "/v1/samples", body), 401)["code"] == "invalid_api_key"
        is_error(post(srv, "/v1/samples", body, headers={"Authorization": "Bearer wrong"}), 401)
        is_error(post(srv, "/v1/samples", body, headers={"Authorization": "s3cret"}), 401)
        is_error(httpx.get(srv.url + "/metrics"), 401)
        is_error(httpx.get(srv.url + "/v1/models"), 401)
        ok = post(srv, "/v1/samples", body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert httpx.get(srv.url + "/health").status_code == 200  # health and the page stay open
        assert httpx.get(srv.url + "/").status_code == 200
    finally:
        srv.stop()


def test_full_queue_429_and_disconnect_frees_the_slot(runs):
    """max_batch 1, max_queue 0: a second request while one runs is a 429. A client that leaves
    mid-stream frees the slot: the next request is served at once."""
    srv = LiveServer([runs["lm"]], max_batch=1, max_queue=0)
    try:
        eng = srv.models["lm"].engine
        long = {"model": "lm", "prompt": "a", "max_tokens": 60, "temperature": 0, "stream": True}
        with httpx.stream("POST", srv.url + "/v1/completions", json=long, timeout=60) as r:
            it = r.iter_lines()
            next(it)  # the first token has arrived: the request holds the slot
            err = is_error(post(srv, "/v1/completions", {"model": "lm", "prompt": "b", "max_tokens": 2}), 429)
            assert err["type"] == "rate_limit_error"
        # the stream was closed after one event
        t0 = time.time()
        while eng.running and time.time() - t0 < 10:
            time.sleep(0.01)
        assert not eng.running, "the disconnected request still holds its slot"
        ok = post(srv, "/v1/completions", {"model": "lm", "prompt": "b", "max_tokens": 2})
        assert ok.status_code == 200
        assert eng.steps < 60  # the first request did not run to its end
    finally:
        srv.stop()


def test_concurrent_requests_share_steps_and_metrics(live):
    """8 concurrent greedy requests: every answer equals its run alone, and the batch held several."""
    m = live.models["lm"]
    prompts = [f"p{i} " * (1 + i % 3) for i in range(8)]
    out = {}

    def client(i):
        b = {"model": "lm", "prompt": prompts[i], "max_tokens": 20, "temperature": 0}
        out[i] = post(live, "/v1/completions", b).json()["choices"][0]["text"]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, p in enumerate(prompts):
        want = m.tokenizer.decode(list(generate(m.model, m.task.prompt_ids(p), SamplingSettings(20, 0.0))))
        assert out[i] == want
    text = httpx.get(live.url + "/metrics").text
    for name in (
        "genlab_requests_total",
        "genlab_prompt_tokens_total",
        "genlab_generated_tokens_total",
        "genlab_queue_length",
        "genlab_batch_size_bucket",
        "genlab_time_to_first_token_seconds_bucket",
        "genlab_inter_token_latency_seconds_bucket",
    ):
        assert name in text
    sizes = [ln for ln in text.splitlines() if ln.startswith('genlab_batch_size_bucket{le="1.0",model="lm"}')]
    total = [ln for ln in text.splitlines() if ln.startswith('genlab_batch_size_count{model="lm"}')]
    assert float(sizes[0].split()[-1]) < float(total[0].split()[-1])  # some steps ran more than one sequence
