"""The measuring half of `genlab bench serve` against a live genlab server (the full benchmark, with
transformers serve, is minutes long: docs/benchmarks.md)."""

from __future__ import annotations

from genlab.bench.serve import _load, _one_request, _pct, summarize


class _Srv:
    def __init__(self, url):
        self.url, self.name, self.model = url, "genlab", "lm"


def test_percentiles():
    xs = [float(i) for i in range(101)]
    assert _pct(xs, 50) == 50 and _pct(xs, 99) == 99 and _pct([3.0], 99) == 3.0


def test_load_measures_every_request(live):
    one = _one_request(live.url, "lm", "def ", 12, {"ignore_eos": True})
    assert one["ttft"] > 0 and len(one["itl"]) == one["chunks"] - 1 and one["latency"] >= one["ttft"]
    loads = [_load(_Srv(live.url), k=4, rounds=2, max_tokens=10, extra={}) for _ in range(2)]
    assert all(len(x["ttft"]) == 8 for x in loads)
    r = summarize(loads)
    assert r["requests"] == 16 and r["repeats"] == 2 and r["tokens_per_s"] > 0
    assert 0 < r["ttft_p50_ms"] <= r["ttft_p99_ms"] and r["itl_p50_ms"] <= r["itl_p99_ms"]
