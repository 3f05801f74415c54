"""`genlab serve RUN [RUN...]`: the OpenAI-compatible server (genlab.serve) under uvicorn."""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

from genlab.errors import GenlabError


def add_parser(sub, positive_int, port, nonneg_int) -> None:
    s = sub.add_parser(
        "serve",
        help="serve runs over an OpenAI-compatible HTTP API with a web page (text, images, samples, detection)",
    )
    s.add_argument("runs", nargs="+", metavar="RUN", help="run directories to serve (any family); the id is the name")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    s.add_argument("--port", type=port, default=8000, help="TCP port (default 8000)")
    s.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 and /metrics (else 401)")
    s.add_argument("--max-batch", type=positive_int, default=16, help="sequences decoded together per text run")
    s.add_argument(
        "--max-queue", type=nonneg_int, default=64, help="requests waiting for a batch slot before 429s (default 64)"
    )
    s.add_argument("--max-body", type=positive_int, default=8 << 20, help="largest request body in bytes (413)")
    s.add_argument(
        "--cors-origin", action="append", default=[], help="allow browser pages of this origin (repeatable; off)"
    )
    s.add_argument(
        "--threads", type=positive_int, default=None, help="torch intra-op threads (default: torch's, one per core)"
    )
    s.add_argument("--speculative", action="store_true", help="deepseek runs with MTP: drafted greedy decoding")
    s.add_argument(
        "--shutdown-timeout", type=float, default=10.0, help="seconds SIGINT/SIGTERM waits for requests in flight"
    )
    s.add_argument(
        "--device",
        default="auto",
        help="where the models run: auto (cuda when a CUDA GPU is available, else cpu), cpu, cuda, cuda:N",
    )


def cmd_serve(args) -> int:
    import socket

    from genlab.train.device import resolve_device

    if not 0 < args.shutdown_timeout < 3600:
        raise GenlabError(f"--shutdown-timeout {args.shutdown_timeout} must be between 0 and 3600 seconds")
    if args.api_key is not None and not args.api_key.strip():
        raise GenlabError("--api-key is empty")
    try:
        import uvicorn

        from genlab.serve.app import create_app
        from genlab.serve.metrics import Metrics
        from genlab.serve.models import ServeOptions, load_models
    except ImportError as e:
        msg = f"genlab serve needs FastAPI and uvicorn ({e.name} is missing): pip install 'genlab[serve]'"
        raise GenlabError(msg) from None
    try:  # a taken port is a one-line error before any model is loaded
        with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((args.host, args.port))
    except OSError as e:
        raise GenlabError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    device = resolve_device(args.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    metrics = Metrics()
    opts = ServeOptions(args.max_batch, args.max_queue, args.speculative)
    models = load_models(args.runs, str(device), opts, metrics)
    app = create_app(models, metrics, args.api_key, args.cors_origin or None, args.max_body)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=args.shutdown_timeout,
    )
    server = QuietServer(config)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    where = f"http://{shown}:{args.port}/"
    print(f"genlab serve: {', '.join(models)} on {where} (Ctrl-C stops)", file=sys.stderr, flush=True)
    server.run()
    print("genlab serve: stopped", file=sys.stderr, flush=True)
    return 0


def _server_class():
    import uvicorn

    class _QuietServer(uvicorn.Server):
        """uvicorn's Server, except that SIGINT/SIGTERM end it with exit status 0: uvicorn re-raises a
        captured signal after its graceful shutdown (the process would die of it); this one does not.
        A second signal forces the exit (requests in flight are cancelled)."""

        @contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return

            def handle(sig, frame):
                if self.should_exit:
                    self.force_exit = True
                self.should_exit = True

            sigs = (signal.SIGINT, signal.SIGTERM)
            old = {s: signal.signal(s, handle) for s in sigs}
            try:
                yield
            finally:
                for s, h in old.items():
                    signal.signal(s, h)

    return _QuietServer


def QuietServer(config):  # noqa: N802 (a class made on first use: uvicorn is an optional dependency)
    return _server_class()(config)
