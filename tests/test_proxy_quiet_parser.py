"""The proxy's HTTP listeners never log or echo what aiohttp's parser refused (issue 11, item 6):
in-process, with caplog seeing every logger (aiohttp's included) at DEBUG."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import pytest
from aiohttp import web

from exporter.listener import QuietAppRunner

TOKEN = b"cbk_" + b"S3cretT0kenBytes" * 3


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def _exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize(
    "request_bytes, reason, level",
    [
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN + b"\x00x\r\n\r\n",
            "a header is malformed",
            logging.INFO,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN + b"A" * 9000 + b"\r\n\r\n",
            "a header or the request line is too long",
            logging.INFO,
        ),
        (
            b"G\x00T /" + TOKEN + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            "the request line is malformed",
            logging.DEBUG,
        ),
    ],
    ids=["nul", "over 8 KiB", "request line"],
)
async def test_refused_requests_are_neither_logged_nor_echoed(
    caplog: pytest.LogCaptureFixture, request_bytes: bytes, reason: str, level: int
) -> None:
    app = web.Application()
    app.router.add_get("/", _ok)
    runner = QuietAppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        with caplog.at_level(logging.DEBUG):
            reply = await asyncio.to_thread(_exchange, port, request_bytes)
    finally:
        await runner.cleanup()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 400 ") or head.startswith(b"HTTP/1.1 400 "), head
    assert json.loads(body) == {
        "error": {
            "message": f"malformed HTTP request: {reason}",
            "type": "invalid_request_error",
            "param": None,
            "code": "bad_http_request",
        }
    }
    ours = [r for r in caplog.records if r.name == "chargeback.listener"]
    assert [(r.levelno, r.getMessage()) for r in ours] == [
        (level, f"refused a malformed HTTP request from 127.0.0.1: {reason}")
    ]
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert TOKEN[4:20].decode() not in logged and not any(r.exc_info for r in caplog.records)
