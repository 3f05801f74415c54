"""The FastAPI app of `genlab serve`: OpenAI-compatible endpoints for every family, the web page,
/health and /metrics.

    GET  /                        the web page (static/index.html, no outside assets)
    GET  /health                  {"status": "ok", "models": [...]}; never needs the API key
    GET  /metrics                 Prometheus text format
    GET  /v1/models               OpenAI's list; "genlab" says each run's kind (text | image | samples | detection)
    POST /v1/completions          text runs (serve.text)
    POST /v1/chat/completions     text runs, through the run's chat template
    POST /v1/images/generations   diffusion runs: OpenAI images schema, b64_json; steps, guidance, sampler, seed
    POST /v1/samples              density runs: binary samples (+ a PNG grid of image-shaped data)
    POST /v1/detections           detection runs: per-frame class scores of a feature array

Every error is an OpenAI error object {"error": {"message", "type", "param", "code"}} with a 4xx
status (401 key, 404 unknown model or route, 413 body too large, 429 queue full, 400 the rest);
an unexpected fault is a 500 with the same shape, never a traceback, and the server keeps serving.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import time
from contextlib import asynccontextmanager
from importlib import resources

import numpy as np
from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import HTMLResponse, JSONResponse, Response

from genlab.serve import params as P
from genlab.serve import text
from genlab.serve.metrics import Metrics
from genlab.serve.models import ApiError, DetectModel, ImageModel, SampleModel, Served, TextModel, b64

MAX_IMAGES, MAX_SAMPLES, MAX_FRAMES = 16, 256, 100_000
CODES = {401: "invalid_api_key", 404: "not_found", 413: "body_too_large", 429: "server_overloaded"}


def error_body(status: int, message: str, param: str | None = None, type_: str | None = None) -> dict:
    t = type_ or ("invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": t, "param": param, "code": CODES.get(status)}}


def error_response(status: int, message: str, param=None, type_=None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, type_), status_code=status)


class BodyTooLarge(Exception):
    pass


class Guard:
    """ASGI middleware: the API key (constant-time compare) on /v1 and /metrics, the body limit, and
    the count of answered requests by path and status."""

    def __init__(self, app, api_key: str | None, max_body: int, count):
        self.app, self.key, self.max_body, self.count = app, (api_key.encode() if api_key else None), max_body, count

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        path = scope.get("path", "")
        inner = send

        async def send(msg):
            if msg["type"] == "http.response.start":
                self.count(path, msg["status"])
            await inner(msg)

        if self.key is not None and (path.startswith("/v1") or path == "/metrics"):
            auth = headers.get(b"authorization", b"")
            given = auth[7:].strip() if auth[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(given, self.key):
                msg = "missing or wrong API key; send 'Authorization: Bearer KEY'"
                return await error_response(401, msg)(scope, receive, send)
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await error_response(413, f"the request body is larger than {self.max_body} bytes")(
                scope, receive, send
            )
        seen = 0

        async def counted():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge()
            return msg

        return await self.app(scope, counted, send)


def create_app(
    models: dict[str, Served],
    metrics: Metrics,
    api_key: str | None = None,
    cors_origins: list[str] | None = None,
    max_body: int = 8 << 20,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app):
        yield
        for m in models.values():
            m.close()

    app = FastAPI(title="genlab serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    page = resources.files("genlab.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return error_response(e.status, e.message, e.param, e.type)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request, e):
        return error_response(413, f"the request body is larger than {max_body} bytes")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e: StarletteHTTPException):
        msg = f"no route {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail)
        return error_response(e.status_code, msg)

    @app.exception_handler(Exception)
    async def _fault(request, e: Exception):
        return error_response(500, f"internal error: {type(e).__name__}")

    async def body_of(request: Request) -> dict:
        return P.parse_body(await request.body())

    def model_of(body: dict, kind: type) -> Served:
        name = P.string(body, "model", next(iter(models)) if len(models) == 1 else None)
        m = models.get(name)
        if m is None:
            raise ApiError(404, f"model {name[:100]!r} is not served here; see GET /v1/models", "model")
        if not isinstance(m, kind):
            raise ApiError(400, f"model {name!r} is a {m.kind} model; this endpoint is for {kind.kind} models", "model")
        return m

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(models)}

    @app.get("/metrics")
    async def metrics_text():
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models")
    async def list_models():
        data = [
            {"id": k, "object": "model", "created": created, "owned_by": "genlab", "genlab": m.describe()}
            for k, m in models.items()
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await body_of(request)
        return await text.completions(request, model_of(body, TextModel), body)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await body_of(request)
        return await text.chat_completions(request, model_of(body, TextModel), body)

    @app.post("/v1/images/generations")
    async def images(request: Request):
        body = await body_of(request)
        m = model_of(body, ImageModel)
        from genlab.families.diffusion.schedulers import SAMPLERS
        from genlab.families.diffusion.text_encoder import MAX_PROMPT_BYTES

        prompt = P.string(body, "prompt")
        if len(prompt.encode("utf-8")) > MAX_PROMPT_BYTES:
            raise ApiError(400, f"'prompt' is longer than {MAX_PROMPT_BYTES} bytes", "prompt")
        n = P.integer(body, "n", 1, 1, MAX_IMAGES)
        size = P.string(body, "size", f"{m.size}x{m.size}")
        if size != f"{m.size}x{m.size}":
            raise ApiError(400, f"'size' = {size[:20]!r}: this model makes {m.size}x{m.size} images only", "size")
        P.string(body, "response_format", "b64_json", ("b64_json",))
        steps = P.integer(body, "steps", min(50, m.max_steps), 1, m.max_steps)
        guidance = P.number(body, "guidance", 3.0, 0.0, 100.0)
        sampler = P.string(body, "sampler", "ddim", tuple(SAMPLERS))
        seed = P.integer(body, "seed", None, 0, P.MAX_SEED)
        seed = text.random_seed() if seed is None else seed
        pngs = await m.run_locked(m.generate, prompt, n, steps, guidance, sampler, seed)
        return {"created": int(time.time()), "data": [{"b64_json": b64(p), "revised_prompt": prompt} for p in pngs]}

    @app.post("/v1/samples")
    async def samples(request: Request):
        body = await body_of(request)
        m = model_of(body, SampleModel)
        n = P.integer(body, "n", 16, 1, MAX_SAMPLES)
        seed = P.integer(body, "seed", None, 0, P.MAX_SEED)
        seed = text.random_seed() if seed is None else seed
        fmt = P.string(body, "response_format", "json", ("json", "png"))
        if fmt == "png" and m.shape is None:
            raise ApiError(400, f"{m.n_dims} dimensions are not a square image; ask for response_format json")
        x = await m.run_locked(m.sample, n, seed)
        png = m.grid_png(x)
        if fmt == "png":
            return Response(png, media_type="image/png")
        out = {"object": "list", "model": m.name, "seed": seed, "shape": m.shape, "data": x.tolist()}
        if png is not None:
            out["grid_b64"] = b64(png)
        return out

    @app.post("/v1/detections")
    async def detections(request: Request):
        body = await body_of(request)
        m = model_of(body, DetectModel)
        smooth = P.integer(body, "smooth", 1, 1, 1000)
        feats = _features(body, m)
        scores = await m.run_locked(m.detect, feats, smooth)
        return {
            "object": "list",
            "model": m.name,
            "classes": m.classes,
            "scores": np.round(scores.astype(np.float64), 6).tolist(),
            "labels": [m.classes[i] for i in scores.argmax(1)] if len(scores) else [],
        }

    known = {r.path for r in app.routes}
    if cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["*"], allow_headers=["*"])

    def count(path: str, status: int) -> None:
        metrics.requests.labels(path if path in known else "other", str(status)).inc()

    app.add_middleware(Guard, api_key=api_key, max_body=max_body, count=count)
    return app


def _features(body: dict, m: DetectModel) -> np.ndarray:
    """(N, feat_dim) float32 from "features" (nested lists) or "features_npy_b64" (a base64 .npy file)."""
    if body.get("features_npy_b64") is not None:
        try:
            raw = base64.b64decode(P.string(body, "features_npy_b64"), validate=True)
            a = np.load(io.BytesIO(raw), allow_pickle=False)
        except (ValueError, binascii.Error, OSError, EOFError) as e:
            raise ApiError(400, f"'features_npy_b64' is not a base64 .npy file: {e}", "features_npy_b64") from None
        where = "features_npy_b64"
    else:
        where = "features"
        f = body.get("features")
        if not isinstance(f, list):
            raise ApiError(400, "'features' must be a list of frames, each a list of numbers", where)
        try:
            a = np.asarray(f, dtype=np.float32)
        except (ValueError, TypeError, OverflowError):
            raise ApiError(400, "'features' must be a list of frames, each a list of numbers", where) from None
    if a.dtype.kind not in "fiu" or a.ndim != 2 or a.shape[1] != m.feat_dim or not 1 <= len(a) <= MAX_FRAMES:
        raise ApiError(
            400, f"'{where}' must be an (N, {m.feat_dim}) array of numbers with 1 <= N <= {MAX_FRAMES}", where
        )
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise ApiError(400, f"'{where}' contains NaN or inf", where)
    return a
