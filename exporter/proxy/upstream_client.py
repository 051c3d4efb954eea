"""The proxy's own HTTP/1.1 client for plain-http upstreams (the usual sidecar case: the model server
on localhost or in the same pod).

Why not aiohttp's client for these: per request it builds a ``ClientRequest``, a response object, a
payload reader and timers, and per body chunk it reschedules its read timeout and wakes a reader.
For a stream of one-token SSE events that was most of the proxy's cost above a bare TCP relay. This
client does the least that HTTP/1.1 needs:

- one ``asyncio.Protocol`` per connection, kept alive and reused per (host, port);
- the request (line, headers, body) in one write;
- the response's status line and headers parsed once, then the body decoded (Content-Length,
  chunked, or until close; gzip/deflate) inside ``data_received``;
- a streamed body is handed to a *sink* (the relay, exporter/proxy/relay.py) synchronously as it
  arrives: no task wake-up per event. When the sink stops taking (its client is slow) the body is
  buffered and the upstream socket paused above ``PAUSE_AT`` bytes until the task reads it;
- the read timeout (``upstream_timeout_seconds``, as aiohttp's ``sock_read``) is one timer that
  checks the time of the last read when it fires, not one rescheduled per chunk.

Its errors are aiohttp's exception types, so the proxy maps them to the same statuses either way;
only refusing connections is its own ``Unreachable`` (the next upstream is tried). Upstreams with
``https`` or ``user:password@`` in their URL go through aiohttp's client (see app.py).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import time
import zlib
from collections.abc import Mapping
from typing import Protocol as TypingProtocol
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict

MAX_HEAD = 64 * 1024  # status line + headers
MAX_CHUNK_LINE = 4096
PAUSE_AT = 64 * 1024  # buffered body bytes (sink not taking) above which the upstream is paused
HEX = b"0123456789abcdefABCDEF"  # (bytes.translate deletes them: nothing left = a hex number)
KEEPALIVE_SECONDS = 30.0  # an idle connection older than this is not reused


class Unreachable(OSError):
    """The upstream refused or did not accept the connection in time: try the next one."""


class Sink(TypingProtocol):
    """What takes a streamed body (exporter/proxy/relay.py's ``_Relay``)."""

    done: asyncio.Future[None]

    def take(self, data: bytes) -> None: ...
    def end(self, exc: BaseException | None = None) -> None: ...


@functools.lru_cache(maxsize=256)  # called per request with one of the configured upstream URLs
def plain_target(base: str) -> tuple[str, int, str] | None:
    """(host, port, path prefix) of a base URL this client serves; None for https or userinfo."""
    parts = urlsplit(base)
    if (
        parts.scheme != "http"
        or parts.username is not None
        or parts.password is not None
        or not parts.hostname
    ):
        return None
    try:
        port = parts.port or 80
    except ValueError:
        return None
    return parts.hostname, port, parts.path


def _bad(message: str) -> aiohttp.ClientPayloadError:
    """A response the proxy cannot read: a 502 before the head is complete, a cut stream after."""
    return aiohttp.ClientPayloadError(message)


class _Conn(asyncio.Protocol):
    """One keep-alive connection and the response in progress on it."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.response: UpstreamResponse | None = None
        self.head = bytearray()

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (asyncio and uvloop set TCP_NODELAY)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        r = self.response
        if r is not None:
            r.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        r = self.response
        if r is None:  # bytes nobody asked for: the connection is out of step
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            return
        r.data_received(data)

    def pause_writing(self) -> None:  # the request body is written at once; the kernel takes it
        pass

    def resume_writing(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class UpstreamResponse:
    """One upstream response: ``status``, ``headers`` and the body, read by ``read`` (whole),
    ``content.readany`` (piece by piece) or handed to a sink (``content.tap``). Mirrors the parts
    of ``aiohttp.ClientResponse`` that the proxy uses."""

    def __init__(self, conn: _Conn, reused: bool, read_timeout: float | None) -> None:
        self.conn = conn
        self.loop = conn.loop
        self.reused = reused
        self.status = 0
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.content_length: int | None = None
        self.content = Body(self)
        self.got_bytes = False  # anything of the response arrived
        self.head_done: asyncio.Future[None] = self.loop.create_future()
        self.reusable = False
        # body framing: _left >= 0 bytes left (content-length); None: chunked; -1: until close
        self._length: int | None = -1
        self._chunked = False
        self._cbuf = bytearray()
        self._cleft = 0  # chunked: >0 data bytes left; -1: expecting the CRLF after data
        self._trailer = False
        self._decomp: zlib._Decompress | None = None
        # delivery
        self.sink: Sink | None = None
        self.buf: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.paused = False
        self.eof = False
        self.exc: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        # read timeout: one timer, checked against the last read
        self._timeout = read_timeout
        self._last = self.loop.time()
        self._timer: asyncio.TimerHandle | None = None
        if read_timeout:
            self._timer = self.loop.call_at(self._last + read_timeout, self._check_timeout)

    # -- timeouts
    def _check_timeout(self) -> None:
        self._timer = None
        if self.eof or self.exc is not None:
            return
        assert self._timeout is not None
        due = self._last + self._timeout
        now = self.loop.time()
        if self.paused or (self.sink is not None and self.sink.done.done() and self.buffered):
            due = now + self._timeout  # waiting for our own client, not for the upstream
        if now < due:
            self._timer = self.loop.call_at(due, self._check_timeout)
            return
        self.fail(aiohttp.SocketTimeoutError(f"Timeout on reading data from socket ({self._timeout} s)"))

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- from the connection
    def connection_lost(self, exc: Exception | None) -> None:
        if self.eof or self.exc is not None:
            return
        if self.head_done.done() and self._length == -1 and not self._chunked and exc is None:
            self._finish()  # read-until-close body: the close is its end
            return
        if not self.head_done.done():
            err: BaseException = aiohttp.ServerDisconnectedError()
        else:
            err = aiohttp.ClientPayloadError(f"Response payload is not completed: {exc!r}")
        self.fail(err)

    def data_received(self, data: bytes) -> None:
        self._last = self.loop.time()
        sink = self.sink
        if (
            sink is not None
            and self._chunked
            and not self._cbuf
            and not self._cleft
            and self._trailer is False  # between chunks: neither in the trailer nor past the end
            and self._decomp is None
        ):
            # the hot path of a stream: one whole chunk (one SSE event, usually) in one read
            end = data.find(b"\r\n")
            if 0 < end <= 16 and data[-2:] == b"\r\n" and not data[:end].translate(None, HEX):
                size = int(data[:end], 16)
                if size and len(data) == end + size + 4 and not sink.done.done() and not self.buf:
                    sink.take(data[end + 2 : -2])
                    return
        self.got_bytes = True
        if self.eof or self.exc is not None:
            self.reusable = False
            return
        if not self.head_done.done():
            head = self.conn.head
            head += data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                if len(head) > MAX_HEAD:
                    self.fail(_bad("upstream response headers are too large"))
                return
            try:
                more = self._parse_head(bytes(head[:end]))
            except ValueError as exc:
                self.fail(_bad(f"malformed upstream response: {exc}"))
                return
            data = bytes(head[end + 4 :])
            head.clear()
            if more:  # a 1xx interim response: the real one follows
                if data:
                    self.data_received(data)
                return
            self.head_done.set_result(None)
            if self._length == 0 and not self._chunked:
                self._finish()
                if data:
                    self.reusable = False
                return
            if not data:
                return
        try:
            if self._chunked:
                piece = self._dechunk(data)
            elif self._length is not None and self._length >= 0:
                n = len(data)
                if n >= self._length:
                    if n > self._length:
                        self.reusable = False
                        data = data[: self._length]
                    self._length = 0
                    piece = data
                    self._deliver(piece)
                    self._finish()
                    return
                self._length -= n
                piece = data
            else:
                piece = data
        except ValueError as exc:
            self.fail(_bad(f"malformed upstream response body: {exc}"))
            return
        if piece:
            self._deliver(piece)
        if self._trailer is None:  # the chunked body's end was reached
            self._finish()

    # -- parsing
    def _parse_head(self, head: bytes) -> bool:
        """Parse a status line and headers; True for an interim (1xx) response."""
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, _reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise ValueError(f"bad status line {lines[0][:100]!r}")
        status = int(code)
        if 100 <= status < 200:
            return True
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip() or line[0] in " \t":
                raise ValueError(f"bad header line {line[:100]!r}")
            headers.add(name, value.strip(" \t"))
        self.status = status
        self.headers = headers
        keep = version == "HTTP/1.1"
        conn_tokens = {t.strip().lower() for t in headers.get("Connection", "").split(",")}
        if "close" in conn_tokens:
            keep = False
        elif "keep-alive" in conn_tokens:
            keep = True
        te = headers.get("Transfer-Encoding")
        cl = headers.getall("Content-Length", [])
        if te is not None:
            if te.strip().lower() != "chunked":
                raise ValueError(f"unsupported Transfer-Encoding {te[:50]!r}")
            self._chunked = True
            self._length = None
            if cl:
                keep = False
        elif status in (204, 304):
            self._length = 0
        elif cl:
            if len({v.strip() for v in cl}) != 1 or not cl[0].strip().isdigit():
                raise ValueError("bad Content-Length")
            self._length = int(cl[0])
            self.content_length = self._length
        else:
            self._length = -1  # until close
            keep = False
        encoding = headers.get("Content-Encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._decomp = zlib.decompressobj(47)  # gzip or zlib, told apart by the header
        elif encoding not in ("identity", ""):
            raise ValueError(f"unsupported Content-Encoding {encoding[:50]!r}")
        self.reusable = keep
        return False

    def _dechunk(self, data: bytes) -> bytes:
        buf = self._cbuf
        if not buf and self._cleft == 0 and self._trailer is False:
            # fast path: one whole chunk (one SSE event, usually) in one read
            end = data.find(b"\r\n")
            if 0 < end <= 16:
                size_text = data[:end]
                if not size_text.translate(None, HEX):
                    size = int(size_text, 16)
                    if size and len(data) == end + 2 + size + 2 and data[-2:] == b"\r\n":
                        return data[end + 2 : end + 2 + size]
        buf += data
        out = []
        pos = 0
        n = len(buf)
        while pos < n or self._trailer is None:
            if self._trailer is None:
                if pos < n:
                    self.reusable = False  # bytes after the body's end
                break
            if self._cleft > 0:
                take = min(self._cleft, n - pos)
                out.append(bytes(buf[pos : pos + take]))
                pos += take
                self._cleft -= take
                if self._cleft == 0:
                    self._cleft = -1
            elif self._cleft == -1:
                if n - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
                pos += 2
                self._cleft = 0
            else:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    if n - pos > MAX_CHUNK_LINE:
                        raise ValueError("chunk size line too long")
                    break
                line = bytes(buf[pos:end])
                pos = end + 2
                if self._trailer:
                    if not line:
                        self._trailer = None  # type: ignore[assignment]  # the body's end
                    continue
                size_text = line.split(b";", 1)[0].strip()
                if not size_text or size_text.translate(None, HEX):
                    raise ValueError(f"bad chunk size {line[:40]!r}")
                size = int(size_text, 16)
                if size == 0:
                    self._trailer = True
                else:
                    self._cleft = size
        del buf[:pos]
        return b"".join(out)

    # -- delivery
    def _deliver(self, data: bytes) -> None:
        if self._decomp is not None:
            try:
                data = self._decomp.decompress(data)
            except zlib.error as exc:
                raise ValueError(f"cannot decompress: {exc}") from exc
            if not data:
                return
        sink = self.sink
        if sink is not None and not sink.done.done() and not self.buf:
            sink.take(data)
            return
        self.buf.append(data)
        self.buffered += len(data)
        if self.buffered > PAUSE_AT and not self.paused and self.conn.transport is not None:
            self.paused = True
            self.conn.transport.pause_reading()
        self._wake()

    def _finish(self) -> None:
        if self._decomp is not None:
            tail = self._decomp.flush()
            self._decomp = None
            if tail:
                self._deliver(tail)
        self.eof = True
        self._stop_timer()
        if not self.head_done.done():
            self.head_done.set_result(None)
        sink = self.sink
        if sink is not None and not self.buf:
            sink.end()
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if self.eof or self.exc is not None:
            return
        self.exc = exc
        self.reusable = False
        self._stop_timer()
        self.conn.close()
        if not self.head_done.done():
            self.head_done.set_exception(exc)
            self.head_done.exception()  # retrieved by whoever awaits it, or never needed
        if self.sink is not None:
            self.sink.end(exc)
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- the ClientResponse subset
    async def read(self) -> bytes:
        parts = []
        while True:
            chunk = await self.content.readany()
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)

    def close(self) -> None:
        """Drop the connection (the upstream stops working); a reader or sink gets an error."""
        self.fail(aiohttp.ClientConnectionError("Connection closed"))

    def release(self) -> None:
        """Give the connection back for reuse when the body was read in full, else drop it."""
        self._stop_timer()
        conn = self.conn
        conn.response = None
        if self.eof and self.exc is None and self.reusable and not conn.closed and not self.buf:
            conn.pool.put(conn)
        else:
            conn.close()


class Body:
    """The response body as aiohttp's ``StreamReader`` offers it, plus ``tap`` for a sink."""

    __slots__ = ("r",)

    def __init__(self, r: UpstreamResponse) -> None:
        self.r = r

    def is_eof(self) -> bool:
        return self.r.eof and not self.r.buf

    def exception(self) -> BaseException | None:
        return self.r.exc

    def read_nowait(self) -> bytes:
        r = self.r
        if not r.buf:
            return b""
        data = b"".join(r.buf)
        r.buf.clear()
        r.buffered = 0
        if r.paused and r.conn.transport is not None:
            r.paused = False
            r.conn.transport.resume_reading()
        return data

    async def readany(self) -> bytes:
        r = self.r
        while True:
            if r.buf:
                return self.read_nowait()
            if r.exc is not None:
                raise r.exc
            if r.eof:
                return b""
            r.waiter = r.loop.create_future()
            try:
                await r.waiter
            finally:
                r.waiter = None

    def tap(self, sink: Sink | None) -> None:
        """Hand the body to ``sink`` as it arrives (None: stop). What is buffered is not handed over:
        read it first."""
        r = self.r
        r.sink = sink
        if sink is not None:
            if r.exc is not None:
                sink.end(r.exc)
            elif r.eof and not r.buf:
                sink.end()


class UpstreamPool:
    """Keep-alive connections per (host, port), and ``post`` to open a response on one."""

    def __init__(self, connect_timeout: float | None, read_timeout: float | None) -> None:
        self.loop = asyncio.get_running_loop()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle: dict[tuple[str, int], list[_Conn]] = {}
        self.closing = False

    def put(self, conn: _Conn) -> None:
        if self.closing:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self.idle.setdefault(conn.key, []).append(conn)

    def forget(self, conn: _Conn) -> None:
        idle = self.idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def _get(self, key: tuple[str, int]) -> _Conn | None:
        idle = self.idle.get(key)
        oldest_ok = time.monotonic() - KEEPALIVE_SECONDS
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if (
                not conn.closed
                and conn.idle_since >= oldest_ok
                and transport is not None
                and not transport.is_closing()
            ):
                return conn
            conn.close()
        return None

    async def _connect(self, key: tuple[str, int]) -> _Conn:
        host, port = key
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(lambda: _Conn(self, key), host, port)
        except TimeoutError as exc:
            raise Unreachable(f"Connection timeout to host {host}:{port}") from exc
        except OSError as exc:
            raise Unreachable(f"Cannot connect to host {host}:{port} [{exc.strerror or exc}]") from exc
        return conn

    async def post(
        self, target: tuple[str, int, str], path: str, headers: Mapping[str, str], payload: bytes
    ) -> UpstreamResponse:
        """Send the request and wait for the response's status line and headers. Raises
        ``Unreachable`` when no connection could be made, else aiohttp's errors."""
        host, port, prefix = target
        key = (host, port)
        name = f"[{host}]" if ":" in host else host  # an IPv6 literal
        lines = [f"POST {prefix}{path} HTTP/1.1", f"Host: {name}:{port}" if port != 80 else f"Host: {name}"]
        for k, v in headers.items():
            if "\r" in v or "\n" in v or "\r" in k or "\n" in k or ":" in k:
                raise aiohttp.ClientConnectionError(f"invalid header {k[:40]!r}")
            lines.append(f"{k}: {v}")
        lines.append(f"Content-Length: {len(payload)}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + payload
        for attempt in (0, 1):
            conn = self._get(key) if attempt == 0 else None
            reused = conn is not None
            if conn is None:
                conn = await self._connect(key)
            response = UpstreamResponse(conn, reused, self.read_timeout)
            conn.response = response
            assert conn.transport is not None
            conn.transport.write(request)
            try:
                await response.head_done
            except aiohttp.ServerDisconnectedError:
                conn.response = None
                if reused and not response.got_bytes:
                    continue  # a kept-alive connection the upstream had closed: once more, fresh
                raise
            except BaseException:
                response.fail(aiohttp.ClientConnectionError("Connection closed"))
                conn.response = None
                raise
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        self.closing = True
        for idle in self.idle.values():
            for conn in idle:
                conn.close()
        self.idle.clear()
