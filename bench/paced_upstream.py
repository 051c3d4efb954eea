"""A cheap, paced OpenAI-compatible streaming upstream for ``bench/bench_stream.py``.

The simulator (``chargeback simulate-upstream``) is an aiohttp application with a coroutine per
stream; at 256 concurrent streams paced 20 ms apart (12,800 events/s) it needs most of a core by
itself, and on a 2-core machine it shares that core with the load generator. Then neither keeps
pace, the *direct* run's inter-event gaps grow to tens of milliseconds, and the proxy's added gap
cannot be seen. This server sends the same events for ``POST /v1/chat/completions`` with
``"stream": true``, at a fraction of the cost:

- a raw ``asyncio.Protocol`` on uvloop: keep-alive HTTP/1.1, requests framed by Content-Length;
- the answer's chunks encoded once per distinct request body (the same words, usage and chunk
  layout as the simulator: the role event, one event per token, the finish event, the usage event
  when ``stream_options.include_usage`` is true, then ``data: [DONE]``), one HTTP chunk per event;
- pacing by one ``loop.call_at`` per token on an absolute schedule, at the rate in the request's
  ``X-Sim-Tokens-Per-Second`` header (the role event goes at once; the finish, usage and [DONE]
  events follow the last token, as the simulator sends them).

Usage numbers come from the simulator's own ``expected_usage``, so the proxy must record exactly
what the simulator would have reported. Requests without ``Authorization: Bearer <upstream key>``
get 401; anything else it does not serve gets 404 or 400.

    python bench/paced_upstream.py [--api-key KEY]

Prints its port on one line, then serves until stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.sim.harness import UPSTREAM_API_KEY
from exporter.sim.upstream import expected_usage, token_words

MAX_HEAD = 16 * 1024
HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
END = b"0\r\n\r\n"


def _chunk(event: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(event), event)


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def answer(body: dict[str, Any]) -> tuple[bytes, list[bytes], bytes]:
    """(the role event, one event per token, the finish/usage/[DONE] events), each an HTTP chunk;
    the events are those the simulator sends for this chat request."""
    usage = expected_usage("chat/completions", body)
    words = token_words(body, usage["completion_tokens"])
    include_usage = (
        isinstance(body.get("stream_options"), dict) and body["stream_options"].get("include_usage") is True
    )
    model = body.get("model", "")
    rid = "0123456789abcdef01234567"

    def chunk(choice: dict[str, Any]) -> dict[str, Any]:
        c: dict[str, Any] = {
            "id": f"chatcmpl-{rid}",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": model,
            "choices": [{"index": 0, **choice}],
        }
        if include_usage:
            c["usage"] = None
        return c

    role = _chunk(_sse(chunk({"delta": {"role": "assistant", "content": ""}, "finish_reason": None})))
    tokens = [_chunk(_sse(chunk({"delta": {"content": w}, "finish_reason": None}))) for w in words]
    tail = _chunk(_sse(chunk({"delta": {}, "finish_reason": "stop"})))
    if include_usage:
        u = {
            "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"],
            "total_tokens": usage["total_tokens"],
            "prompt_tokens_details": {"cached_tokens": usage["cached_tokens"]},
        }
        obj = {
            "id": f"x-{rid}",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": model,
            "choices": [],
            "usage": u,
        }
        tail += _chunk(_sse(obj))
    return role, tokens, tail + _chunk(b"data: [DONE]\n\n") + END


class _Conn(asyncio.Protocol):
    """One keep-alive client connection; one request at a time (the load generator's way)."""

    def __init__(self, server: PacedUpstream) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next()

    def _reply(self, status: str, message: str) -> None:
        assert self.transport is not None
        body = json.dumps({"error": {"message": message}}).encode()
        self.transport.write(
            b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
            % (status.encode(), len(body), body)
        )

    def _next(self) -> None:
        """Serve the requests waiting in the buffer, up to the first stream (which makes us busy)."""
        while not self.busy and self.transport is not None and not self.transport.is_closing():
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self.transport.close()
                return
            lines = self.buf[:end].decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length_text = headers.get("content-length", "0")
            if not length_text.isdigit():
                self._reply("400 Bad Request", f"bad Content-Length {length_text[:20]!r}")
                self.transport.close()  # the next request's start is unknown
                return
            length = int(length_text)
            if len(self.buf) < end + 4 + length:
                return
            raw = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            self._serve(lines[0], headers, raw)

    def _serve(self, request_line: str, headers: dict[str, str], raw: bytes) -> None:
        method, _, rest = request_line.partition(" ")
        path = rest.partition(" ")[0]
        if headers.get("authorization") != f"Bearer {self.server.api_key}":
            self._reply("401 Unauthorized", "invalid upstream API key")
            return
        if method != "POST" or path != "/v1/chat/completions":
            self._reply("404 Not Found", f"not served here: {method} {path}")
            return
        try:
            body = json.loads(raw)
            rate = float(headers.get("x-sim-tokens-per-second", "0"))
        except ValueError as exc:
            self._reply("400 Bad Request", str(exc))
            return
        if not isinstance(body, dict) or body.get("stream") is not True or rate <= 0:
            self._reply("400 Bad Request", "only paced streams: stream true and X-Sim-Tokens-Per-Second > 0")
            return
        self._stream(self.server.answer(raw, body), rate)

    def _stream(self, parts: tuple[bytes, list[bytes], bytes], rate: float) -> None:
        role, tokens, tail = parts
        transport = self.transport
        assert transport is not None
        loop = self.server.loop
        self.busy = True
        transport.write(HEAD + role)
        start = loop.time()
        last = len(tokens) - 1

        def send(i: int) -> None:
            if transport.is_closing():
                return
            transport.write(tokens[i] + tail if i == last else tokens[i])
            if i == last:
                self.busy = False
                if self.buf:
                    self._next()

        for i in range(len(tokens)):
            loop.call_at(start + (i + 1) / rate, send, i)
        if not tokens:
            transport.write(tail)
            self.busy = False
            self._next()


class PacedUpstream:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.loop = asyncio.get_running_loop()
        self._answers: dict[bytes, tuple[bytes, list[bytes], bytes]] = {}

    def answer(self, raw: bytes, body: dict[str, Any]) -> tuple[bytes, list[bytes], bytes]:
        found = self._answers.get(raw)
        if found is None:
            found = self._answers[raw] = answer(body)
        return found


async def main(api_key: str) -> None:
    upstream = PacedUpstream(api_key)
    server = await upstream.loop.create_server(lambda: _Conn(upstream), "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await upstream.loop.run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--api-key", default=UPSTREAM_API_KEY)
    import uvloop

    uvloop.run(main(p.parse_args().api_key))
