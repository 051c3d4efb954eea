"""A minimal asyncio Redis client: one connection, pipelined commands, RESP2 replies.

Why not redis-py: a limit check sits on every request's path and its budget is 100 µs. redis-py's
asyncio client spends about as long in its connection pool and parser as the loopback round trip
itself takes; this client writes the command and waits for one future (replies arrive in order, so
a FIFO of futures matches them up), which keeps the added time close to Redis's own round trip.
Only what the limit store needs is here: EVALSHA/EVAL, SCRIPT LOAD, AUTH, SELECT, PING.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any
from urllib.parse import unquote, urlsplit


class RedisError(Exception):
    """An error reply from Redis (``-ERR ...``)."""


class RedisUnavailable(ConnectionError):
    """Redis cannot be reached, or did not answer in time."""


def parse_redis_url(url: str) -> tuple[str, int, str | None, int]:
    """(host, port, password, db) from ``redis://[:password@]host[:port][/db]``."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        raise ValueError(f"expected redis://HOST[:PORT][/DB], got {url!r}")
    db_text = parts.path.lstrip("/") or "0"
    if not db_text.isdigit():
        raise ValueError(f"the database in {url!r} must be a number, got {db_text!r}")
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, parts.port or 6379, password, int(db_text)


def encode_bulk(args: tuple[str | int | bytes, ...]) -> bytes:
    """The bulk strings of a command, without the array header (see ``encode``)."""
    out = []
    for a in args:
        b = a if isinstance(a, bytes) else (b"%d" % a if isinstance(a, int) else a.encode())
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def encode(*args: str | int | bytes) -> bytes:
    return b"*%d\r\n" % len(args) + encode_bulk(args)


class _Parser:
    """Incremental RESP2 parser: ``feed`` bytes, ``replies`` yields every complete reply."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.pos = 0

    def feed(self, data: bytes) -> None:
        self.buf += data

    def _line(self) -> bytes | None:
        end = self.buf.find(b"\r\n", self.pos)
        if end < 0:
            return None
        line = bytes(self.buf[self.pos : end])
        self.pos = end + 2
        return line

    def _one(self) -> Any:
        line = self._line()
        if line is None:
            raise IndexError
        kind, rest = line[:1], line[1:]
        if kind == b":":
            return int(rest)
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RedisError(rest.decode())
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            if len(self.buf) < self.pos + n + 2:
                raise IndexError
            value = bytes(self.buf[self.pos : self.pos + n])
            self.pos += n + 2
            return value
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._one() for _ in range(n)]
        raise RedisError(f"unexpected reply from Redis: {line[:40]!r}")

    def replies(self) -> list[Any]:
        out = []
        while self.pos < len(self.buf):
            start = self.pos
            try:
                out.append(self._one())
            except IndexError:  # incomplete: wait for more bytes
                self.pos = start
                break
        del self.buf[: self.pos]
        self.pos = 0
        return out


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.parser = _Parser()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        for reply in self.parser.replies():
            if not self.waiting:
                break
            fut = self.waiting.popleft()
            if fut.done():
                continue
            if isinstance(reply, RedisError):
                fut.set_exception(reply)
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(RedisUnavailable(f"connection to Redis lost: {exc or 'closed'}"))


class RedisClient:
    """One pipelined connection, opened on first use and again after it is lost."""

    def __init__(self, url: str, timeout: float = 0.05, connect_timeout: float = 1.0) -> None:
        self.host, self.port, self.password, self.db = parse_redis_url(url)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        # commands sent without waiting, written together at the next loop turn (or with the next
        # waited-for command): one system call for many, and none on the request's own path
        self._pending: list[bytes] = []
        self._flush_scheduled = False

    async def _connection(self) -> _Protocol:
        proto = self._proto
        if proto is not None and not proto.closed:
            return proto
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._proto is not None and not self._proto.closed:
                return self._proto
            loop = asyncio.get_running_loop()
            try:
                _, proto = await asyncio.wait_for(
                    loop.create_connection(_Protocol, self.host, self.port), self.connect_timeout
                )
            except (OSError, TimeoutError) as exc:
                raise RedisUnavailable(f"cannot connect to Redis at {self.host}:{self.port}: {exc}") from None
            if self.password:
                await self._send(proto, ("AUTH", self.password), self.connect_timeout)
            if self.db:
                await self._send(proto, ("SELECT", self.db), self.connect_timeout)
            self._proto = proto
            return proto

    def _write(self, proto: _Protocol, args: tuple[str | int | bytes, ...]) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        assert proto.transport is not None
        proto.waiting.append(fut)
        data = encode(*args)
        if self._pending:  # earlier commands first: replies are matched in order
            self._pending.append(data)
            data = b"".join(self._pending)
            self._pending.clear()
        proto.transport.write(data)
        return fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        proto = self._proto
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if proto is not None and not proto.closed and proto.transport is not None:
            proto.transport.write(data)

    async def _send(self, proto: _Protocol, args: tuple[str | int | bytes, ...], wait: float) -> Any:
        fut = self._write(proto, args)
        # a timer instead of asyncio.wait_for: no extra task or future on the request's path
        timer = asyncio.get_running_loop().call_later(wait, self._timed_out, proto, fut, wait)
        try:
            return await fut
        finally:
            timer.cancel()

    def _timed_out(self, proto: _Protocol, fut: asyncio.Future[Any], wait: float) -> None:
        if fut.done():
            return
        fut.set_exception(RedisUnavailable(f"Redis did not answer within {wait * 1000:g} ms"))
        # A reply may still come; the FIFO would then pair it with the wrong command.
        # Dropping the connection is the only safe way on.
        self._drop(proto)

    def _drop(self, proto: _Protocol) -> None:
        self._pending.clear()
        if proto.transport is not None:
            proto.transport.abort()
        proto.connection_lost(None)
        if self._proto is proto:
            self._proto = None

    async def execute(self, *args: str | int | bytes) -> Any:
        proto = await self._connection()
        return await self._send(proto, args, self.timeout)

    def execute_nowait(self, *args: str | int | bytes) -> asyncio.Future[Any] | None:
        """Send without waiting for the reply (None when not connected); the caller may add a callback."""
        return self.send_nowait(encode(*args))

    def send_nowait(self, command: bytes) -> asyncio.Future[Any] | None:
        """``execute_nowait`` for a command already encoded (a caller that caches parts of it)."""
        proto = self._proto
        if proto is None or proto.closed:
            return None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        proto.waiting.append(fut)
        self._pending.append(command)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return fut

    async def close(self) -> None:
        if self._proto is not None:
            self._drop(self._proto)
