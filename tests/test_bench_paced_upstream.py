"""bench/paced_upstream.py, the stream bench's upstream: the simulator's events and exact usage,
paced per token, read by the official SDK directly and through the proxy (whose ledger must then
hold exactly that usage)."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from exporter.sim.harness import UPSTREAM_API_KEY, proxy_stack
from exporter.sim.upstream import expected_usage, token_words

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "paced_upstream.py"
BODY = {
    "model": "bench-paced",
    "messages": [{"role": "user", "content": "benchmark the accounting proxy please"}],
    "max_tokens": 24,
}
RATE = 400.0  # tokens per second: 24 tokens in 60 ms


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, str(SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    try:
        yield int(proc.stdout.readline())
    finally:
        proc.stdin.close()
        proc.wait(10)


def _stream(base_url: str, key: str) -> tuple[list[openai.types.chat.ChatCompletionChunk], list[float]]:
    """The chunks, and when each arrived, in seconds after the request was sent."""
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
    chunks, arrivals = [], []
    sent = time.monotonic()
    stream = client.chat.completions.create(
        **BODY,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-Sim-Tokens-Per-Second": str(RATE)},
    )
    for chunk in stream:
        chunks.append(chunk)
        arrivals.append(time.monotonic() - sent)
    return chunks, arrivals


def test_direct_events_and_usage(upstream: int) -> None:
    chunks, arrivals = _stream(f"http://127.0.0.1:{upstream}/v1", UPSTREAM_API_KEY)
    usage = expected_usage("chat/completions", BODY)
    assert usage["completion_tokens"] == 24
    # the role chunk, 24 tokens, the finish chunk, the usage chunk ([DONE] ends the SDK's iteration)
    assert len(chunks) == 27
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks[1:25])
    assert text == "".join(token_words(BODY, 24))
    assert chunks[25].choices[0].finish_reason == "stop"
    last = chunks[26]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        usage["prompt_tokens"],
        24,
        usage["prompt_tokens"] + 24,
    )
    # paced: the last token is scheduled 24/RATE after the server read the request, so it cannot
    # arrive much sooner after the send (a causal lower bound: a slow machine cannot break it; one
    # token's time of slack for uvloop's millisecond timer clock)
    assert arrivals[24] >= 23 / RATE


def test_refuses_wrong_key_and_unpaced(upstream: int) -> None:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{upstream}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(**BODY, stream=True)  # type: ignore[arg-type]
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{upstream}/v1", api_key=UPSTREAM_API_KEY, max_retries=0
    )
    with pytest.raises(openai.BadRequestError, match="only paced streams"):
        client.chat.completions.create(**BODY, stream=True)  # type: ignore[arg-type]


def test_through_the_proxy_ledger_exact(upstream: int, tmp_path: Path) -> None:
    users = {"alice@corp.example": "research"}
    with proxy_stack(
        tmp_path, users=users, extra_upstreams={"bench-paced": [f"http://127.0.0.1:{upstream}/v1"]}
    ) as stack:
        chunks, _ = _stream(f"{stack.api_url}/v1", stack.tokens["alice@corp.example"])
        assert len(chunks) == 27
        db_path = stack.ledger_url.removeprefix("sqlite:///")
        deadline = time.monotonic() + 20
        rows: list[tuple] = []
        while time.monotonic() < deadline and not rows:
            with sqlite3.connect(db_path) as db:
                rows = db.execute(
                    "SELECT model, status_code, prompt_tokens, completion_tokens, total_tokens, estimated, stream "
                    "FROM http_analytics"
                ).fetchall()
            time.sleep(0.1)
    usage = expected_usage("chat/completions", BODY)
    assert rows == [("bench-paced", 200, usage["prompt_tokens"], 24, usage["prompt_tokens"] + 24, 0, 1)]


def test_pipelined_requests_on_one_connection(upstream: int) -> None:
    """A refused request and a stream sent back to back: both answered, in order."""
    body = json.dumps({**BODY, "stream": True}).encode()

    def request(key: str) -> bytes:
        return (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            f"X-Sim-Tokens-Per-Second: 1000\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    with socket.create_connection(("127.0.0.1", upstream), timeout=10) as sock:
        sock.sendall(request("sk-wrong") + request(UPSTREAM_API_KEY))
        received = b""
        while not received.endswith(b"\r\n0\r\n\r\n"):
            data = sock.recv(65536)
            assert data, f"connection closed early after {received[-200:]!r}"
            received += data
    first, _, rest = received.partition(b"HTTP/1.1 200 OK\r\n")
    assert first.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    # the role, 24 tokens, the finish event and [DONE]: no usage event without include_usage
    assert rest.count(b"data: ") == 27
    assert b'"usage"' not in rest.replace(b'"usage":null', b"")
    assert rest.count(b"data: [DONE]") == 1
