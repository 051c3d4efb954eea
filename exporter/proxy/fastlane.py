"""The API listener's fast lane: its connections serve ``POST`` to the API endpoints themselves and
hand everything else to aiohttp.

aiohttp's per-request server machinery (request and response objects, router, middleware, writer)
costs more CPU than the proxy's own work on a non-streaming request. A fast-lane connection reads
each request head itself, under strict rules: ``POST <endpoint> HTTP/1.1``, headers of plain
``token: printable-ASCII`` lines, each name once, a ``Content-Length`` of digits within
``max_body_bytes``, no ``Transfer-Encoding``, ``Expect`` or ``Upgrade``, ``Connection`` only
``keep-alive`` or ``close``, the head within aiohttp's 8190-byte line limit. Such a request is framed
exactly by its Content-Length, so nothing can be smuggled past it, and it runs the same request
logic as aiohttp's route (``exporter.proxy.app.handle``) through a ``FastExchange``.

Anything else (another route, HTTP/1.0, a chunked body, a body over the limit, odd header syntax...)
is handed over at a request boundary, with the bytes received since, to aiohttp's own connection
handler, which then serves the connection for the rest of its life exactly as it would have from
the start: its routes, its answers, its errors.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import hdrs, web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_writer import _serialize_headers
from aiohttp.web_response import REASON_PHRASES
from multidict import CIMultiDict, CIMultiDictProxy, istr

from exporter.logs import get_logger
from exporter.proxy.app import ENDPOINTS, ProxyState, handle
from exporter.proxy.exchange import Exchange

log = get_logger(__name__)

HEAD_MAX = 8190  # aiohttp's max_line_size: a longer head is aiohttp's to judge
HEADERS_MAX = 64  # more header lines than this (aiohttp allows 128) are aiohttp's to judge
KEEPALIVE_SECONDS = 3630.0  # aiohttp's keepalive_timeout: an idle kept-alive connection is closed after it
# Idle connections are found by one sweep every KEEPALIVE/SWEEPS seconds, not by a timer per request
# (arming and cancelling one per request cost about 1% of the lane's CPU): a connection is closed
# between KEEPALIVE and KEEPALIVE * (1 + 1/SWEEPS) seconds after its last request.
SWEEPS = 8
PIPELINE_MAX = 256 * 1024  # bytes of later requests buffered while one runs, before reading pauses
_PREFIX = b"POST /v1/"
_REQUEST_LINE = re.compile(rb"POST (/v1/[a-z/]+) HTTP/1\.1")
_ENDPOINTS = frozenset(e.encode() for e in ENDPOINTS)
# field-name ":" OWS field-value OWS, with visible ASCII (and inner spaces/tabs) only
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*((?:[\x21-\x7e][\x20-\x7e\t]*)?)")
_REFUSED = frozenset(("transfer-encoding", "expect", "upgrade"))
_CONNECTION_OK = frozenset(("keep-alive", "close"))
# aiohttp's parser names the headers it knows in their canonical spelling (``content-type`` is
# ``Content-Type``), which the request logic passes upstream: the same here
_KNOWN = {str(v).lower(): v for v in vars(hdrs).values() if isinstance(v, istr)}


class _Handover(Exception):
    """The request is aiohttp's to serve."""


def _parse_head(head: bytes, max_body: int) -> tuple[str, CIMultiDict[str], int, bool]:
    """(path, headers, body length, keep-alive) of a request head the fast lane serves (without its
    final CRLF CRLF); raises ``_Handover`` for anything else."""
    lines = head.split(b"\r\n")
    if len(lines) > HEADERS_MAX + 1:
        raise _Handover
    m = _REQUEST_LINE.fullmatch(lines[0])
    if m is None or m[1] not in _ENDPOINTS:
        raise _Handover
    headers: CIMultiDict[str] = CIMultiDict()
    seen: set[str] = set()
    length = -1
    keep_alive = True
    for line in lines[1:]:
        f = _FIELD.fullmatch(line)
        if f is None:
            raise _Handover  # obs-fold, bare CR or LF, non-ASCII, no colon, space before the colon...
        name = f[1].decode("ascii")
        low = name.lower()
        if low in seen or low in _REFUSED:
            raise _Handover
        seen.add(low)
        value = f[2].rstrip(b" \t").decode("ascii")
        if low == "content-length":
            if not value.isdigit() or len(value) > 18:  # digits only: no sign, no spaces, no "0x"
                raise _Handover
            length = int(value)
        elif low == "connection":
            v = value.lower()
            if v not in _CONNECTION_OK:
                raise _Handover
            keep_alive = v == "keep-alive"
        headers.add(_KNOWN.get(low, name), value)
    if length < 0 or length > max_body:
        raise _Handover  # no Content-Length (aiohttp's framing rules apply), or over the limit (413)
    return m[1].decode("ascii"), headers, length, keep_alive


def _response_bytes(resp: web.Response, extra: tuple[tuple[str, str], ...], keep_alive: bool) -> bytes:
    """``resp`` on the wire as aiohttp's ``Response.prepare`` and ``write_eof`` would put it for an
    HTTP/1.1 POST (``extra``: the web config's headers, set as protect()'s middleware does)."""
    headers = resp.headers
    for k, v in extra:
        headers[k] = v
    status = resp.status
    body = resp.body
    assert body is None or isinstance(body, bytes), "the fast lane sends bytes bodies only"
    no_length = 100 <= status < 200 or status == 204
    if hdrs.CONTENT_LENGTH in headers:
        if no_length:
            del headers[hdrs.CONTENT_LENGTH]
    else:
        size = len(body) if body else 0
        if size or status != 304:
            headers[hdrs.CONTENT_LENGTH] = str(size)
    empty = no_length or status == 304
    if empty:
        headers.popall(hdrs.TRANSFER_ENCODING, None)
    elif headers.get(hdrs.CONTENT_LENGTH) != "0":
        headers.setdefault(hdrs.CONTENT_TYPE, "application/octet-stream")
    if hdrs.DATE not in headers:
        headers[hdrs.DATE] = rfc822_formatted_time()
    headers.setdefault(hdrs.SERVER, SERVER_SOFTWARE)
    if hdrs.CONNECTION not in headers and not keep_alive:
        headers[hdrs.CONNECTION] = "close"
    out = _serialize_headers(f"HTTP/1.1 {status} {resp.reason}", headers)
    return out + body if body and not empty else out


class FastExchange(Exchange):
    """One fast-lane request: its head parsed, its body arriving through the connection."""

    __slots__ = ("_body", "_body_done", "_conn", "_head", "_length", "keep_alive", "path", "streamed")

    def __init__(
        self, conn: FastLaneProtocol, path: str, headers: CIMultiDict[str], length: int, keep_alive: bool
    ) -> None:
        self._conn = conn
        self.path = path
        self._headers = CIMultiDictProxy(headers)
        self._length = length
        self._body = bytearray()
        self._body_done: asyncio.Future[None] | None = None
        self.keep_alive = keep_alive
        self._head: bytes | None = None  # the stream's status line and headers, until written
        self.streamed = False
        self.chunked = True

    @property
    def transport(self) -> Any:  # type: ignore[override]
        return self._conn.transport

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._body += data
        if len(self._body) >= self._length and self._body_done is not None and not self._body_done.done():
            self._body_done.set_result(None)

    async def read_body(self, limit: int) -> bytes | None:
        if self._length > limit:  # pragma: no cover - handed over to aiohttp before this
            return None
        if len(self._body) < self._length:
            self._body_done = asyncio.get_running_loop().create_future()
            await self._body_done
        return bytes(self._body)

    async def start_stream(self, status: int, headers: CIMultiDict[str]) -> None:
        reason = REASON_PHRASES.get(status, "")
        headers[hdrs.TRANSFER_ENCODING] = "chunked"
        headers.setdefault(hdrs.CONTENT_TYPE, "application/octet-stream")
        if hdrs.DATE not in headers:
            headers[hdrs.DATE] = rfc822_formatted_time()
        headers.setdefault(hdrs.SERVER, SERVER_SOFTWARE)
        if hdrs.CONNECTION not in headers and not self.keep_alive:
            headers[hdrs.CONNECTION] = "close"
        self._head = _serialize_headers(f"HTTP/1.1 {status} {reason}", headers)
        self.streamed = True

    def take_head(self) -> bytes:
        head, self._head = self._head, None
        return head or b""

    def _send(self, data: bytes) -> None:
        transport = self._conn.transport
        if transport is None or transport.is_closing():
            raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")
        transport.write(self.take_head() + data)

    async def write(self, data: bytes) -> None:
        if data:
            self._send(b"%x\r\n%b\r\n" % (len(data), data))
        await self.drain()

    async def drain(self) -> None:
        await self._conn.drain()

    async def write_eof(self) -> None:
        self._send(b"0\r\n\r\n")


class FastLane:
    """The API listener's protocol factory (``loop.create_server(lane, ...)``), and its connections
    for shutdown. ``server``: the AppRunner's aiohttp server, which gets what the lane hands over."""

    def __init__(
        self, state: ProxyState, headers: dict[str, str] | None = None, keepalive: float = KEEPALIVE_SECONDS
    ) -> None:
        self.state = state
        self.headers = tuple((headers or {}).items())
        self.server: Callable[[], asyncio.Protocol] | None = None
        self.connections: set[FastLaneProtocol] = set()
        self.closing = False
        self.keepalive = keepalive
        self._sweeper: asyncio.TimerHandle | None = None

    def __call__(self) -> FastLaneProtocol:
        return FastLaneProtocol(self)

    def watch(self) -> None:
        """A connection went idle: make sure a sweep will look at it."""
        if self._sweeper is None and not self.closing:
            self._sweeper = asyncio.get_running_loop().call_later(self.keepalive / SWEEPS, self._sweep)

    def _sweep(self) -> None:
        """Close the connections idle for ``keepalive`` seconds or more; sweep again while any are left."""
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        for conn in list(self.connections):
            if conn.idle_since and now - conn.idle_since >= self.keepalive:
                conn.close()
        if self.connections:
            self.watch()

    async def shutdown(self, timeout: float) -> None:  # noqa: ASYNC109
        """Close idle connections; give running requests ``timeout`` seconds, then cancel them."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        tasks = []
        for conn in list(self.connections):
            if conn.task is None:
                conn.close()
            else:
                tasks.append(conn.task)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=timeout)
        for conn in list(self.connections):
            conn.close()


class FastLaneProtocol(asyncio.Protocol):
    __slots__ = (
        "_buf",
        "_lane",
        "_left",
        "_paused",
        "_reading_paused",
        "_waiters",
        "ex",
        "idle_since",
        "task",
        "transport",
    )

    def __init__(self, lane: FastLane) -> None:
        self._lane = lane
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.ex: FastExchange | None = None
        self._left = 0  # bytes of the current request's body still to come
        self._paused = False  # writing: the client's buffer is full
        self._reading_paused = False
        self._waiters: list[asyncio.Future[None]] = []
        self.idle_since = 0.0  # the loop's time when the connection went idle; 0: serving a request

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._lane.connections.add(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        left = self._left
        if left:
            n = len(data)
            if n <= left:
                self._left = left - n
                if self.ex is not None:
                    self.ex.feed(data)
                if self._left or self.task is not None:
                    return
                self.idle_since = 0.0  # idle from now, if nothing follows
                self._next()
                return
            if self.ex is not None:
                self.ex.feed(memoryview(data)[:left])
            self._left = 0
            data = data[left:]
        self._buf += data
        if self.task is None:
            self._next()
        elif len(self._buf) > PIPELINE_MAX and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lane.connections.discard(self)
        self.idle_since = 0.0
        if self.task is not None and not self.task.done():
            self.task.cancel()  # as aiohttp's handler_cancellation: the upstream request stops too
        self._wake(ConnectionResetError("Connection lost"))
        self.transport = None

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake(None)

    # the connection

    def _wake(self, exc: BaseException | None) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                if exc is None:
                    w.set_result(None)
                else:
                    w.set_exception(exc)

    async def drain(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("Connection lost")
        if not self._paused:
            return
        w = asyncio.get_running_loop().create_future()
        self._waiters.append(w)
        await w

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _arm_idle(self) -> None:
        if not self.idle_since and self.transport is not None:
            self.idle_since = asyncio.get_running_loop().time()
            self._lane.watch()

    def _next(self) -> None:
        """Start the next request in the buffer, if its head is there (or hand the connection over)."""
        buf = self._buf
        if not buf:
            self._arm_idle()
            return
        if buf[:9] != _PREFIX[: len(buf)]:
            self._handover()
            return
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > HEAD_MAX:
                self._handover()
            return
        if end > HEAD_MAX or self._lane.closing:
            self._handover()
            return
        try:
            path, headers, length, keep_alive = _parse_head(
                bytes(buf[:end]), self._lane.state.cfg.proxy.max_body_bytes
            )
        except (_Handover, UnicodeDecodeError):
            self._handover()
            return
        self.idle_since = 0.0
        start = end + 4
        have = len(buf) - start
        ex = FastExchange(self, path, headers, length, keep_alive)
        if have >= length:
            ex.feed(memoryview(buf)[start : start + length])
            self._left = 0
            del buf[: start + length]
        else:
            ex.feed(memoryview(buf)[start:])
            self._left = length - have
            buf.clear()
        self.ex = ex
        # named: an unnamed task formats "Task-<n>" for itself, at every request
        self.task = asyncio.get_running_loop().create_task(self._run(ex), name="chargeback-request")

    async def _run(self, ex: FastExchange) -> None:
        try:
            try:
                response = await handle(self._lane.state, ex)
            except Exception:
                log.exception("error handling request %s", ex.path)
                self._fail(ex)
                return
            transport = self.transport
            if transport is None or transport.is_closing():
                return
            if response is not None:
                transport.write(_response_bytes(response, self._lane.headers, ex.keep_alive))
        except asyncio.CancelledError:
            return
        finally:
            self.task = None
            self.ex = None  # the rest of its body, if any, is read and dropped
        self._done(ex)

    def _fail(self, ex: FastExchange) -> None:
        """An unexpected error: aiohttp's 500 when nothing was sent yet; the connection is closed."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if not ex.streamed:
                resp = web.Response(
                    status=500, text="500 Internal Server Error\n\nServer got itself in trouble"
                )
                transport.write(_response_bytes(resp, self._lane.headers, False))
            transport.close()

    def _done(self, ex: FastExchange) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not ex.keep_alive:
            transport.close()
            return
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        if not self._left:
            self._next()
        else:
            # the rest of a body that nobody reads (the answer went out early, a 401 say): should it
            # never come, the sweep closes the connection as an idle one (aiohttp lingers 10 s)
            self._arm_idle()

    def _handover(self) -> None:
        """aiohttp's connection handler serves this connection from here on, starting with the
        bytes buffered since the last request the lane served."""
        transport = self.transport
        server = self._lane.server
        assert transport is not None and server is not None
        self._lane.connections.discard(self)
        self.idle_since = 0.0
        data, self._buf = bytes(self._buf), bytearray()
        handler = server()
        transport.set_protocol(handler)
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        handler.connection_made(transport)
        if self._paused:
            handler.pause_writing()
        if data:
            handler.data_received(data)
        self.transport = None


class FastSite(web.TCPSite):
    """A TCP site whose connections start in the fast lane."""

    def __init__(self, runner: web.AppRunner, lane: FastLane, *args: Any, **kwargs: Any) -> None:
        super().__init__(runner, *args, **kwargs)
        self._lane = lane

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        assert self._runner.server is not None
        self._lane.server = self._runner.server
        self._server = await loop.create_server(
            self._lane,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        if self._server.sockets:
            self._bound_port = self._server.sockets[0].getsockname()[1]
        else:
            self._bound_port = self._port
