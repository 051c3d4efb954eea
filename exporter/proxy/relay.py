"""Passing the upstream's answer on to the client: a JSON body (``relay_body``) or an SSE stream
(``relay_stream``), reading the usage on the way.

The stream path is the proxy's hot loop: a real inference server sends every token as its own SSE
event, so one request costs the proxy a wake-up, a read and a write per token. It therefore does the
least per event that keeps the accounting exact:

- the upstream's bytes are read as they arrive (``readany``, no per-line or per-event iteration)
  and written straight to the client's transport, framed as one HTTP chunk per read; events that
  arrived together leave together;
- flow control only when the client's socket buffer is above its high-water mark (a slow client
  still pushes back on the upstream; a fast one costs no drain per event);
- ``SSEFilter`` (exporter/proxy/usage.py) passes ordinary chunks through after a few byte searches
  and parses JSON only for the event that carries the usage.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from exporter.proxy.errors import error_body, error_response
from exporter.proxy.usage import SSEFilter, extract_usage, response_chars, response_texts

if TYPE_CHECKING:
    from exporter.proxy.app import Call

# RFC 9110 §7.6.1 hop-by-hop headers, plus what the proxy sets itself or must never pass on.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Proxy-Connection",
    )
)
RESPONSE_DROP = HOP_BY_HOP | {
    "content-length",
    "content-encoding",
    "server",
    "date",
    "set-cookie",
    "www-authenticate",
    "authorization",
}
MAX_UPSTREAM_BODY = 256 * 1024 * 1024  # a non-streaming response bigger than this is refused (502)
# Above this many bytes waiting in the client's socket buffer the relay waits for it to drain (the
# transport's own default high-water mark), so a slow client slows the upstream instead of growing
# the proxy's memory.
WRITE_HIGH_WATER = 64 * 1024


def client_headers(upstream: aiohttp.ClientResponse, call: Call) -> CIMultiDict[str]:
    connection = upstream.headers.get("Connection")
    drop = RESPONSE_DROP | {h.strip().lower() for h in connection.split(",")} if connection else RESPONSE_DROP
    # Case-insensitive and multi-valued, like HTTP headers: an upstream that echoes ``x-request-id``
    # in any spelling is replaced, not joined (the client must see exactly the ledger's request id),
    # and repeated headers (Link, Vary) survive.
    headers = CIMultiDict((k, v) for k, v in upstream.headers.items() if k.lower() not in drop)
    headers["X-Request-Id"] = call.request_id
    return headers


def _upstream_error(call: Call, status: int, message: str, code: str) -> web.Response:
    call.status = status
    call.error = message
    return error_response(status, message, "upstream_error", code, headers={"X-Request-Id": call.request_id})


async def relay_body(call: Call, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    """Non-streaming: read the (bounded) JSON, take its usage, pass it on."""
    try:
        if (upstream.content_length or 0) > MAX_UPSTREAM_BODY:
            raise ValueError("upstream response too large")
        data = await upstream.read()
    except aiohttp.SocketTimeoutError:
        upstream.close()
        return _upstream_error(call, 504, "upstream timed out while sending the response", "upstream_timeout")
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        upstream.close()
        call.estimated = True
        call.usage_reason = call.usage_reason or "upstream failed while sending the response"
        return _upstream_error(
            call, 502, f"upstream failed while sending the response: {exc}", "upstream_error"
        )
    call.status = upstream.status
    if upstream.status < 300:
        try:
            obj = json.loads(data)
        except ValueError:
            obj = None
        call.usage = extract_usage(obj)
        if call.usage is None:
            call.estimated = True
            call.usage_reason = call.usage_reason or "response carried no usage"
            call.delivered_chars = response_chars(obj)
            if call.model is not None and call.model.usage_fallback == "tokenize":
                call.texts = response_texts(obj)
    else:
        call.error = f"upstream returned {upstream.status}"
    return web.Response(status=upstream.status, body=data, headers=client_headers(upstream, call))


class ClientStream:
    """The client's side of a relayed stream: bytes go straight to the connection's transport, one
    HTTP chunk per write, instead of through ``StreamResponse.write`` and a drain per event."""

    __slots__ = ("_chunked", "_request", "_response", "_started")

    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        self._request = request
        self._response = response
        self._started = False
        self._chunked = False

    async def write(self, data: bytes) -> None:
        """Raises ``ClientConnectionResetError`` when the client has gone, before handing anything on."""
        if not self._started:
            # The first write goes through aiohttp: it sends the (buffered) status line and headers
            # together with the first chunk, and fixes the framing (chunked for HTTP/1.1 clients).
            await self._response.write(data)
            self._started = True
            self._chunked = self._response.headers.get("Transfer-Encoding", "").lower() == "chunked"
            return
        transport = self._request.transport
        if transport is None or transport.is_closing():
            raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")
        transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
        if transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            await self._request.writer.drain()

    async def error_event(self, message: str, code: str) -> None:
        """End the stream with an SSE error event: the status line (200) is gone, so this is how the
        client learns that the answer is cut short."""
        await self.write(b"data: " + error_body(message, "upstream_error", code) + b"\n\n")

    async def close(self) -> None:
        await self._response.write_eof()


async def relay_stream(
    request: web.Request, call: Call, upstream: aiohttp.ClientResponse, hide_usage: bool
) -> web.StreamResponse:
    """SSE: pass the upstream's events on as they arrive, keep the usage event."""
    response = web.StreamResponse(status=upstream.status, headers=client_headers(upstream, call))
    call.status = upstream.status
    sse = SSEFilter(hide_usage, keep_text=call.model is not None and call.model.usage_fallback == "tokenize")
    out = ClientStream(request, response)

    async def send(data: bytes) -> None:
        # Once the end marker has been handed to the transport the client has the whole answer: a
        # close from then on (the SDK stops reading at [DONE] while the upstream still ends its body)
        # must not turn a delivered stream into a 499. write() raises a reset before handing bytes on,
        # and a cancellation can only land after that, in the drain.
        before = call.complete
        call.complete = call.complete or sse.complete
        try:
            await out.write(data)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            call.complete = before
            raise

    read = upstream.content.readany
    feed = sse.feed
    first = True
    try:
        await response.prepare(request)
        try:
            chunk = await read()
            while chunk:
                data = feed(chunk)
                if data:
                    if first:
                        call.first_byte = time.perf_counter()
                        first = False
                    await send(data)
                chunk = await read()
            tail = sse.flush()
            if tail:
                await send(tail)
        except (
            aiohttp.ClientPayloadError,
            aiohttp.ServerDisconnectedError,
            aiohttp.SocketTimeoutError,
        ) as exc:
            upstream.close()
            if not sse.complete:  # after the end marker the client has the whole answer: no error
                timeout = isinstance(exc, aiohttp.SocketTimeoutError)
                call.status = 504 if timeout else 502
                call.error = (
                    "upstream timed out mid-stream" if timeout else f"upstream dropped mid-stream: {exc}"
                )
                await out.error_event(call.error, "upstream_timeout" if timeout else "upstream_disconnected")
        await out.close()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError) as exc:
        upstream.close()  # stop the upstream generating for nobody
        if not call.complete:
            call.status = 499
            call.error = f"client closed the connection: {exc}"
    except asyncio.CancelledError:
        upstream.close()
        raise
    finally:
        call.delivered_chars = sse.delivered_chars
        call.texts = sse.texts
        if sse.error and not call.error:  # the status line was 200 already; the row says what happened
            call.error = f"upstream error event: {sse.error}"
        call.usage = sse.usage
        if call.usage is None:
            call.estimated = True
            call.usage_reason = call.usage_reason or "stream ended without a usage event"
    return response
