"""The proxy's own HTTP/1.1 client (exporter/proxy/upstream_client.py) against a scripted raw TCP
server: framing, keep-alive, errors and timeouts. (The proxy tests cover it end to end; these pin the
edges that a well-behaved upstream never shows.)"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from exporter.proxy.upstream_client import Unreachable, UpstreamPool, plain_target

Script = Callable[[int], list[bytes]]  # request number → what to send (each item its own write)


class Server:
    """Reads one request at a time; answers with the script's pieces, a pause between them."""

    def __init__(self, script: Script, pause: float = 0.005, close_after: bool = False) -> None:
        self.script = script
        self.pause = pause
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(
                    next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(
                        b":"
                    )[1]
                )
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                for piece in self.script(len(self.requests) - 1):
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(self.pause)
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    p = UpstreamPool(connect_timeout=2.0, read_timeout=2.0)
    yield p
    await p.close()


async def serve(script: Script, **kw: object) -> Server:
    s = Server(script, **kw)  # type: ignore[arg-type]
    await s.start()
    return s


def target(s: Server) -> tuple[str, int, str]:
    return ("127.0.0.1", s.port, "/v1")


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"6\r\ndata: \r\n"
    b"3;ext=1\r\nabc\r\n"
    b"2\r\n\n\n\r\n"
    b"0\r\nX-Trailer: t\r\n\r\n"
)


@pytest.mark.parametrize("cut", [1, 7, 13, 40, 80, 95, 101])
async def test_chunked_body_split_anywhere_is_decoded(pool: UpstreamPool, cut: int) -> None:
    server = await serve(lambda n: [CHUNKED[:cut], CHUNKED[cut:]])
    r = await pool.post(target(server), "/chat/completions", {"X-A": "1"}, b"{}")
    assert r.status == 200 and r.headers["content-type"] == "text/event-stream"
    assert await r.read() == b"data: abc\n\n"
    r.release()
    request = server.requests[0]
    assert request.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert (
        b"\r\nX-A: 1\r\n" in request and b"\r\nContent-Length: 2\r\n" in request and request.endswith(b"{}")
    )


async def test_keep_alive_connection_is_reused_and_stale_one_replaced(pool: UpstreamPool) -> None:
    body = b'{"ok":1}'
    server = await serve(lambda n: [b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n" + body], pause=0.05)
    for _ in range(3):
        r = await pool.post(target(server), "/x", {}, b"{}")
        assert r.content_length == 8 and await r.read() == body
        r.release()
    await asyncio.sleep(0.1)
    assert server.connections == 1
    # From now on the upstream closes a connection 50 ms after its answer, without reading more: the
    # request sent on it meanwhile goes again on a new connection.
    server.close_after = True
    for reused in (True, False):
        r = await pool.post(target(server), "/x", {}, b"{}")
        assert await r.read() == body and r.reused is reused
        r.release()
    assert (server.connections, len(server.requests)) == (2, 5)


async def test_interim_response_until_close_and_gzip(pool: UpstreamPool) -> None:
    packed = gzip.compress(b'{"usage":{}}')
    answers = [
        [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", b"{}"],
        [b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n", b"par", b"tial"],
        [b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(packed), packed],
    ]
    server = await serve(lambda n: answers[n], close_after=True)
    expected = [b"{}", b"partial", b'{"usage":{}}']
    for want in expected:
        r = await pool.post(target(server), "/x", {}, b"{}")
        assert await r.read() == want
        r.release()


async def test_sink_takes_the_body_as_it_arrives(pool: UpstreamPool) -> None:
    events = [b"data: %d\n\n" % i for i in range(5)]
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    pieces = [head] + [b"%x\r\n%b\r\n" % (len(e), e) for e in events] + [b"0\r\n\r\n"]
    server = await serve(lambda n: pieces)
    r = await pool.post(target(server), "/x", {}, b"{}")
    got: list[bytes] = []

    class Sink:
        def __init__(self) -> None:
            self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def take(self, data: bytes) -> None:
            got.append(data)

        def end(self, exc: BaseException | None = None) -> None:
            if exc is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(exc)

    sink = Sink()
    early = r.content.read_nowait()
    r.content.tap(sink)
    await sink.done
    assert early + b"".join(got) == b"".join(events)
    r.release()


async def test_errors_map_to_aiohttp_types() -> None:
    pool = UpstreamPool(connect_timeout=2.0, read_timeout=0.3)
    try:
        silent = await serve(lambda n: [])
        with pytest.raises(aiohttp.SocketTimeoutError):
            await pool.post(target(silent), "/x", {}, b"{}")
        stalls = await serve(lambda n: [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"], pause=5)
        r = await pool.post(target(stalls), "/x", {}, b"{}")
        with pytest.raises(aiohttp.SocketTimeoutError):
            await r.read()
        r.release()
        bad = await serve(lambda n: [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"])
        r = await pool.post(target(bad), "/x", {}, b"{}")
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
        r.release()
        cut = await serve(lambda n: [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"], close_after=True)
        r = await pool.post(target(cut), "/x", {}, b"{}")
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
        r.release()
        gone = await serve(lambda n: [], close_after=True)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await pool.post(target(gone), "/x", {}, b"{}")
        port = gone.port
        assert gone.server is not None
        gone.server.close()
        await gone.server.wait_closed()
        with pytest.raises(Unreachable):
            await pool.post(("127.0.0.1", port, ""), "/x", {}, b"{}")
    finally:
        await pool.close()


def test_only_plain_http_without_credentials_uses_it() -> None:
    assert plain_target("http://127.0.0.1:8000/v1") == ("127.0.0.1", 8000, "/v1")
    assert plain_target("http://vllm") == ("vllm", 80, "")
    assert plain_target("http://[::1]:8000") == ("::1", 8000, "")
    assert plain_target("https://api.example/v1") is None
    assert plain_target("http://user:pw@vllm:8000/v1") is None
