"""The proxy's aiohttp applications: the OpenAI-compatible API (``create_app``) and the separate
metrics listener (``create_metrics_app``). Both share one ``ProxyState``.

Request flow: bearer token → KeyCache → user/team; body read with a size limit and parsed for
``model`` (and ``stream``); model checked against the config and the team's allowance; forwarded to
one of the model's upstreams (round-robin, skipping ones that refuse connections) with the model's
own credential; usage read from the JSON or the SSE stream; one ledger row and the counters per
request, whatever the outcome (recorded in a ``finally``, so cancellation cannot skip it).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from aiohttp import web

from exporter.config import Config, Model
from exporter.exposition import metrics_response
from exporter.health import add_health_routes
from exporter.ledger.keys import expired_message
from exporter.ledger.row import LedgerRow
from exporter.ledger.validate import storable_text, tokens_problem
from exporter.logs import get_logger
from exporter.proxy.call import Call
from exporter.proxy.errors import error_response
from exporter.proxy.exchange import AiohttpExchange, Exchange
from exporter.proxy.lifecycle import SHUTDOWN_STATUS, Streams, journal_begin
from exporter.proxy.metrics import ProxyMetrics
from exporter.proxy.redact import clean_message, public_url
from exporter.proxy.relay import HOP_BY_HOP, relay_body, relay_stream
from exporter.proxy.upstream_client import Unreachable, UpstreamPool, UpstreamResponse, plain_target
from exporter.proxy.usage import Usage, estimate_tokens, prompt_chars
from exporter.proxy.usage_count import UsageCounter

if TYPE_CHECKING:
    from exporter.limits.limiter import Limiter

log = get_logger(__name__)

REQUEST_DROP = HOP_BY_HOP | {
    "host",
    "content-length",
    "authorization",
    "api-key",
    "x-api-key",
    "accept-encoding",
    "content-encoding",
    "cookie",
}

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
# endpoints where stream_options.include_usage exists (the Responses API always sends usage)
INCLUDE_USAGE_ENDPOINTS = frozenset(("/v1/chat/completions", "/v1/completions"))
TOO_DEEP = "malformed JSON body: nested too deeply"
LEDGER_CLOSE_MIN_SECONDS = 2.0  # the ledger's time at shutdown when the grace period is used up
COUNT_DRAIN_MAX_SECONDS = 10.0  # tokenize counts still running at shutdown get at most this


class KeyLookup(Protocol):
    async def start(self) -> None: ...
    def lookup(self, token: str) -> Any: ...
    async def close(self) -> None: ...


class LedgerSink(Protocol):
    async def start(self) -> None: ...
    def submit(self, row: LedgerRow) -> None: ...
    def stats(self) -> Any: ...
    async def close(self, timeout: float) -> None: ...  # noqa: ASYNC109


@dataclass
class ProxyState:
    cfg: Config
    keys: KeyLookup
    ledger: LedgerSink
    metrics: ProxyMetrics
    session: aiohttp.ClientSession | None = None  # https upstreams, URL credentials, tokenize counts
    pool: UpstreamPool | None = None  # plain-http upstreams (exporter/proxy/upstream_client.py)
    rr: dict[str, int] = field(default_factory=dict)
    draining: bool = False
    inflight: int = 0
    cutting: bool = False  # the grace period is over: what still runs is being ended
    shutdown_deadline: float | None = None  # time.monotonic() by which shutdown must be done
    streams: Streams = field(default_factory=Streams)
    # counts usage with the model server's tokenizer after a response that carried none
    counter: UsageCounter = field(default_factory=UsageCounter)
    limiter: Limiter | None = None  # when the config has a limits: section


STATE = web.AppKey("chargeback_proxy_state", ProxyState)


class RequestIds:
    """Request ids and start timestamps, made without a syscall or a datetime per request.

    An id is 32 hex digits, like a UUID's: 12 of milliseconds since the epoch, 10 of a random
    per-process prefix and 10 of a counter that starts at a random value. Ids are unique (within a
    process by the counter, across replicas by the prefix) and sort by time, so the ledger's
    primary-key index grows at its end instead of being written at random places.
    """

    __slots__ = ("_counter", "_prefix", "_second", "_second_text")

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(5)
        self._counter = itertools.count(secrets.randbits(39))
        self._second = -1
        self._second_text = ""

    def new(self) -> tuple[str, str]:
        """(request id, UTC timestamp 'YYYY-MM-DDTHH:MM:SS.ffffffZ')."""
        ns = time.time_ns()
        second, rest = divmod(ns, 1_000_000_000)
        if second != self._second:  # strftime once per second, not once per request
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        rid = f"{ns // 1_000_000:012x}{self._prefix}{next(self._counter) & 0xFFFFFFFFFF:010x}"
        return rid, f"{self._second_text}.{rest // 1000:06d}Z"


_IDS = RequestIds()


def _bearer(headers: Mapping[str, str]) -> str | None:
    header = headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _finish(state: ProxyState, call: Call) -> None:
    """Record the request: ledger row + counters. Never raises (a bug here must not hide the response)."""
    try:
        duration = time.perf_counter() - call.started
        if call.usage is not None:  # the last check, whichever path counted it (upstream, tokenize)
            u = call.usage
            problem = tokens_problem(u.prompt_tokens, u.completion_tokens, u.total_tokens, u.cached_tokens)
            if problem:
                call.usage, call.estimated, call.usage_source = None, True, ""
                call.usage_reason = f"usage is invalid: {problem}"
        usage = call.usage
        if usage is None and call.estimated:
            if call.body is not None:
                call.prompt_chars = prompt_chars(call.body)
            prompt = estimate_tokens(call.prompt_chars)
            completion = estimate_tokens(call.delivered_chars)
            usage = Usage(prompt, completion, prompt + completion, 0)
        if call.estimated:
            source = "estimate"
        elif call.usage_source:
            source = call.usage_source
        elif call.usage is not None:
            source = "upstream"
        else:
            source = ""
        usage = usage or Usage(0, 0, 0, 0)
        ttft = (call.first_byte - call.started) if call.first_byte is not None else None
        row = LedgerRow(
            request_id=call.request_id,
            timestamp=call.timestamp,
            user_email=call.user,
            team=call.team,
            model=storable_text(call.model_name, 200),
            endpoint=call.endpoint,
            status_code=call.status,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            cached_tokens=usage.cached_tokens,
            estimated=call.estimated,
            stream=call.stream,
            duration_ms=round(duration * 1000, 3),
            ttft_ms=round(ttft * 1000, 3) if ttft is not None else None,
            api_key_id=call.api_key_id,
            upstream=public_url(call.upstream),
            error=storable_text(clean_message(call.model, call.error), 500) if call.error else "",
            usage_source=source,
            usage_reason=(
                storable_text(clean_message(call.model, call.usage_reason), 200) if call.usage_reason else ""
            ),
        )
        state.ledger.submit(row)
        if state.limiter is not None and call.forwarded and call.model is not None:
            state.limiter.record(
                call.user, call.team, call.model, usage.prompt_tokens, usage.completion_tokens
            )
        m = state.metrics
        if call.user and call.model is not None:
            m.usage.record(
                call.user,
                call.team,
                call.model.name,
                call.status,
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.cached_tokens,
                duration,
                call.estimated,
            )
            if call.forwarded:
                m.observe(call.model.name, duration, ttft if call.stream else None)
            if source:
                state.counter.sources.inc(call.model.name, source)
        else:
            m.usage.reject(call.status)
    except Exception:  # pragma: no cover - defensive
        log.exception("failed to record request %s", call.request_id)


def _reply(
    call: Call,
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> web.Response:
    call.status = status
    call.error = message = clean_message(call.model, message)
    return error_response(status, message, type_, code, param, headers={"X-Request-Id": call.request_id})


def _upstream_headers(ex: Exchange, model: Model, call: Call) -> dict[str, str]:
    connection = ex.headers.get("Connection")
    drop = REQUEST_DROP | {h.strip().lower() for h in connection.split(",")} if connection else REQUEST_DROP
    headers = {k: v for k, v in ex.headers.items() if k.lower() not in drop}
    headers["Content-Type"] = "application/json"
    headers["Accept-Encoding"] = "identity"  # usage must be readable; compression is the client hop's job
    headers["X-Request-Id"] = call.request_id
    if model.api_key:
        headers["Authorization"] = f"Bearer {model.api_key}"
    return headers


def _upstream_order(state: ProxyState, model: Model) -> Sequence[str]:
    n = len(model.upstreams)
    if n == 1:  # the usual sidecar: nothing to rotate
        return model.upstreams
    i = state.rr.get(model.name, 0)
    state.rr[model.name] = (i + 1) % n
    return [model.upstreams[(i + k) % n] for k in range(n)]


async def _handle(request: web.Request) -> web.StreamResponse:
    """aiohttp's route handler for the API endpoints (the fast lane calls ``handle`` itself)."""
    ex = AiohttpExchange(request)
    response = await handle(request.app[STATE], ex)
    if response is None:  # streamed
        assert ex.response is not None
        return ex.response
    return response


async def handle(state: ProxyState, ex: Exchange) -> web.Response | None:
    """One API request, on either lane: the response to send, or None when it was streamed through
    ``ex``. Records the request (ledger row, counters) whatever happens."""
    rid, timestamp = _IDS.new()
    call = Call(rid, time.perf_counter(), timestamp, ex.path)
    try:
        return await _serve(ex, state, call)
    except asyncio.CancelledError:
        # the lane cancels the handler when the client's connection is lost
        if call.complete:
            raise  # the stream was delivered in full; the client closing after its end is no error
        if state.cutting:  # the proxy ended it, not the client (see server.py)
            call.status = SHUTDOWN_STATUS
            call.error = "request cut by proxy shutdown"
        elif not call.status or call.status < 400 or call.forwarded:
            call.status = 499
            call.error = call.error or "client closed the connection"
            if call.upstream and call.usage is None:
                call.estimated = True  # the upstream had the request: bill what it likely processed
                call.usage_reason = call.usage_reason or "client closed before usage was reported"
        raise
    finally:
        if state.counter.defer(state, call, _finish):
            journal_begin(state.ledger, call, call.status)  # recorded after the response is sent
        else:
            _finish(state, call)


async def _serve(ex: Exchange, state: ProxyState, call: Call) -> web.Response | None:
    cfg = state.cfg
    if state.draining:
        return _reply(call, 503, "the proxy is shutting down", "service_unavailable", "shutting_down")
    token = _bearer(ex.headers)
    record = state.keys.lookup(token) if token else None
    if record is None:
        msg = (
            "missing API key (send Authorization: Bearer <token>)"
            if token is None
            else "invalid or revoked API key"
        )
        return _reply(call, 401, msg, "invalid_request_error", "invalid_api_key")
    call.user = record.user_email
    call.team = cfg.team_of(record.user_email) or record.team
    call.api_key_id = str(record.key_id)
    expired = expired_message(record, time.time())
    if expired is not None:
        return _reply(call, 401, expired, "invalid_request_error", "expired_api_key")

    if ex.content_type not in ("application/json", "", "application/octet-stream", "text/plain"):
        return _reply(
            call, 400, f"expected a JSON body, got Content-Type {ex.content_type}", code="invalid_json"
        )
    if ex.headers.get("Content-Encoding", "identity").lower() != "identity":
        return _reply(call, 400, "compressed request bodies are not supported", code="unsupported_encoding")
    raw = await ex.read_body(cfg.proxy.max_body_bytes)
    if raw is None:
        return _reply(
            call,
            413,
            f"request body is larger than {cfg.proxy.max_body_bytes} bytes",
            code="request_too_large",
        )
    try:
        body = json.loads(raw)
    except ValueError as exc:
        return _reply(call, 400, f"malformed JSON body: {exc}", code="invalid_json")
    except RecursionError:
        return _reply(call, 400, TOO_DEEP, code="invalid_json")
    if not isinstance(body, dict):
        return _reply(call, 400, "the JSON body must be an object", code="invalid_json")
    name = body.get("model")
    if not isinstance(name, str) or not name:
        return _reply(
            call, 400, "'model' is required and must be a string", code="invalid_request", param="model"
        )
    call.model_name = name
    model = cfg.models.get(name)
    if model is None:
        return _reply(call, 404, f"The model '{name}' does not exist", code="model_not_found", param="model")
    call.model = model
    if model.allowed_teams is not None and call.team not in model.allowed_teams:
        return _reply(
            call,
            403,
            f"team '{call.team}' may not use model '{name}'",
            "permission_error",
            "model_not_allowed",
            "model",
        )

    call.stream = body.get("stream") is True
    call.body = body  # prompt characters are counted only if an estimate is needed
    hide_usage = False
    changed = False
    if call.stream and call.endpoint in INCLUDE_USAGE_ENDPOINTS:
        opts = body.get("stream_options")
        if not isinstance(opts, dict) or opts.get("include_usage") is not True:
            opts = dict(opts) if isinstance(opts, dict) else {}
            hide_usage = True
            opts["include_usage"] = True
            body["stream_options"] = opts
            changed = True
    if model.upstream_model and model.upstream_model != name:
        body["model"] = model.upstream_model
        changed = True
    # Unchanged bodies go upstream as the client sent them (no re-serialisation); anything that is
    # not plain UTF-8 JSON text (a BOM, UTF-16) is re-encoded so the upstream can read it.
    try:
        payload = (
            json.dumps(body, separators=(",", ":")).encode() if changed or raw.lstrip()[:1] != b"{" else raw
        )
    except RecursionError:  # parsed at the edge of the stack's depth, re-encoded a little deeper
        return _reply(call, 400, TOO_DEEP, code="invalid_json")
    if state.limiter is not None:
        refused = await state.limiter.check(call.user, call.team)
        if refused is not None:  # not forwarded; recorded as a 429 with the limit's code and reason
            call.status, call.error = 429, f"{refused.code}: {refused.message}"
            headers = {"X-Request-Id": call.request_id}
            if refused.retry_after is not None:
                headers["Retry-After"] = str(refused.retry_after)
            return error_response(429, refused.message, refused.code, refused.code, headers=headers)
    return await _forward(ex, state, call, model, payload, hide_usage)


async def _open_upstream(
    ex: Exchange, state: ProxyState, call: Call, model: Model, payload: bytes
) -> aiohttp.ClientResponse | UpstreamResponse | web.Response:
    """POST to the first upstream that accepts the connection; an error response when none does."""
    assert state.session is not None and state.pool is not None
    headers = _upstream_headers(ex, model, call)
    suffix = call.endpoint.removeprefix("/v1")
    last_error = ""
    for base in _upstream_order(state, model):
        call.upstream = base
        target = plain_target(base)
        try:
            if target is not None:
                return await state.pool.post(target, suffix, headers, payload)
            return await state.session.post(base + suffix, data=payload, headers=headers)
        except (Unreachable, aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            last_error = f"{public_url(base)}: {exc}"
            log.warning("upstream %s unreachable for %s: %s", public_url(base), model.name, exc)
            continue
        except aiohttp.SocketTimeoutError:
            return _reply(
                call,
                504,
                f"upstream for model '{model.name}' timed out",
                "upstream_error",
                "upstream_timeout",
            )
        except (aiohttp.ClientError, OSError) as exc:
            return _reply(
                call,
                502,
                f"upstream for model '{model.name}' failed: {exc}",
                "upstream_error",
                "upstream_error",
            )
    call.upstream = ""
    return _reply(
        call,
        502,
        f"no upstream for model '{model.name}' is reachable ({last_error})",
        "upstream_error",
        "upstream_unreachable",
    )


async def _forward(
    ex: Exchange, state: ProxyState, call: Call, model: Model, payload: bytes, hide_usage: bool
) -> web.Response | None:
    state.metrics.inflight_inc(model.name)
    state.inflight += 1
    try:
        opened = await _open_upstream(ex, state, call, model, payload)
        if isinstance(opened, web.Response):
            return opened
        call.forwarded = True
        upstream = opened
        try:
            call.first_byte = time.perf_counter()
            ctype = upstream.headers.get("Content-Type", "")
            if upstream.status < 400 and ctype.startswith("text/event-stream"):
                # A stream's response starts long before its row exists: journal the start now. (A
                # plain response's row is journaled before its first byte is sent.)
                journal_begin(state.ledger, call, upstream.status)
                state.streams.add(call.request_id, upstream)
                try:
                    await relay_stream(ex, call, upstream, hide_usage, state.streams)
                    return None
                finally:
                    state.streams.discard(call.request_id)
            return await relay_body(call, upstream)
        except BaseException:
            upstream.close()  # unfinished: drop the connection so the upstream stops working
            raise
        finally:
            upstream.release()
    finally:
        state.inflight -= 1
        state.metrics.inflight_dec(model.name)


async def _models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    token = _bearer(request.headers)
    record = state.keys.lookup(token) if token else None
    if record is None:
        state.metrics.usage.reject(401)
        return error_response(401, "invalid or missing API key", code="invalid_api_key")
    expired = expired_message(record, time.time())
    if expired is not None:
        return error_response(401, expired, code="expired_api_key")
    team = state.cfg.team_of(record.user_email) or record.team
    data = [
        {"id": m.name, "object": "model", "created": 0, "owned_by": "chargeback"}
        for m in state.cfg.models.values()
        if m.allowed_teams is None or team in m.allowed_teams
    ]
    return web.json_response({"object": "list", "data": data})


async def _usage(request: web.Request) -> web.Response:
    """GET /v1/usage: the caller's own usage this billing month and the limits that apply."""
    state = request.app[STATE]
    token = _bearer(request.headers)
    record = state.keys.lookup(token) if token else None
    if record is None:
        return error_response(401, "invalid or missing API key", code="invalid_api_key")
    expired = expired_message(record, time.time())
    if expired is not None:
        return error_response(401, expired, code="expired_api_key")
    if state.limiter is None:
        return error_response(
            404,
            "this proxy does not count usage per billing month: its config has no limits: section",
            code="usage_not_tracked",
        )
    team = state.cfg.team_of(record.user_email) or record.team
    return web.json_response(await state.limiter.usage(record.user_email, team))


def _not_ready(request: web.Request) -> str | None:
    return "shutting down" if request.app[STATE].draining else None


async def _not_found(request: web.Request) -> web.Response:
    return error_response(404, f"unknown route {request.method} {request.path}", code="unknown_route")


def _lifecycle(state: ProxyState, close_timeout: float) -> Any:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        await state.ledger.start()
        await state.keys.start()
        if state.limiter is not None:
            await state.limiter.start()
        proxy = state.cfg.proxy
        timeout = aiohttp.ClientTimeout(
            total=None, connect=proxy.connect_timeout_seconds, sock_read=proxy.upstream_timeout_seconds
        )
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30, ttl_dns_cache=300)
        # No cookie jar: cookies an upstream sets must never be replayed on other users' requests
        # (and skipping the jar saves work on every request).
        state.session = aiohttp.ClientSession(
            timeout=timeout,
            connector=connector,
            auto_decompress=True,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        state.pool = UpstreamPool(proxy.connect_timeout_seconds, proxy.upstream_timeout_seconds)
        try:
            yield
        finally:
            # deferred tokenize counts: finished or estimated, then recorded; within the shutdown budget
            wait = None
            if state.shutdown_deadline is not None:
                wait = min(max(state.shutdown_deadline - time.monotonic(), 0.5), COUNT_DRAIN_MAX_SECONDS)
            await (state.counter.drain() if wait is None else state.counter.drain(wait))
            await state.session.close()
            await state.pool.close()
            # The ledger first, with what is left of the shutdown budget: the key store may hang on
            # a frozen database, and the ledger's rows are what must not be lost.
            timeout = close_timeout
            if state.shutdown_deadline is not None:
                timeout = max(state.shutdown_deadline - time.monotonic(), LEDGER_CLOSE_MIN_SECONDS)
            await state.ledger.close(timeout)
            if state.limiter is not None:
                await state.limiter.close()
            await state.keys.close()

    return ctx


def create_state(cfg: Config, keys: KeyLookup | None = None, ledger: LedgerSink | None = None) -> ProxyState:
    if keys is None:
        from exporter.proxy.key_cache import KeyCache

        keys = KeyCache(cfg.ledger.url, cfg.proxy.key_refresh_seconds)
    if ledger is None:
        from exporter.ledger.writer import LedgerWriter

        ledger = LedgerWriter(cfg.ledger.url, cfg.ledger)
    state = ProxyState(cfg=cfg, keys=keys, ledger=ledger, metrics=ProxyMetrics(cfg, ledger.stats))
    state.metrics.registry.register(state.counter.sources)
    if cfg.limits is not None:
        from exporter.limits.limiter import Limiter

        state.limiter = Limiter(cfg)
        state.metrics.registry.register(state.limiter.metrics)
    return state


def create_app(state: ProxyState, ledger_close_timeout: float = 30.0) -> web.Application:
    """The API application. Its cleanup (after in-flight requests finish) flushes the ledger."""
    app = web.Application(client_max_size=state.cfg.proxy.max_body_bytes + 1)
    app[STATE] = state
    for path in ENDPOINTS:
        app.router.add_post(path, _handle)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/v1/usage", _usage)
    add_health_routes(app, _not_ready)
    app.router.add_route("*", "/{tail:.*}", _not_found)
    app.cleanup_ctx.append(_lifecycle(state, ledger_close_timeout))
    return app


async def _metrics(request: web.Request) -> web.Response:
    # Formatting (and compressing) tens of thousands of series takes a while: off the event loop.
    return await metrics_response(request, request.app[STATE].metrics.render)


def create_metrics_app(state: ProxyState) -> web.Application:
    app = web.Application()
    app[STATE] = state
    app.router.add_get("/metrics", _metrics)
    add_health_routes(app, _not_ready)
    return app
