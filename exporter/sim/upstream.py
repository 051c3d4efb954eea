"""A simulated OpenAI-compatible upstream (what vLLM, SGLang, TGI or llama.cpp server look like to the
proxy): chat, completions, embeddings and a minimal Responses API, streaming or not.

Usage is deterministic, so tests can predict it exactly:
- prompt tokens: whitespace-separated words of every prompt string + 3 per chat message
  (``prompt_tokens(body)``);
- cached prompt tokens: the words of the system message(s), as if a shared system prompt sat in the
  prefix cache;
- completion tokens: ``min(max_tokens, 8 + crc32(prompt text + seed) % 40)``; each token is one
  word from a fixed list followed by a space; one SSE chunk per token.

Faults, per request with the header ``X-Sim-Fault`` or for the next N requests via
``POST /sim/fault {"fault": "...", "count": N}``:
``500`` / ``429`` / ``503`` (error JSON), ``drop`` (stream: half the tokens then the connection is cut;
non-streaming: cut before answering), ``no-usage`` (never report usage), ``slow`` (sleep
``X-Sim-Slow-Seconds``, default 30, before answering). ``X-Sim-Tokens-Per-Second`` overrides the
streaming speed for one request.

``GET /sim/stats`` reports what the simulator saw and reported (per model), how many streams a client
abandoned or gave up waiting for (``cancelled``), and which Authorization headers arrived. ``POST /sim/reset`` zeroes it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
import time
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from exporter.health import add_health_routes

WORDS = (
    "the",
    "cost",
    "of",
    "gpu",
    "time",
    "is",
    "shared",
    "by",
    "every",
    "team",
    "that",
    "sends",
    "tokens",
    "through",
    "proxy",
    "and",
    "each",
    "request",
    "counts",
    "once",
    "budget",
    "model",
    "pool",
    "hour",
)
FAULTS = ("500", "429", "503", "drop", "no-usage", "slow")


@dataclass
class SimOptions:
    models: tuple[str, ...] = ("sim-small", "sim-large")
    tokens_per_second: float = 0.0  # 0: as fast as possible
    latency_ms: float = 0.0  # before the first token / the response
    api_key: str | None = None  # when set, requests must carry "Authorization: Bearer <api_key>"
    embedding_dims: int = 8
    strict_models: bool = False  # 404 for models not in ``models``


@dataclass
class ModelStats:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reported_prompt_tokens: int = 0  # usage actually sent back in a response
    reported_completion_tokens: int = 0


@dataclass
class SimStats:
    requests: int = 0
    completed: int = 0
    cancelled: int = 0  # streams the client abandoned before the end
    dropped: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    auth: Counter[str] = field(default_factory=Counter)
    models: dict[str, ModelStats] = field(default_factory=dict)
    inflight: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "completed": self.completed,
            "cancelled": self.cancelled,
            "dropped": self.dropped,
            "inflight": self.inflight,
            "faults": dict(self.faults),
            "auth": dict(self.auth),
            "models": {k: vars(v) for k, v in self.models.items()},
        }


@dataclass
class SimState:
    options: SimOptions
    stats: SimStats = field(default_factory=SimStats)
    pending_fault: str | None = None
    pending_count: int = 0


SIM = web.AppKey("chargeback_sim_state", SimState)


# --------------------------------------------------------------------------- deterministic usage


def _texts(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, list):
        for v in value:
            _texts(v, out)
    elif isinstance(value, dict):
        for key in ("content", "text", "input"):
            if key in value:
                _texts(value[key], out)


def prompt_text(body: dict[str, Any]) -> str:
    parts: list[str] = []
    for key in ("instructions", "messages", "prompt", "input"):
        if key in body:
            _texts(body[key], parts)
    return "\n".join(parts)


def prompt_tokens(body: dict[str, Any]) -> int:
    words = len(prompt_text(body).split())
    messages = body.get("messages")
    return words + (3 * len(messages) if isinstance(messages, list) else 0)


def cached_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    parts: list[str] = []
    for m in messages:
        if isinstance(m, dict) and m.get("role") in ("system", "developer"):
            _texts(m.get("content"), parts)
    return sum(len(p.split()) for p in parts)


def completion_tokens(body: dict[str, Any]) -> int:
    seed = body.get("seed", 0)
    n = 8 + zlib.crc32(f"{prompt_text(body)}|{seed}".encode()) % 40
    limit = body.get("max_completion_tokens", body.get("max_tokens", body.get("max_output_tokens")))
    if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0:
        n = min(n, limit)
    return n


def expected_usage(endpoint: str, body: dict[str, Any]) -> dict[str, int]:
    """The usage the simulator reports for this request body (what the proxy must count)."""
    prompt = prompt_tokens(body)
    completion = 0 if endpoint.endswith("embeddings") else completion_tokens(body)
    cached = cached_tokens(body) if endpoint.endswith("chat/completions") else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cached_tokens": cached,
    }


def token_words(body: dict[str, Any], n: int) -> list[str]:
    base = zlib.crc32(prompt_text(body).encode())
    return [WORDS[(base + i * 7) % len(WORDS)] + " " for i in range(n)]


# --------------------------------------------------------------------------- handlers


def _error(status: int, message: str, type_: str = "server_error") -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": type_, "param": None, "code": None}}, status=status
    )


def _fault(request: web.Request, state: SimState) -> str | None:
    fault = request.headers.get("X-Sim-Fault")
    if fault is None and state.pending_count > 0:
        state.pending_count -= 1
        fault = state.pending_fault
    if fault:
        state.stats.faults[fault] += 1
    return fault or None


async def _sleep_for_tokens(rate: float, n: int = 1) -> None:
    if rate > 0:
        await asyncio.sleep(n / rate)


def _rate(request: web.Request, opts: SimOptions) -> float:
    """Tokens per second for this request (header X-Sim-Tokens-Per-Second overrides the option)."""
    try:
        return float(request.headers.get("X-Sim-Tokens-Per-Second", opts.tokens_per_second))
    except ValueError:
        return opts.tokens_per_second


def _usage_obj(endpoint: str, usage: dict[str, int]) -> dict[str, Any]:
    if endpoint == "responses":
        return {
            "input_tokens": usage["prompt_tokens"],
            "output_tokens": usage["completion_tokens"],
            "total_tokens": usage["total_tokens"],
            "input_tokens_details": {"cached_tokens": usage["cached_tokens"]},
        }
    out: dict[str, Any] = {"prompt_tokens": usage["prompt_tokens"], "total_tokens": usage["total_tokens"]}
    if endpoint != "embeddings":
        out["completion_tokens"] = usage["completion_tokens"]
        out["prompt_tokens_details"] = {"cached_tokens": usage["cached_tokens"]}
    return out


async def _inference(request: web.Request, endpoint: str) -> web.StreamResponse:
    state = request.app[SIM]
    opts = state.options
    stats = state.stats
    stats.requests += 1
    stats.auth[request.headers.get("Authorization", "")] += 1
    if opts.api_key is not None and request.headers.get("Authorization") != f"Bearer {opts.api_key}":
        return _error(401, "invalid upstream credential", "invalid_request_error")
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "malformed JSON", "invalid_request_error")
    model = body.get("model")
    if not isinstance(model, str) or (opts.strict_models and model not in opts.models):
        return _error(404, f"model {model!r} not served here", "invalid_request_error")
    fault = _fault(request, state)
    if fault in ("500", "429", "503"):
        return _error(
            int(fault), f"simulated {fault}", "rate_limit_error" if fault == "429" else "server_error"
        )
    if fault == "slow":
        await asyncio.sleep(float(request.headers.get("X-Sim-Slow-Seconds", "30")))
    if opts.latency_ms > 0:
        await asyncio.sleep(opts.latency_ms / 1000)

    usage = expected_usage(endpoint, body)
    ms = stats.models.setdefault(model, ModelStats())
    ms.requests += 1
    ms.prompt_tokens += usage["prompt_tokens"]
    ms.completion_tokens += usage["completion_tokens"]
    ms.cached_tokens += usage["cached_tokens"]
    report = fault != "no-usage"
    stats.inflight += 1
    try:
        if endpoint == "embeddings":
            return _embeddings(body, model, usage, report, ms, opts)
        if fault == "drop" and not body.get("stream"):
            stats.dropped += 1
            if request.transport is not None:
                request.transport.close()
            raise web.HTTPInternalServerError  # never reaches the client: the connection is gone
        if body.get("stream"):
            return await _stream(request, endpoint, body, model, usage, report, fault == "drop", state, ms)
        words = token_words(body, usage["completion_tokens"])
        try:
            await _sleep_for_tokens(_rate(request, opts), len(words))
        except asyncio.CancelledError:
            stats.cancelled += 1  # the client (the proxy) gave up before the answer
            raise
        stats.completed += 1
        return web.json_response(_full_response(endpoint, model, "".join(words), usage, report, ms))
    finally:
        stats.inflight -= 1


def _count_reported(ms: ModelStats, usage: dict[str, int]) -> None:
    ms.reported_prompt_tokens += usage["prompt_tokens"]
    ms.reported_completion_tokens += usage["completion_tokens"]


def _full_response(
    endpoint: str, model: str, text: str, usage: dict[str, int], report: bool, ms: ModelStats
) -> dict[str, Any]:
    rid = uuid.uuid4().hex[:24]
    now = int(time.time())
    if endpoint == "chat/completions":
        out: dict[str, Any] = {
            "id": f"chatcmpl-{rid}",
            "object": "chat.completion",
            "created": now,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
        }
    elif endpoint == "completions":
        out = {
            "id": f"cmpl-{rid}",
            "object": "text_completion",
            "created": now,
            "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
        }
    else:  # responses
        out = {
            "id": f"resp_{rid}",
            "object": "response",
            "created_at": now,
            "model": model,
            "status": "completed",
            "output": [
                {
                    "type": "message",
                    "id": f"msg_{rid}",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ],
        }
    if report:
        out["usage"] = _usage_obj(endpoint, usage)
        _count_reported(ms, usage)
    return out


def _embeddings(
    body: dict[str, Any], model: str, usage: dict[str, int], report: bool, ms: ModelStats, opts: SimOptions
) -> web.Response:
    inputs = body.get("input")
    items = inputs if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) else [inputs]
    data = []
    for i, item in enumerate(items):
        seed = zlib.crc32(json.dumps(item).encode())
        vec = [math.sin(seed + k) for k in range(opts.embedding_dims)]
        if body.get("encoding_format") == "base64":
            emb: Any = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        else:
            emb = vec
        data.append({"object": "embedding", "index": i, "embedding": emb})
    out: dict[str, Any] = {"object": "list", "data": data, "model": model}
    if report:
        out["usage"] = _usage_obj("embeddings", usage)
        _count_reported(ms, usage)
    return web.json_response(out)


def _sse(obj: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def _stream(
    request: web.Request,
    endpoint: str,
    body: dict[str, Any],
    model: str,
    usage: dict[str, int],
    report: bool,
    drop: bool,
    state: SimState,
    ms: ModelStats,
) -> web.StreamResponse:
    rate = _rate(request, state.options)
    include_usage = report and (
        endpoint == "responses"
        or (
            isinstance(body.get("stream_options"), dict)
            and body["stream_options"].get("include_usage") is True
        )
    )
    words = token_words(body, usage["completion_tokens"])
    rid = uuid.uuid4().hex[:24]
    now = int(time.time())
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    finished = False
    try:
        chat = endpoint == "chat/completions"

        def chunk(choice: dict[str, Any]) -> dict[str, Any]:
            """A chat or completions stream chunk with one choice (``choice`` without its index)."""
            c: dict[str, Any] = {
                "id": f"{'chatcmpl' if chat else 'cmpl'}-{rid}",
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": now,
                "model": model,
                "choices": [{"index": 0, **choice}],
            }
            if include_usage:
                c["usage"] = None
            return c

        if chat:
            await resp.write(
                _sse(chunk({"delta": {"role": "assistant", "content": ""}, "finish_reason": None}))
            )
            pieces = [chunk({"delta": {"content": w}, "finish_reason": None}) for w in words]
            last = chunk({"delta": {}, "finish_reason": "stop"})
        elif endpoint == "completions":
            pieces = [chunk({"text": w, "finish_reason": None}) for w in words]
            last = chunk({"text": "", "finish_reason": "stop"})
        else:  # responses: typed events, usage in response.completed
            await resp.write(
                _sse(
                    {
                        "type": "response.created",
                        "response": {"id": f"resp_{rid}", "model": model, "status": "in_progress"},
                    },
                    "response.created",
                )
            )
            pieces = [
                {
                    "type": "response.output_text.delta",
                    "item_id": f"msg_{rid}",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": w,
                }
                for w in words
            ]
            last = None
        for i, piece in enumerate(pieces):
            if drop and i >= len(pieces) // 2:
                state.stats.dropped += 1
                if request.transport is not None:
                    request.transport.abort()
                return resp
            await _sleep_for_tokens(rate)
            await resp.write(_sse(piece, "response.output_text.delta" if endpoint == "responses" else None))
        if endpoint == "responses":
            done = _full_response("responses", model, "".join(words), usage, include_usage, ms)
            await resp.write(_sse({"type": "response.completed", "response": done}, "response.completed"))
        else:
            await resp.write(_sse(last))
            if include_usage:
                u = {
                    "id": f"x-{rid}",
                    "object": "chat.completion.chunk"
                    if endpoint == "chat/completions"
                    else "text_completion",
                    "created": now,
                    "model": model,
                    "choices": [],
                    "usage": _usage_obj(endpoint, usage),
                }
                _count_reported(ms, usage)
                await resp.write(_sse(u))
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        finished = True
        state.stats.completed += 1
    except (ConnectionResetError, asyncio.CancelledError):
        if not finished:
            state.stats.cancelled += 1
        raise
    return resp


async def _models(request: web.Request) -> web.Response:
    opts = request.app[SIM].options
    return web.json_response(
        {
            "object": "list",
            "data": [{"id": m, "object": "model", "created": 0, "owned_by": "sim"} for m in opts.models],
        }
    )


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM].stats.as_dict())


async def _reset(request: web.Request) -> web.Response:
    state = request.app[SIM]
    state.stats = SimStats()
    state.pending_fault, state.pending_count = None, 0
    return web.json_response({"ok": True})


async def _set_fault(request: web.Request) -> web.Response:
    state = request.app[SIM]
    body = await request.json()
    fault = body.get("fault")
    if fault is not None and fault not in FAULTS:
        return _error(400, f"unknown fault {fault!r} (one of {', '.join(FAULTS)})", "invalid_request_error")
    state.pending_fault = fault
    state.pending_count = int(body.get("count", 1)) if fault else 0
    return web.json_response({"fault": fault, "count": state.pending_count})


def create_sim_app(options: SimOptions | None = None) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[SIM] = SimState(options or SimOptions())
    for endpoint in ("chat/completions", "completions", "embeddings", "responses"):

        async def handler(request: web.Request, endpoint: str = endpoint) -> web.StreamResponse:
            return await _inference(request, endpoint)

        app.router.add_post(f"/v1/{endpoint}", handler)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/sim/stats", _stats)
    app.router.add_post("/sim/reset", _reset)
    app.router.add_post("/sim/fault", _set_fault)
    add_health_routes(app)
    return app


async def serve_sim(options: SimOptions, listen: tuple[str, ...], stop: asyncio.Event | None = None) -> int:
    """Run the simulator until SIGTERM/SIGINT (or ``stop``)."""
    import signal

    from exporter.config import parse_listen

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(
        create_sim_app(options),
        handle_signals=False,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=1,
    )
    await runner.setup()
    try:
        for addr in listen:
            host, port = parse_listen(addr, "--web.listen-address", "command line")
            await web.TCPSite(runner, host, port, backlog=1024, reuse_address=True).start()
        print("simulator ready", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0
