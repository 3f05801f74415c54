"""Tiny runs of every family for the server tests (trained once per session, a few steps each) and a
live server: the app under uvicorn in a background thread on a free loopback port."""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest

from tests import tiny


def _quiet(*a, **k):
    pass


def _train(preset, sets, out):
    from genlab.config import resolve
    from genlab.train.trainer import train

    run, _ = train(resolve(preset, None, sets), out, progress=False, log=_quiet)
    return run.path


TRAIN = ["train.log_every=1", "train.eval_every=100", "train.eval_batches=1", "train.warmup_steps=1"]


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """{"lm", "ldm", "made", "oadtr"}: run directories (the directory name is the model id)."""
    base = tmp_path_factory.mktemp("serve-runs")
    texts = [f"document {i}: def f(x):\n    return x * {i}\n" * (1 + i % 3) for i in range(40)]
    corpus = base / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = {}
    out["lm"] = _train(
        "lm-tiny",
        [f"data.path={corpus}", "data.packing_length=64", "model.d_model=32", "train.steps=2", "train.ckpt_every=2"]
        + TRAIN,
        base / "lm",
    )
    out["ldm"] = _train(
        "ldm-digits",
        [
            *tiny.LDM,
            "model.diffusion_steps=20",
            "train.batch_rows=8",
            "train.steps=3",
            "train.vae_steps=2",
            "train.ckpt_every=3",
        ]
        + TRAIN,
        base / "ldm",
    )
    rng = np.random.RandomState(0)
    npz = base / "toy.npz"
    rows = lambda n: (rng.rand(n, 16) < 0.5).astype(np.float32)  # noqa: E731
    np.savez(npz, inputsize=16, train_data=rows(100), valid_data=rows(20), test_data=rows(20))
    out["made"] = _train(
        "made-digits",
        [f"data.path={npz}", "model.d_model=24", "train.batch_rows=20", "train.steps=2", "train.ckpt_every=2"] + TRAIN,
        base / "made",
    )
    out["oadtr"] = _train(
        "oadtr-synth",
        [*tiny.OADTR, "train.steps=2", "train.ckpt_every=2"] + TRAIN,
        base / "oadtr",
    )
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """create_app(...) under uvicorn in a thread; `url` is its base URL; stop() shuts it down."""

    def __init__(self, paths, api_key=None, cors_origins=None, **opts):
        import uvicorn

        from genlab.serve.app import create_app
        from genlab.serve.metrics import Metrics
        from genlab.serve.models import ServeOptions, load_models

        metrics = Metrics()
        self.models = load_models([str(p) for p in paths], "cpu", ServeOptions(**opts), metrics)
        app = create_app(self.models, metrics, api_key, cors_origins)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if time.time() - t0 > 30 or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture(scope="session")
def live(runs):
    """One live server with every family's run (max batch 4)."""
    srv = LiveServer([runs["lm"], runs["ldm"], runs["made"], runs["oadtr"]], max_batch=4, max_queue=8)
    yield srv
    srv.stop()
