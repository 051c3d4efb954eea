"""A lightweight closed-loop HTTP/1.1 load generator for the proxy benchmark, run as its own process.

Why not aiohttp's client: on a machine with two cores the load generator competes with the proxy and
the upstream for CPU, and a full HTTP client costs about as much per request as the proxy itself.
This one keeps ``concurrency`` keep-alive connections, each sending one pre-built request after the
other, and does the least parsing that still measures correctly: the status line, Content-Length or
chunked framing, the time of the first body byte (time to first token for SSE) and the end of the
response. Latency is measured per request from just before the write to the last byte.

    python bench/loadgen.py --url http://127.0.0.1:8080/v1/chat/completions --token T \
        --body '{"model": ...}' --concurrency 16 --requests 3000 [--warmup 200]

Prints one JSON object: {"latencies": [s...], "ttfts": [s...], "seconds": wall, "errors": n,
"statuses": {...}}. With ``--events`` it also counts the SSE events of every answer (blank-line
terminated, counted in the de-chunked body) and reports ``events`` (all of them, warm-up included)
``gaps``: the time between consecutive events of one answer, as seen by this client, and
``buckets``: the events received in each 10 ms slot of the measured phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

BUCKET_SECONDS = 0.01  # --events: events received are also counted per slot of this length


class _Conn(asyncio.Protocol):
    """One keep-alive connection; ``run`` sends requests until the shared budget is used up."""

    def __init__(self, gen: LoadGen) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.done: asyncio.Future[None] | None = None
        self.lost = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.head_done = False
        self.length = -1  # Content-Length, or -1 for chunked, -2 for read-until-close
        self.chunk_left = 0  # bytes left in the current chunk (+2 for its CRLF); 0 = expect a size line
        self.first_body: float | None = None
        self.finished = False
        self.last_event: float | None = None  # arrival of the answer's previous SSE event
        self.prev_lf = False  # the body's last byte so far was a line feed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.done is not None and not self.done.done():
            if self.length == -2 and self.head_done:
                self.done.set_result(None)
            else:
                self.done.set_exception(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            self._parse()
        except Exception as exc:  # a malformed response ends the run with an error
            if self.done is not None and not self.done.done():
                self.done.set_exception(exc)

    def _parse(self) -> None:
        buf = self.buf
        if not self.head_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).split(b"\r\n")
            del buf[: end + 4]
            self.status = int(head[0].split(b" ", 2)[1])
            self.length = -2
            for line in head[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    self.length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    self.length = -1
            self.head_done = True
        if buf and self.first_body is None:
            self.first_body = time.perf_counter()
        if self.length >= 0:
            if len(buf) >= self.length:
                del buf[: self.length]
                self._complete()
            return
        if self.length == -2:
            buf.clear()
            return
        # chunked: chunk_left counts the chunk's data and then its CRLF (the last 2 bytes)
        while buf:
            if self.chunk_left:
                take = min(self.chunk_left, len(buf))
                if self.gen.count_events and self.chunk_left > 2:
                    self._events(bytes(buf[: min(take, self.chunk_left - 2)]))
                del buf[:take]
                self.chunk_left -= take
                continue
            eol = buf.find(b"\r\n")
            if eol < 0:
                return
            size = int(bytes(buf[:eol]).split(b";", 1)[0], 16)
            if size == 0:
                if len(buf) < eol + 4:  # last chunk + empty trailer
                    return
                del buf[: eol + 4]
                self._complete()
                return
            del buf[: eol + 2]
            self.chunk_left = size + 2

    def _events(self, data: bytes) -> None:
        """Count the SSE events that end in ``data`` (a blank line: two line feeds, possibly split)."""
        if not data:
            return
        n = data.count(b"\n\n") + (1 if self.prev_lf and data[0] == 0x0A else 0)
        self.prev_lf = data[-1] == 0x0A and not data.endswith(b"\n\n")
        if n:
            gen = self.gen
            gen.events += n
            now = time.perf_counter()
            if gen.recording:
                if self.last_event is not None:
                    gen.gaps.append(now - self.last_event)
                gen.gaps.extend([0.0] * (n - 1))  # events that arrived together
                slot = int((now - gen.started) / BUCKET_SECONDS)
                buckets = gen.buckets
                if slot >= len(buckets):
                    buckets.extend([0] * (slot + 1 - len(buckets)))
                buckets[slot] += n
            self.last_event = now

    def _complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    async def run(self, delay: float = 0.0) -> None:
        gen = self.gen
        loop = asyncio.get_running_loop()
        if delay:
            await asyncio.sleep(delay)
        while gen.remaining > 0:
            gen.remaining -= 1
            self._reset()
            self.done = loop.create_future()
            t0 = time.perf_counter()
            assert self.transport is not None
            self.transport.write(gen.request)
            await self.done
            t1 = time.perf_counter()
            if gen.recording:
                gen.latencies.append(t1 - t0)
                if self.first_body is not None:
                    gen.ttfts.append(self.first_body - t0)
                gen.statuses[self.status] = gen.statuses.get(self.status, 0) + 1
            if self.lost:
                return


class LoadGen:
    def __init__(
        self,
        url: str,
        body: bytes,
        token: str | None,
        headers: list[str] | None = None,
        count_events: bool = False,
    ) -> None:
        extra = list(headers or ())
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        path = parts.path or "/"
        headers = [
            f"POST {path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            "Accept: */*",
        ]
        if token:
            headers.append(f"Authorization: Bearer {token}")
        headers += extra
        self.request = ("\r\n".join(headers) + "\r\n\r\n").encode() + body
        self.remaining = 0
        self.recording = True
        self.latencies: list[float] = []
        self.ttfts: list[float] = []
        self.statuses: dict[int, int] = {}
        self.count_events = count_events
        self.events = 0
        self.gaps: list[float] = []
        self.started = time.perf_counter()  # of the phase: events are counted in time slots from here
        self.buckets: list[int] = []  # events received per BUCKET_SECONDS slot of the measured phase

    async def phase(self, concurrency: int, requests: int, stagger: float = 0.0) -> float:
        loop = asyncio.get_running_loop()
        conns = []
        for _ in range(concurrency):
            _, proto = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
            conns.append(proto)
        self.remaining = requests
        started = self.started = time.perf_counter()
        # Staggered starts spread the connections' requests over time, like independent users; without
        # it, an upstream with a fixed latency answers all of them at the same instant, every time.
        await asyncio.gather(*(c.run(stagger * i / concurrency) for i, c in enumerate(conns)))
        seconds = time.perf_counter() - started
        for c in conns:
            if c.transport is not None:
                c.transport.close()
        return seconds


async def main_async(args: argparse.Namespace) -> dict:
    gen = LoadGen(args.url, args.body.encode(), args.token, args.header, args.events)
    if args.warmup:
        gen.recording = False
        await gen.phase(min(args.concurrency, 8), args.warmup)
        gen.recording = True
    seconds = await gen.phase(args.concurrency, args.requests, args.stagger)
    errors = sum(n for s, n in gen.statuses.items() if s >= 400)
    return {
        "latencies": gen.latencies,
        "ttfts": gen.ttfts,
        "seconds": seconds,
        "errors": errors,
        "statuses": {str(k): v for k, v in gen.statuses.items()},
        **({"events": gen.events, "gaps": gen.gaps, "buckets": gen.buckets} if args.events else {}),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--token")
    p.add_argument("--body", required=True, help="JSON request body (sent verbatim)")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--warmup", type=int, default=0, help="requests sent (and not measured) before the run")
    p.add_argument(
        "--stagger",
        type=float,
        default=0.0,
        help="spread the connections' first requests evenly over this many seconds",
    )
    p.add_argument("--header", action="append", default=[], help="an extra request header 'Name: value'")
    p.add_argument("--events", action="store_true", help="count SSE events and the gaps between them")
    args = p.parse_args()
    try:
        import uvloop

        result = uvloop.run(main_async(args))
    except ImportError:
        result = asyncio.run(main_async(args))
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
