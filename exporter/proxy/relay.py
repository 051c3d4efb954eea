"""Passing the upstream's answer on to the client: a JSON body (``relay_body``) or an SSE stream
(``relay_stream``), reading the usage on the way.

The stream path is the proxy's hot loop: a real inference server sends every token as its own SSE
event, so one request costs the proxy a wake-up, a read and a write per token. It therefore does the
least per event that keeps the accounting exact:

- no task wake-up per event: the body is handed over as the upstream connection's
  ``data_received`` decodes it (by the proxy's own client, exporter/proxy/upstream_client.py, or by
  aiohttp's payload reader, tapped with ``_TappedReader``) and written straight to the client's
  transport, one HTTP chunk per upstream read; the first write carries the status line and headers
  that the lane left waiting (exporter/proxy/exchange.py);
- flow control only when the client's socket buffer is above its high-water mark: the stream is
  then handed back to the handler's task and aiohttp's reader, which buffers and stops reading the
  upstream until the client has caught up (a slow client slows its upstream; a fast one costs no
  drain per event);
- ``SSEFilter`` (exporter/proxy/usage.py) passes ordinary chunks through after a few byte searches,
  parses JSON only for the event that carries the usage, and counts the streamed text only if the
  stream ends without usage.

Where a stream ends early (the upstream breaks it or times out, or the proxy's shutdown cuts it)
``relay_stream`` closes it with an SSE error event: the status line (200) is gone by then, so that is
how the client learns of it.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from aiohttp.streams import StreamReader
from multidict import CIMultiDict

from exporter.proxy.errors import error_body, error_response
from exporter.proxy.lifecycle import Streams, shutdown_cut
from exporter.proxy.redact import clean_message, model_redactor
from exporter.proxy.upstream_client import Body, UpstreamResponse
from exporter.proxy.usage import InvalidUsage, SSEFilter, Usage, read_usage, response_chars, response_texts

if TYPE_CHECKING:
    from exporter.proxy.call import Call
    from exporter.proxy.exchange import Exchange

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

Upstream = aiohttp.ClientResponse | UpstreamResponse  # aiohttp's client, or the proxy's own


def client_headers(upstream: Upstream, call: Call) -> CIMultiDict[str]:
    connection = upstream.headers.get("Connection")
    drop = RESPONSE_DROP | {h.strip().lower() for h in connection.split(",")} if connection else RESPONSE_DROP
    # Case-insensitive and multi-valued, like HTTP headers: an upstream that echoes ``x-request-id``
    # in any spelling is replaced, not joined (the client must see exactly the ledger's request id),
    # and repeated headers (Link, Vary) survive.
    # a list, not a generator: multidict first asks a generator for ``.items()`` and formats the
    # AttributeError, at every answer
    headers = CIMultiDict([(k, v) for k, v in upstream.headers.items() if k.lower() not in drop])
    headers["X-Request-Id"] = call.request_id
    return model_redactor(call.model).headers(headers)  # an upstream echoing its credential


def _upstream_error(call: Call, status: int, message: str, code: str) -> web.Response:
    call.status = status
    call.error = message = clean_message(call.model, message)
    return error_response(status, message, "upstream_error", code, headers={"X-Request-Id": call.request_id})


async def relay_body(call: Call, upstream: Upstream) -> web.StreamResponse:
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
        except (ValueError, RecursionError):
            obj = None
        found = read_usage(obj)
        call.usage = found if isinstance(found, Usage) else None
        if call.usage is None:
            call.estimated = True
            reason = found.reason if isinstance(found, InvalidUsage) else "response carried no usage"
            call.usage_reason = call.usage_reason or reason
            call.delivered_chars = response_chars(obj)
            if call.model is not None and call.model.usage_fallback == "tokenize":
                call.texts = response_texts(obj)
    else:
        call.error = f"upstream returned {upstream.status}"
    body = model_redactor(call.model).data(data)  # an error body may echo the upstream's credential
    return web.Response(status=upstream.status, body=body, headers=client_headers(upstream, call))


class _Relay:
    """One stream's relay: takes the upstream's body bytes as they arrive (``take``, synchronous),
    passes them through the ``SSEFilter`` and writes the result straight to the client's transport,
    one HTTP chunk per write. ``done`` resolves when the upstream's body ends or the client falls
    behind (``slow``), or fails with what ended it (an upstream error, or
    ``ClientConnectionResetError`` when the client has gone)."""

    __slots__ = ("_chunked", "_ex", "_redact", "_transport", "call", "done", "first", "slow", "sse")

    def __init__(self, ex: Exchange, call: Call, sse: SSEFilter) -> None:
        self._transport = ex.transport  # the connection's, for the response's whole life
        self._ex = ex  # holding the prepared status line and headers
        self._chunked = ex.chunked
        self._redact = model_redactor(call.model).data  # an upstream echoing its credential
        self.call = call
        self.sse = sse
        self.first = True  # nothing forwarded yet
        # the client's socket buffer went above its high-water mark: from then on the task reads the
        # stream itself, waiting for the client as needed (aiohttp's reader buffers and pauses the
        # upstream meanwhile)
        self.slow = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def take(self, chunk: bytes) -> None:
        data = self.sse.feed(chunk)
        if data:
            try:
                self.send(self._redact(data))
            except aiohttp.ClientConnectionResetError as exc:
                self.end(exc)

    def send(self, data: bytes) -> None:
        """Raises ``ClientConnectionResetError`` when the client has gone, before handing anything on."""
        call = self.call
        transport = self._transport
        if transport is None or transport.is_closing():
            raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")
        out = b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data
        if self.first:
            call.first_byte = time.perf_counter()
            self.first = False
            out = self._ex.take_head() + out
        # Once the end marker has been handed to the transport the client has the whole answer: a
        # close from then on (the SDK stops reading at [DONE] while the upstream still ends its body)
        # must not turn a delivered stream into a 499.
        call.complete = call.complete or self.sse.complete
        transport.write(out)
        if not self.slow and transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            self.slow = True
            self.end()

    def backlog(self) -> bool:
        transport = self._transport
        return transport is not None and transport.get_write_buffer_size() > WRITE_HIGH_WATER

    def end(self, exc: BaseException | None = None) -> None:
        if self.done.done():
            return
        if exc is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(exc)

    def stop(self) -> None:
        if not self.done.done():
            self.done.cancel()
        elif not self.done.cancelled():
            self.done.exception()  # retrieved: no "exception was never retrieved" warning


# The stream's body is taken from aiohttp's payload reader as its HTTP parser hands it over, not by
# a task that wakes up per event: ``_TappedReader`` is swapped in as the reader's class for the
# stream's duration (same slots, only these methods differ) and forwards to the stream's ``_Relay``.
_TAPS: dict[StreamReader, _Relay] = {}


class _TappedReader(StreamReader):
    __slots__ = ()

    def feed_data(self, data: bytes, size: int = 0) -> bool:
        relay = _TAPS[self]
        if relay.done.done():
            # the relay stopped taking (a slow client; or the stream is over): the reader buffers
            # as usual, pausing the upstream when full, until the task reads it
            return StreamReader.feed_data(self, data, size)
        relay.take(data)
        return False

    def begin_http_chunk_receiving(self) -> None:
        if _TAPS[self].done.done():
            StreamReader.begin_http_chunk_receiving(self)

    def end_http_chunk_receiving(self) -> None:
        if _TAPS[self].done.done():
            StreamReader.end_http_chunk_receiving(self)

    def feed_eof(self) -> None:
        super().feed_eof()
        _TAPS[self].end()

    def set_exception(self, exc: BaseException, *args: object, **kwargs: object) -> None:
        super().set_exception(exc, *args, **kwargs)  # type: ignore[arg-type]
        _TAPS[self].end(exc)


async def _pump(relay: _Relay, content: StreamReader | Body) -> None:
    """Move the upstream's body to the client until it ends (raises what ended it)."""
    if type(content) is Body:  # the proxy's own client: it hands the body over as it decodes it
        early = content.read_nowait()
        if early:
            relay.take(early)
        content.tap(relay)
        try:
            await relay.done
        finally:
            content.tap(None)
        if not relay.slow:
            return
    elif type(content) is StreamReader and not content.is_eof() and content.exception() is None:
        early = content.read_nowait()  # what arrived with the headers; nothing can land in between
        if early:
            relay.take(early)
        _TAPS[content] = relay
        content.__class__ = _TappedReader
        try:
            await relay.done
        finally:
            content.__class__ = StreamReader
            del _TAPS[content]
        if not relay.slow:
            return
    # chunk by chunk, by this task: a slow client (waited for whenever its buffer is full), or a
    # reader that cannot be tapped
    while True:
        if relay.backlog():
            try:
                await relay._ex.drain()
            except ConnectionError as exc:
                raise aiohttp.ClientConnectionResetError(str(exc)) from exc
        chunk = await content.readany()
        if not chunk:
            return
        data = relay.sse.feed(chunk)
        if data:
            relay.send(relay._redact(data))


async def write_error_event(ex: Exchange, message: str, code: str, type_: str = "upstream_error") -> None:
    """End a started stream with an SSE error event: the status line (200) is gone by then, so this
    is how the client learns that the answer was cut short."""
    await ex.write(b"data: " + error_body(message, type_, code) + b"\n\n")


async def relay_stream(
    ex: Exchange,
    call: Call,
    upstream: Upstream,
    hide_usage: bool,
    streams: Streams | None = None,
) -> None:
    """SSE: pass the upstream's events on as they arrive, keep the usage event. ``streams``: the
    streams in progress, which shutdown may cut (exporter/proxy/lifecycle.py)."""
    headers = client_headers(upstream, call)
    call.status = upstream.status
    sse = SSEFilter(hide_usage, keep_text=call.model is not None and call.model.usage_fallback == "tokenize")
    relay: _Relay | None = None
    redact = model_redactor(call.model).data

    async def send(data: bytes) -> None:
        """Through aiohttp (the rare tail; with the status line and headers if nothing went before)."""
        if relay is None or relay.first:
            call.first_byte = time.perf_counter()
        before = call.complete
        call.complete = call.complete or sse.complete  # as in _Relay.send
        try:
            await ex.write(redact(data))
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            call.complete = before
            raise

    try:
        await ex.start_stream(upstream.status, headers)  # the status line and headers wait
        try:
            # The relay writes the body from its first bytes, together with the waiting head.
            relay = _Relay(ex, call, sse)
            await _pump(relay, upstream.content)
            tail = sse.flush()
            if tail:
                await send(tail)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            raise  # the client went away (handled below), not the upstream
        except (
            aiohttp.ClientPayloadError,
            aiohttp.ServerDisconnectedError,
            aiohttp.SocketTimeoutError,
            aiohttp.ClientConnectionError,
        ) as exc:
            upstream.close()
            cut = shutdown_cut(streams, call) if streams is not None else None
            if cut is not None:
                await ex.write(cut)  # the proxy's shutdown ended it: the event says so
            elif not sse.complete:  # after the end marker the client has the whole answer: no error
                timeout = isinstance(exc, aiohttp.SocketTimeoutError)
                call.status = 504 if timeout else 502
                call.error = clean_message(
                    call.model,
                    "upstream timed out mid-stream" if timeout else f"upstream dropped mid-stream: {exc}",
                )
                code = "upstream_timeout" if timeout else "upstream_disconnected"
                await write_error_event(ex, call.error, code)
        await ex.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError) as exc:
        upstream.close()  # stop the upstream generating for nobody
        if not call.complete:
            call.status = 499
            call.error = f"client closed the connection: {exc}"
    except asyncio.CancelledError:
        upstream.close()
        raise
    finally:
        if relay is not None:
            relay.stop()
        if sse.error and not call.error:  # the status line was 200 already; the row says what happened
            call.error = f"upstream error event: {sse.error}"
        call.usage = sse.usage
        if call.usage is None:
            # only an estimate (or the tokenizer) needs the delivered text: counted here, once
            call.delivered_chars = sse.delivered_chars
            call.texts = sse.texts
            call.estimated = True
            reason = sse.usage_problem or "stream ended without a usage event"
            call.usage_reason = call.usage_reason or reason
