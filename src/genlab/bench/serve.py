"""`genlab bench serve`: genlab serve under K concurrent streaming clients on loopback, against genlab
answering one request at a time (`--max-batch 1`) and `transformers serve` on the same run's Hugging
Face export, with and without its `--continuous-batching`.

One byte-level dense run (lm-small's shape: 4 layers x 256 wide, context 256; a few training steps:
speed does not depend on quality) is trained, exported with `genlab export --format hf`, and served
by four server processes that run side by side for the whole benchmark, each with
OMP_NUM_THREADS=1 (`threads`: on this shared 2-core machine two intra-op threads per process made a
linear layer up to 100x slower whenever another job held a core; one thread each is the same for
every server). A byte tokenizer has no end-of-text token, so every server generates exactly
max_tokens per request (greedy). For each K in (1, 4, 16), K client threads each send `rounds`
streaming /v1/completions requests back to back (the same prompts for every server); per request the
client records the time to the first streamed text (TTFT) and the gaps between later chunks
(inter-token latency, ITL). Throughput = generated tokens (max_tokens x requests) / wall time from
the first send to the last [DONE]. The measurements alternate between the servers, K by K, the
order rotating each of `repeats` (`--steps`) repeats; throughput is the median over repeats, the
percentiles pool every request.

Targets at K = 16: >= 4x genlab's one-at-a-time throughput, >= 1.5x transformers serve's (the better
of its two modes), p99 ITL no worse than transformers serve's.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from genlab.bench.common import machine_info, print_table

DEFAULTS = dict(ks=(1, 4, 16), rounds=1, repeats=3, max_tokens=64, steps=20, shape="lm-small", timeout=900, threads=1)
QUICK = dict(ks=(1, 4), rounds=1, repeats=1, max_tokens=8, steps=2, shape="tiny", timeout=120, threads=1)
PROMPTS = [
    "def read_config(path):\n",
    "The quick brown fox",
    "import os\nimport sys\n\n",
    "class Stack:\n    def __init__(self):",
    "Return the number of items",
    "for i in range(10):\n",
    "# Licensed under the",
    "    raise ValueError(",
]


def _train_run(base: Path, shape: str, steps: int) -> Path:
    from genlab.config import resolve
    from genlab.train.trainer import train

    sets = [f"train.steps={steps}", f"train.ckpt_every={steps}", "train.eval_every=1000000", "data.tokenizer=byte"]
    if shape == "tiny":
        sets += ["data.packing_length=64", "model.d_model=32", "model.n_layer=2", "model.n_head=4", "model.n_kv_head=2"]
        preset = "lm-tiny"
    else:
        sets += ["model.tie_embeddings=false"]  # the export is LlamaForCausalLM either way
        preset = shape
    run, _ = train(resolve(preset, None, sets), base / "run", progress=False, log=lambda *a, **k: None)
    return Path(run.path)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process on a free loopback port; ready once GET /health answers."""

    def __init__(self, name: str, argv: list[str], model: str, env: dict):
        self.name, self.model = name, model
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float) -> None:
        import httpx

        t0 = time.time()
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.time() - t0 > timeout:
                self.stop()
                self.log.seek(0)
                tail = self.log.read()[-1500:].decode(errors="replace")
                raise RuntimeError(f"{self.name} did not start: {tail}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _one_request(url: str, model: str, prompt: str, max_tokens: int, extra: dict, client=None) -> dict:
    import httpx

    client = client or httpx.Client(timeout=600)
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True, **extra}
    t0 = time.perf_counter()
    stamps, text = [], []
    with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {r.status_code}: {r.read()[:300]!r}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            piece = "".join(c.get("text") or "" for c in chunk.get("choices") or [])
            if piece:
                stamps.append(time.perf_counter())
                text.append(piece)
    t1 = time.perf_counter()
    if not stamps:
        raise RuntimeError(f"{url}: a request streamed no text")
    return {
        "ttft": stamps[0] - t0,
        "itl": [b - a for a, b in zip(stamps, stamps[1:])],
        "chunks": len(stamps),
        "latency": t1 - t0,
        "text": "".join(text),
    }


def _load(srv: Server, k: int, rounds: int, max_tokens: int, extra: dict) -> dict:
    """K client threads, `rounds` requests each, back to back: wall time, every TTFT and ITL."""
    import httpx

    results: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()
    clients = [httpx.Client(timeout=600) for _ in range(k)]  # made before the clock starts (TLS setup etc.)

    def client(c: int):
        for j in range(rounds):
            prompt = PROMPTS[(c * rounds + j) % len(PROMPTS)]
            try:
                res = _one_request(srv.url, srv.model, prompt, max_tokens, extra, clients[c])
            except Exception as e:  # reported, not raised from a thread
                with lock:
                    errors.append(str(e))
                return
            with lock:
                results.append(res)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(k)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for cl in clients:
        cl.close()
    if errors:
        raise RuntimeError(f"{srv.name}, K={k}: {errors[0]}")
    return {
        "k": k,
        "requests": len(results),
        "tokens_per_s": len(results) * max_tokens / wall,
        "ttft": [r["ttft"] for r in results],
        "itl": [x for r in results for x in r["itl"]],
        "chunks": [r["chunks"] for r in results],
    }


def summarize(loads: list[dict]) -> dict:
    """Repeats of one (server, K): median throughput over the repeats, percentiles over every request."""
    ttft = [x for r in loads for x in r["ttft"]]
    itl = [x for r in loads for x in r["itl"]]
    return {
        "k": loads[0]["k"],
        "requests": sum(r["requests"] for r in loads),
        "repeats": len(loads),
        "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in loads), 1),
        "tokens_per_s_each": [round(r["tokens_per_s"], 1) for r in loads],
        "ttft_p50_ms": round(_pct(ttft, 50) * 1e3, 1),
        "ttft_p99_ms": round(_pct(ttft, 99) * 1e3, 1),
        "itl_p50_ms": round(_pct(itl, 50) * 1e3, 2) if itl else None,
        "itl_p99_ms": round(_pct(itl, 99) * 1e3, 2) if itl else None,
        "chunks_per_request": round(statistics.mean(c for r in loads for c in r["chunks"]), 1),
    }


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def run(steps: int | None = None, quick: bool = False) -> dict:
    p = dict(QUICK if quick else DEFAULTS)
    if steps:
        p["repeats"] = steps
    exe = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="genlab-bench-serve-") as tmp:
        base = Path(tmp)
        run_dir = _train_run(base, p["shape"], p["steps"])
        from genlab.interop.hf import export_hf

        hf = base / "hf"
        export_hf(run_dir, hf)
        genlab = [sys.executable, "-m", "genlab", "serve", str(run_dir), "--port", "{port}", "--device", "cpu"]
        kmax = max(p["ks"])
        servers = [
            ("genlab", genlab + ["--max-batch", str(kmax), "--max-queue", str(4 * kmax)], run_dir.name, {}),
            ("genlab one-at-a-time", genlab + ["--max-batch", "1", "--max-queue", str(4 * kmax)], run_dir.name, {}),
            ("transformers serve", [str(exe / "transformers"), "serve", str(hf), "--port", "{port}", "--device", "cpu"],
             str(hf), {}),
            ("transformers serve --continuous-batching",
             [str(exe / "transformers"), "serve", str(hf), "--port", "{port}", "--device", "cpu",
              "--continuous-batching"], str(hf), {}),
        ]  # fmt: skip
        # every server runs for the whole benchmark (an idle one costs nothing); the measurements
        # alternate between them, the order rotating each repeat, so that load from elsewhere on the
        # machine lands on all of them alike
        env = {**os.environ, "OMP_NUM_THREADS": str(p["threads"])}
        live: list[tuple[Server, dict]] = []
        texts: dict[str, str] = {}
        loads: dict[tuple[str, int], list[dict]] = {}
        try:
            for name, argv, model, extra in servers:
                live.append((Server(name, argv, model, env), extra))
            for srv, extra in live:
                srv.wait_ready(p["timeout"])
                texts[srv.name] = _one_request(srv.url, srv.model, PROMPTS[0], p["max_tokens"], extra)["text"]
            for rep in range(p["repeats"]):
                for k in p["ks"]:
                    for srv, extra in live[rep % len(live) :] + live[: rep % len(live)]:
                        loads.setdefault((srv.name, k), []).append(_load(srv, k, p["rounds"], p["max_tokens"], extra))
        finally:
            for srv, _ in live:
                srv.stop()
        out = {name: [summarize(loads[(name, k)]) for k in p["ks"]] for name, *_ in servers}
    rows = [
        [name, r["k"], r["requests"], r["tokens_per_s"], r["ttft_p50_ms"], r["ttft_p99_ms"], r["itl_p50_ms"],
         r["itl_p99_ms"]]
        for name, rs in out.items()
        for r in rs
    ]  # fmt: skip
    cols = ["server", "K", "requests", "tokens/s", "TTFT p50 ms", "TTFT p99 ms", "ITL p50 ms", "ITL p99 ms"]
    title = f"genlab bench serve ({p['shape']}, {p['max_tokens']} new tokens, greedy, {p['threads']} thread(s))"
    print_table(title, cols, rows)

    def at(name, k):
        return next(r for r in out[name] if r["k"] == k)

    k = max(p["ks"])
    g, one = at("genlab", k), at("genlab one-at-a-time", k)
    hf_best = max((at(n, k) for n in out if n.startswith("transformers")), key=lambda r: r["tokens_per_s"])
    ratios = {
        "k": k,
        "vs_one_at_a_time": round(g["tokens_per_s"] / one["tokens_per_s"], 2),
        "vs_transformers_best": round(g["tokens_per_s"] / hf_best["tokens_per_s"], 2),
        "itl_p99_ms_genlab": g["itl_p99_ms"],
        "itl_p99_ms_transformers_best": hf_best["itl_p99_ms"],
    }
    ratios["targets_met"] = {
        "throughput_vs_one_at_a_time_>=4x": ratios["vs_one_at_a_time"] >= 4,
        "throughput_vs_transformers_>=1.5x": ratios["vs_transformers_best"] >= 1.5,
        "itl_p99_no_worse": (g["itl_p99_ms"] or 0) <= (hf_best["itl_p99_ms"] or 0),
    }
    print(json.dumps(ratios), file=sys.stderr)
    return {
        "machine": machine_info(),
        "params": {k_: list(v) if isinstance(v, tuple) else v for k_, v in p.items()},
        "command": "genlab bench serve" + (" --quick" if quick else ""),
        "same_greedy_text": len(set(texts.values())) == 1,
        "results": out,
        "summary": ratios,
    }
