"""The stream relay (exporter/proxy/relay.py) with a real proxy process: a client that stops reading
holds the upstream back (the proxy does not buffer the stream for it), and once it reads again it
gets every byte exactly as the upstream sent them, with the usage read from the final event."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from exporter.sim.harness import (
    create_keys,
    proxy_config,
    start_proxy,
    wait_for_rows,
    write_config,
)
from exporter.stack import free_port

USER = "relay@corp.example"
# about 35 MB of SSE: far more than the kernel's socket buffers between the three processes hold
# (Linux: at most about 4 MB for a send and 6 MB for a receive buffer, two of each on the way)
EVENTS = 120_000
USAGE = {"prompt_tokens": 11, "completion_tokens": EVENTS, "total_tokens": 11 + EVENTS}


def token_event(i: int) -> bytes:
    chunk = {
        "id": "chatcmpl-relay",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": f"w{i:05d} " + "x" * 150}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


USAGE_EVENT = (
    b"data: "
    + json.dumps({"id": "chatcmpl-relay", "choices": [], "usage": USAGE}, separators=(",", ":")).encode()
    + b"\n\n"
)
STREAM = b"".join(token_event(i) for i in range(EVENTS)) + USAGE_EVENT + b"data: [DONE]\n\n"


@dataclass
class Upstream:
    """A fast SSE server in a thread: writes the whole stream as quickly as the proxy takes it."""

    port: int = field(default_factory=free_port)
    sent: int = 0  # bytes handed to the transport so far
    done: threading.Event = field(default_factory=threading.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        step = 64 * 1024
        for start in range(0, len(STREAM), step):
            await resp.write(STREAM[start : start + step])  # waits while the proxy reads nothing
            self.sent = start + step
        await resp.write_eof()
        self.done.set()
        return resp

    def serve(self, ready: threading.Event, stop: threading.Event) -> None:
        async def main() -> None:
            app = web.Application()
            app.router.add_post("/v1/chat/completions", self.handle)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            ready.set()
            await asyncio.to_thread(stop.wait)
            await runner.cleanup()

        asyncio.run(main())


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=up.serve, args=(ready, stop), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield up
    stop.set()
    thread.join(10)


def read_response(sock: socket.socket) -> bytes:
    """The de-chunked body of one HTTP/1.1 chunked response."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"transfer-encoding: chunked" in head.lower()
    body = bytearray()
    buf = bytearray(rest)
    while True:
        while b"\r\n" not in buf:
            buf += sock.recv(1 << 20)
        line, _, after = bytes(buf).partition(b"\r\n")
        size = int(line, 16)
        buf = bytearray(after)
        while len(buf) < size + 2:
            buf += sock.recv(1 << 20)
        if size == 0:
            return bytes(body)
        body += buf[:size]
        del buf[: size + 2]


def test_a_client_that_stops_reading_holds_the_upstream_back(tmp_path: Path, upstream: Upstream) -> None:
    doc = proxy_config(
        upstreams={"relay-model": [f"http://127.0.0.1:{upstream.port}/v1"]}, workdir=tmp_path, api_key=None
    )
    ledger_url = doc["ledger"]["url"]
    token = create_keys(ledger_url, {USER: "research"})[USER]
    proxy = start_proxy(tmp_path, write_config(tmp_path / "chargeback.yaml", doc))
    try:
        body = json.dumps(
            {"model": "relay-model", "messages": [{"role": "user", "content": "go"}], "stream": True}
        ).encode()
        port = int(proxy.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            time.sleep(2.0)  # the client reads nothing: the proxy must stop reading the upstream
            assert not upstream.done.is_set()
            assert upstream.sent < 25_000_000, f"{upstream.sent} of {len(STREAM)} bytes sent"
            # the client did not ask for usage: the proxy asked for it and hides the usage chunk
            assert read_response(sock) == STREAM.replace(USAGE_EVENT, b"")
        assert upstream.done.wait(10)
        (row,) = wait_for_rows(ledger_url, 1, user_email=USER)
        assert (row["status_code"], row["prompt_tokens"], row["completion_tokens"]) == (200, 11, EVENTS)
        assert (row["estimated"], row["stream"], row["error"]) == (0, 1, "")
    finally:
        proxy.stop()
