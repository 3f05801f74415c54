"""`GET /metrics`: Prometheus text exposition (rendered by prometheus_client, one registry per app so
several servers in one process, as in the tests, do not share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("genlab_requests", "HTTP API requests answered", ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("genlab_prompt_tokens", "prompt tokens read", ["model"], registry=r)
        self.generated_tokens = Counter("genlab_generated_tokens", "tokens generated", ["model"], registry=r)
        self.queue_length = Gauge("genlab_queue_length", "requests waiting for a batch slot", ["model"], registry=r)
        self.running = Gauge("genlab_running_requests", "requests in the running batch", ["model"], registry=r)
        self.batch_size = Histogram(
            "genlab_batch_size", "sequences per forward step", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.ttft = Histogram(
            "genlab_time_to_first_token_seconds",
            "from submission to the first generated token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "genlab_inter_token_latency_seconds",
            "between consecutive tokens of one request",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def for_model(self, name: str) -> ModelMetrics:
        return ModelMetrics(self, name)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ModelMetrics:
    """The engine's hooks (serve.engine.NullMetrics) bound to one served model (the labelled series
    looked up once: the engine calls these for every token)."""

    def __init__(self, m: Metrics, name: str):
        self.name = name
        self._waiting, self._running = m.queue_length.labels(name), m.running.labels(name)
        self._batch, self._ttft, self._itl = m.batch_size.labels(name), m.ttft.labels(name), m.itl.labels(name)
        self._generated, self._prompt = m.generated_tokens.labels(name), m.prompt_tokens.labels(name)

    def queue(self, waiting: int, running: int) -> None:
        self._waiting.set(waiting)
        self._running.set(running)

    def step(self, batch: int, tokens: int) -> None:
        self._batch.observe(batch)

    def first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def inter_token(self, seconds: float) -> None:
        self._itl.observe(seconds)

    def generated(self, n: int) -> None:
        self._generated.inc(n)

    def prompt(self, n: int) -> None:
        self._prompt.inc(n)
