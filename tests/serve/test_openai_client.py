"""The official `openai` client against genlab serve; hypothesis fuzzing of bad requests on the live
server (bounded); `genlab serve` as a process: SIGTERM / SIGINT with a stream in flight end it with
exit status 0; bad CLI input is one line, exit 2."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.serve.conftest import free_port


def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_openai_client(live):
    c = client(live)
    assert [m.id for m in c.models.list().data] == ["lm", "ldm", "made", "oadtr"]
    r = c.completions.create(model="lm", prompt="def f", max_tokens=8, temperature=0)
    assert r.object == "text_completion" and r.usage.completion_tokens == 8 and isinstance(r.choices[0].text, str)
    streamed = "".join(
        ch.choices[0].text
        for ch in c.completions.create(model="lm", prompt="def f", max_tokens=8, temperature=0, stream=True)
        if ch.choices
    )
    assert streamed == r.choices[0].text
    chat = c.chat.completions.create(
        model="lm", messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0.7, seed=3
    )
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens <= 6
    pieces = [
        ch.choices[0].delta.content or ""
        for ch in c.chat.completions.create(
            model="lm", messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0.7, seed=3, stream=True
        )
    ]
    assert "".join(pieces) == chat.choices[0].message.content
    img = c.images.generate(
        model="ldm", prompt="a 7", n=2, size="8x8", response_format="b64_json", extra_body={"steps": 3}
    )
    assert len(img.data) == 2 and Image.open(io.BytesIO(base64.b64decode(img.data[0].b64_json))).size == (8, 8)
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="lm", prompt="x", max_tokens=100_000)
    assert e.value.body["param"] == "max_tokens"


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)
FIELDS = ["model", "prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "n", "stream", "stop", "seed"]


@st.composite
def bad_bodies(draw):
    """A JSON body with plausible keys and arbitrary values, or raw bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=60))
    body = {"model": draw(st.sampled_from(["lm", "ldm", "made", "oadtr", "zz"]))}
    for k in draw(st.lists(st.sampled_from(FIELDS + ["features", "size", "steps", "guidance", "sampler"]), max_size=5)):
        body[k] = draw(JSONISH)
    if "max_tokens" in body and body["max_tokens"] not in (None,) and draw(st.booleans()):
        body["max_tokens"] = draw(st.integers(-5, 40))
    return json.dumps(body, allow_nan=True).encode()


@pytest.mark.slow
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(
    path=st.sampled_from(
        ["/v1/completions", "/v1/chat/completions", "/v1/images/generations", "/v1/samples", "/v1/detections"]
    ),
    raw=bad_bodies(),
)
def test_fuzz_bad_requests(live, path, raw):
    r = httpx.post(live.url + path, content=raw, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and "Traceback" not in r.text


def test_still_serving_after_fuzz(live):
    assert httpx.get(live.url + "/health").json()["status"] == "ok"
    r = httpx.post(live.url + "/v1/completions", json={"model": "lm", "prompt": "ok", "max_tokens": 3}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


def _start(run, *extra):
    port = free_port()
    p = subprocess.Popen(
        [sys.executable, "-m", "genlab", "serve", str(run), "--port", str(port), "--device", "cpu", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return p, f"http://127.0.0.1:{port}"


def _wait_ready(p, url):
    t0 = time.time()
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if p.poll() is not None or time.time() - t0 > 90:
            p.kill()
            raise AssertionError(f"genlab serve did not start: {p.communicate()[1][-2000:]}")
        time.sleep(0.1)


@pytest.mark.slow
def test_sigterm_and_sigint_end_with_status_0(runs):
    """Two servers (started together); each gets its signal while a stream is in flight: the stream is
    finished, not cut off, the server exits 0 and stops listening."""
    procs = [_start(runs["lm"], "--shutdown-timeout", "5") for _ in range(2)]
    try:
        for p, url in procs:
            _wait_ready(p, url)
        for (p, url), sig in zip(procs, [signal.SIGTERM, signal.SIGINT]):
            body = {"model": "lm", "prompt": "a", "max_tokens": 40, "stream": True, "temperature": 0}
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as r:
                lines = r.iter_lines()
                next(lines)
                p.send_signal(sig)
                rest = [ln for ln in lines if ln]
            assert rest[-1] == "data: [DONE]", sig
            assert p.wait(30) == 0, (sig, p.communicate()[1][-2000:])
            with pytest.raises(httpx.HTTPError):
                httpx.get(url + "/health", timeout=1)
    finally:
        for p, _ in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["serve", "{run}", "--port", "0"], "--port"),
        (["serve", "{run}", "--max-batch", "0"], "--max-batch"),
        (["serve", "/no/such/run"], "/no/such/run"),
    ],
)
def test_bad_cli_input_is_one_line(runs, capsys, argv, needle):
    from genlab.cli import main

    code = main([a.replace("{run}", str(runs["lm"])) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err
