"""``Exchange``: one API request and its answer, as the proxy's request logic (exporter/proxy/app.py,
relay.py) sees them, whichever listener lane serves it: aiohttp's (``AiohttpExchange``) or the fast
lane's own (exporter/proxy/fastlane.py). The logic reads the request's path, headers and body, and
either returns a ``web.Response`` for the lane to send or streams its answer through the exchange:
``start_stream`` (the status line and headers wait to go out with the first body bytes, taken by the
relay with ``take_head``), ``write``, ``drain`` and ``write_eof``."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Any

from aiohttp import web
from aiohttp.helpers import HeadersMixin
from multidict import CIMultiDict, CIMultiDictProxy


class Exchange(HeadersMixin, ABC):
    """What the request logic needs from a lane, implemented by each lane (``content_type`` and
    ``content_length`` parse the headers exactly as aiohttp's request does)."""

    path: str
    _headers: CIMultiDictProxy[str]
    transport: asyncio.Transport | None
    chunked: bool  # the streamed body goes out in HTTP chunks

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self._headers

    @abstractmethod
    async def read_body(self, limit: int) -> bytes | None:
        """The request body, or None when it exceeds ``limit`` bytes."""

    @abstractmethod
    async def start_stream(self, status: int, headers: CIMultiDict[str]) -> None:
        """Begin a streamed answer: its status line and headers wait for ``take_head``."""

    @abstractmethod
    def take_head(self) -> bytes:
        """The waiting status line and headers, to be written with the first body bytes (b"" when
        the lane sent them itself)."""

    @abstractmethod
    async def write(self, data: bytes) -> None:
        """Send a piece of the streamed body (with the waiting head, if still there)."""

    @abstractmethod
    async def drain(self) -> None:
        """Wait until the client's socket buffer is below its high-water mark."""

    @abstractmethod
    async def write_eof(self) -> None:
        """End the streamed body."""


class _SSEResponse(web.StreamResponse):
    # ``prepare`` leaves the status line and headers in aiohttp's writer (as ``web.Response`` does)
    # instead of sending them on their own: the relay's first write carries them with the first
    # event, one system call and one TCP segment fewer per stream.
    _send_headers_immediately = False


class AiohttpExchange(Exchange):
    """A request that aiohttp's server parsed and routed; a stream goes out through an aiohttp
    ``StreamResponse`` (``response``, which the route handler returns)."""

    __slots__ = ("_request", "response")

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self._headers = request.headers
        self.path = request.path
        self.response: web.StreamResponse | None = None

    @property
    def transport(self) -> Any:  # type: ignore[override]
        return self._request.transport

    @property
    def chunked(self) -> bool:  # type: ignore[override]
        response = self.response
        return response is not None and response.headers.get("Transfer-Encoding", "").lower() == "chunked"

    async def read_body(self, limit: int) -> bytes | None:
        request = self._request
        length = request.content_length
        if length is not None:
            if length > limit:
                return None
            return await request.read()  # framed by Content-Length: cannot grow past the limit
        buf = bytearray()
        async for chunk in request.content.iter_any():
            buf += chunk
            if len(buf) > limit:
                return None
        return bytes(buf)

    async def start_stream(self, status: int, headers: CIMultiDict[str]) -> None:
        self.response = _SSEResponse(status=status, headers=headers)
        await self.response.prepare(self._request)

    def take_head(self) -> bytes:
        writer = self._request.writer
        head = getattr(writer, "_headers_buf", None)
        if head and not getattr(writer, "_headers_written", True):
            writer._headers_written = True  # type: ignore[attr-defined]
            writer._headers_buf = None  # type: ignore[attr-defined]
            return bytes(head)
        if writer is not None:
            writer.send_headers()  # another aiohttp: its own write (a no-op when already sent)
        return b""

    async def write(self, data: bytes) -> None:
        assert self.response is not None
        await self.response.write(data)

    async def drain(self) -> None:
        await self._request.writer.drain()

    async def write_eof(self) -> None:
        assert self.response is not None
        await self.response.write_eof()
