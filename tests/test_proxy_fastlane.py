"""The API listener's fast lane (exporter/proxy/fastlane.py): what it hands over to aiohttp, over raw
sockets, so that the exact bytes on the wire are what is checked."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

from exporter.proxy import fastlane
from exporter.proxy.fastlane import SWEEPS, FastLane, _Handover, _parse_head
from exporter.sim.harness import Stack, wait_for_rows

BODY = b'{"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}'


def _address(stack: Stack) -> tuple[str, int]:
    url = urlsplit(stack.api_url)
    assert url.hostname is not None and url.port is not None
    return url.hostname, url.port


def _post(path: str, token: str, body: bytes, extra: str = "", version: str = "1.1") -> bytes:
    head = (
        f"POST {path} HTTP/{version}\r\nHost: proxy\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


def _exchange(stack: Stack, *chunks: bytes, expect: bytes | None = None) -> bytes:
    """Send ``chunks`` on one connection (after the first, waiting for ``expect`` when given) and read
    until the proxy closes it."""
    with socket.create_connection(_address(stack), timeout=10) as sock:
        sock.sendall(chunks[0])
        got = b""
        if expect is not None:
            while expect not in got:
                data = sock.recv(65536)
                assert data, got
                got += data
        for chunk in chunks[1:]:
            sock.sendall(chunk)
        while data := sock.recv(65536):
            got += data
    return got


def _responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split HTTP/1.1 responses framed by Content-Length (status, lower-cased headers, body)."""
    out = []
    while raw:
        head, _, raw = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
        n = int(headers.get("content-length", "0"))
        out.append((status, headers, raw[:n]))
        raw = raw[n:]
    return out


def _error(body: bytes) -> dict[str, Any]:
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def test_pipelined_hot_post_then_models_on_one_connection(
    proxy_env: Stack, fresh_users: Callable[..., list[str]]
) -> None:
    user = fresh_users(1, "research")[0]
    token = proxy_env.tokens[user]
    models = requests.get(
        f"{proxy_env.api_url}/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=10
    ).json()
    get = f"GET /v1/models HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    raw = _exchange(
        proxy_env,
        _post("/v1/chat/completions", token, BODY)
        + get
        + _post("/v1/embeddings", token, b"{}", "Connection: close\r\n"),
    )
    (s1, h1, b1), (s2, _, b2), (s3, h3, b3) = _responses(raw)
    assert s1 == 200 and json.loads(b1)["object"] == "chat.completion"
    assert re.fullmatch(r"[0-9a-f]{32}", h1["x-request-id"])
    assert "connection" not in h1  # kept alive
    assert s2 == 200 and json.loads(b2) == models
    # served by aiohttp from the handover on, with the same logic and answer
    assert s3 == 400 and h3["connection"] == "close"
    assert _error(b3) == {
        "message": "'model' is required and must be a string",
        "type": "invalid_request_error",
        "param": "model",
        "code": "invalid_request",
    }
    rows = wait_for_rows(proxy_env.ledger_url, 2, user_email=user)
    assert sorted((r["endpoint"], r["status_code"]) for r in rows) == [
        ("/v1/chat/completions", 200),
        ("/v1/embeddings", 400),
    ]
    assert {r["request_id"] for r in rows} == {h1["x-request-id"], h3["x-request-id"]}


def test_chunked_request_body_is_aiohttps(proxy_env: Stack, fresh_users: Callable[..., list[str]]) -> None:
    user = fresh_users(1, "research")[0]
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer {proxy_env.tokens[user]}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()
    body = b"%x\r\n%b\r\n%x\r\n%b\r\n0\r\n\r\n" % (10, BODY[:10], len(BODY) - 10, BODY[10:])
    [(status, headers, data)] = _responses(_exchange(proxy_env, head + body))
    assert status == 200 and json.loads(data)["object"] == "chat.completion"
    [row] = wait_for_rows(proxy_env.ledger_url, 1, user_email=user)
    assert (row["status_code"], row["request_id"]) == (200, headers["x-request-id"])


def test_expect_100_continue(proxy_env: Stack, fresh_users: Callable[..., list[str]]) -> None:
    user = fresh_users(1, "research")[0]
    request = _post(
        "/v1/chat/completions", proxy_env.tokens[user], BODY, "Expect: 100-continue\r\nConnection: close\r\n"
    )
    head, body = request[: -len(BODY)], BODY
    raw = _exchange(proxy_env, head, body, expect=b"\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    [(status, _, data)] = _responses(raw.removeprefix(b"HTTP/1.1 100 Continue\r\n\r\n"))
    assert status == 200 and json.loads(data)["object"] == "chat.completion"
    [row] = wait_for_rows(proxy_env.ledger_url, 1, user_email=user)
    assert row["status_code"] == 200


def test_malformed_request_line(proxy_env: Stack) -> None:
    """aiohttp's parser refuses it (with the proxy's quiet answer) and closes the connection."""
    raw = _exchange(proxy_env, b"POST /v1/chat/completions HTTP/1.1 extra\r\nContent-Length: 2\r\n\r\n{}")
    body = (
        b'{"error": {"message": "malformed HTTP request: the request line is malformed", '
        b'"type": "invalid_request_error", "param": null, "code": "bad_http_request"}}'
    )
    assert re.sub(rb"Date: [^\r]+", b"Date: -", raw) == (
        b"HTTP/1.0 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Date: -\r\nServer: %b\r\n\r\n%b" % (len(body), SERVER_SOFTWARE.encode(), body)
    )


def test_body_over_the_limit(proxy_env: Stack, fresh_users: Callable[..., list[str]]) -> None:
    user = fresh_users(1, "research")[0]
    big = b'{"model": "sim-small", "pad": "' + b"x" * 70000 + b'"}'
    raw = _exchange(
        proxy_env, _post("/v1/chat/completions", proxy_env.tokens[user], big, "Connection: close\r\n")
    )
    [(status, headers, data)] = _responses(raw)
    assert status == 413
    assert _error(data) == {
        "message": "request body is larger than 65536 bytes",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_too_large",
    }
    [row] = wait_for_rows(proxy_env.ledger_url, 1, user_email=user)
    assert (row["status_code"], row["request_id"]) == (413, headers["x-request-id"])


def test_fast_lane_answers_as_aiohttp_does(proxy_env: Stack) -> None:
    """The same refused request on both lanes (a query string sends it to aiohttp): the same bytes,
    but for the date and the request id."""

    def answer(path: str) -> bytes:
        raw = _exchange(proxy_env, _post(path, "not-a-key", BODY, "Connection: close\r\n"))
        raw = re.sub(rb"Date: [^\r]+", b"Date: -", raw)
        return re.sub(rb"X-Request-Id: [0-9a-f]{32}", b"X-Request-Id: -", raw)

    fast = answer("/v1/chat/completions")
    assert fast == answer("/v1/chat/completions?lane=aiohttp")
    assert fast.endswith(
        b'\r\n\r\n{"error": {"message": "invalid or revoked API key", "type": "invalid_request_error", '
        b'"param": null, "code": "invalid_api_key"}}'
    )


# --------------------------------------------------------------------------- the lane's own rules

HOT = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\ncontent-type: application/json\r\nX-Trace:  a b\t\r\n"
)


@pytest.mark.parametrize(
    "head",
    [
        HOT + b"Content-Length: 12",
        HOT + b"Content-Length: 12\r\nConnection: close",
        HOT + b"Content-Length: 00012\r\nConnection: Keep-Alive",
    ],
)
def test_heads_the_fast_lane_serves(head: bytes) -> None:
    path, headers, length, keep_alive = _parse_head(head, 100)
    assert (path, length) == ("/v1/chat/completions", 12)
    assert keep_alive is (b"close" not in head)
    # aiohttp's spelling for the headers it knows; others as sent, values without the outer spaces
    assert list(headers.items())[:3] == [
        ("Host", "p"),
        ("Content-Type", "application/json"),
        ("X-Trace", "a b"),
    ]


@pytest.mark.parametrize(
    "head",
    [
        HOT,  # no Content-Length
        HOT + b"Content-Length: 101",  # over max_body_bytes: aiohttp's lane answers 413
        HOT + b"Content-Length: 12\r\nContent-Length: 12",
        HOT + b"Content-Length: +12",
        HOT + b"Content-Length: 1 2",
        HOT + b"Content-Length: 12\r\nTransfer-Encoding: chunked",
        HOT + b"Content-Length: 12\r\nExpect: 100-continue",
        HOT + b"Content-Length: 12\r\nUpgrade: h2c\r\nConnection: Upgrade",
        HOT + b"Content-Length: 12\r\nConnection: keep-alive, x-other",
        HOT + b"Content-Length: 12\r\nHost: q",  # a repeated header
        HOT + b"Content-Length: 12\r\n folded",  # obs-fold
        HOT + b"Content-Length: 12\r\nX-A : b",  # space before the colon
        HOT + b"Content-Length: 12\r\nX-A: b\nX-B: c",  # bare LF
        HOT + b"Content-Length: 12\r\nX-A: b\rc",  # bare CR
        HOT + b"Content-Length: 12\r\nX-A: \xc3\xa9",  # not ASCII
        HOT + b"Content-Length: 12\r\nX-A: b\x00",
        HOT + b"Content-Length: 12\r\n" + b"\r\n".join(b"X-%d: v" % i for i in range(64)),
        b"POST /v1/chat/completions HTTP/1.0\r\nContent-Length: 12",
        b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nContent-Length: 12",
        b"POST /v1/chat/completions/ HTTP/1.1\r\nContent-Length: 12",
        b"POST /v1/models HTTP/1.1\r\nContent-Length: 12",
        b"POST http://p/v1/chat/completions HTTP/1.1\r\nContent-Length: 12",
        b"post /v1/chat/completions HTTP/1.1\r\nContent-Length: 12",
        b"POST  /v1/chat/completions HTTP/1.1\r\nContent-Length: 12",
    ],
)
def test_heads_handed_to_aiohttp(head: bytes) -> None:
    with pytest.raises(_Handover):
        _parse_head(head, 100)


def test_idle_connections_closed_by_the_sweep_after_keepalive() -> None:
    """An idle connection (none sent, or half a head) is closed once ``keepalive`` has passed since it
    went idle, and not before; with no connection left, no sweep stays scheduled."""
    keepalive = 0.3

    async def scenario() -> tuple[list[float], bool, bool]:
        loop = asyncio.get_running_loop()
        lane = FastLane(None, keepalive=keepalive)  # type: ignore[arg-type]  # no request gets that far
        server = await loop.create_server(lane, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        start = loop.time()
        silent = await asyncio.open_connection("127.0.0.1", port)
        partial = await asyncio.open_connection("127.0.0.1", port)
        partial[1].write(b"POST /v1/chat/comp")  # a head that never completes
        ended = []
        for reader, _ in (silent, partial):
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the proxy
            ended.append(loop.time() - start)
        await asyncio.sleep(keepalive)
        swept_clean = lane._sweeper is None and not lane.connections
        # shutdown stops a pending sweep
        late = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.05)
        await lane.shutdown(1.0)
        stopped = lane._sweeper is None
        late[1].close()
        for _, writer in (silent, partial):
            writer.close()
        server.close()
        await server.wait_closed()
        return ended, swept_clean, stopped

    ended, swept_clean, stopped = asyncio.run(scenario())
    assert all(keepalive <= t < keepalive * (1 + 1 / SWEEPS) + 2.0 for t in ended), ended
    assert swept_clean
    assert stopped


def test_unread_body_after_an_early_answer_does_not_hold_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An answer sent before the body was read (a 401, say): if the rest of the body never comes, the
    connection is closed like an idle one once ``keepalive`` has passed, not held for ever; if it does
    come, the connection serves the next request."""
    keepalive = 0.3

    async def early(state: object, ex: object) -> web.Response:
        return web.Response(status=401, body=b"no")

    monkeypatch.setattr(fastlane, "handle", early)
    state = SimpleNamespace(cfg=SimpleNamespace(proxy=SimpleNamespace(max_body_bytes=1 << 20)))
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nContent-Length: 100\r\n\r\n"

    async def answer(reader: asyncio.StreamReader) -> bytes:
        got = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(re.search(rb"Content-Length: (\d+)", got)[1])  # type: ignore[index]
        return got + await asyncio.wait_for(reader.readexactly(length), 5)

    async def scenario() -> tuple[float, bytes, bytes]:
        loop = asyncio.get_running_loop()
        lane = FastLane(state, keepalive=keepalive)  # type: ignore[arg-type]
        server = await loop.create_server(lane, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        stalled = await asyncio.open_connection("127.0.0.1", port)
        stalled[1].write(head + b"x" * 10)  # 90 bytes of the body never come
        first = await answer(stalled[0])
        answered = loop.time()
        assert await asyncio.wait_for(stalled[0].read(), 5) == b""  # closed by the proxy
        closed_after = loop.time() - answered
        # the rest of the body does come: the next request on the connection is served
        whole = await asyncio.open_connection("127.0.0.1", port)
        whole[1].write(head + b"x" * 10)
        await answer(whole[0])
        whole[1].write(b"x" * 90 + head + b"y" * 100)
        second = await answer(whole[0])
        for _, writer in (stalled, whole):
            writer.close()
        await lane.shutdown(1.0)
        server.close()
        await server.wait_closed()
        return closed_after, first, second

    closed_after, first, second = asyncio.run(scenario())
    assert first.startswith(b"HTTP/1.1 401 Unauthorized\r\n") and first.endswith(b"\r\n\r\nno")
    assert second.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    # causal lower bound only: the sweep runs every keepalive / SWEEPS, a loaded machine may run it late
    assert keepalive / 2 <= closed_after < 5, closed_after
