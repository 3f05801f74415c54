"""Reading OpenAI-style JSON request bodies: every field checked with a message naming it (400), never
a traceback. `null` means "use the default", as OpenAI's API treats it."""

from __future__ import annotations

import json
import math

from genlab.serve.models import ApiError

MAX_SEED = 2**63 - 1


def parse_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as e:
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ApiError(400, f"the request body is not valid JSON: {msg}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(body).__name__}")
    return body


def integer(body: dict, name: str, default: int | None, lo: int | None = None, hi: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ApiError(400, f"'{name}' must be an integer, not {json.dumps(v)[:50]}", name)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ApiError(400, f"'{name}' = {v} must be {_range(lo, hi)}", name)
    return v


def number(body: dict, name: str, default: float, lo: float | None = None, hi: float | None = None) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ApiError(400, f"'{name}' must be a number, not {json.dumps(v)[:50]}", name)
    v = float(v)
    if not math.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ApiError(400, f"'{name}' = {v} must be a finite number {_range(lo, hi)}", name)
    return v


def boolean(body: dict, name: str, default: bool) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ApiError(400, f"'{name}' must be true or false", name)
    return v


def string(body: dict, name: str, default: str | None = None, choices: tuple[str, ...] = ()) -> str:
    v = body.get(name)
    if v is None:
        if default is None:
            raise ApiError(400, f"'{name}' is required", name)
        return default
    if not isinstance(v, str):
        raise ApiError(400, f"'{name}' must be a string", name)
    if choices and v not in choices:
        raise ApiError(400, f"'{name}' = {v[:50]!r} is not one of: {', '.join(choices)}", name)
    return v


def stops(body: dict, name: str = "stop") -> tuple[str, ...]:
    v = body.get(name)
    if v is None:
        return ()
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or len(v) > 4 or not all(isinstance(s, str) and s for s in v):
        raise ApiError(400, f"'{name}' must be a non-empty string or a list of up to 4 non-empty strings", name)
    return tuple(v)


def _range(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f"from {lo} to {hi}"
    return f">= {lo}" if lo is not None else f"<= {hi}"
