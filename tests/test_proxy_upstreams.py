"""The proxy in front of recorded real model servers (tests/transcripts, replayed byte for byte by a
real upstream process): exact usage from each server's wire format or a marked estimate, the
[DONE]/close race, the request id header, and ``usage_fallback: tokenize``."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import requests

from exporter import contract
from exporter.config import ConfigError, parse_config
from exporter.proxy.usage import prompt_chars
from exporter.sim.harness import (
    metric,
    proxy_config,
    read_metrics,
    running_proxy,
    wait_for_rows,
)
from exporter.sim.replay import load_transcript, template
from exporter.stack import ManagedProcess, free_port

TRANSCRIPTS = Path(__file__).parent / "transcripts"
USERS = {f"replay{i}@corp.example": "research" for i in range(8)}
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Say hi, \u00e9l\u00e8ve!"},
]


@dataclass
class Replay:
    api_url: str
    metrics_url: str
    replay_url: str
    ledger_url: str
    tokens: dict[str, str]


def start_replay(workdir: Path, *flags: str) -> ManagedProcess:
    """The transcript replay server (exporter.sim.replay) on a free port, started and ready."""
    port = free_port()
    return ManagedProcess(
        "replay",
        [
            sys.executable,
            "-m",
            "exporter.sim.replay",
            "--listen",
            f"127.0.0.1:{port}",
            "--transcripts",
            str(TRANSCRIPTS),
            *flags,
        ],
        workdir,
        url=f"http://127.0.0.1:{port}",
        ready_path="/healthz",
    ).start()


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replay]:
    workdir = tmp_path_factory.mktemp("replay")
    upstream = start_replay(workdir)
    dead = f"http://127.0.0.1:{free_port()}"
    base = f"{upstream.url}/v1"
    doc = proxy_config(
        upstreams={"replay": [base], "replay-tok": [base], "replay-tok-dead": [base]}, workdir=workdir
    )
    doc["models"]["replay-tok"]["usage_fallback"] = "tokenize"
    doc["models"]["replay-tok"]["tokenize"] = {"api": "llama.cpp"}  # default URL: the upstream's root
    for api in ("llama.cpp", "llama-cpp-python", "vllm", "tgi"):
        doc["models"][f"tok-{api}"] = {
            **doc["models"]["replay"],
            "usage_fallback": "tokenize",
            "tokenize": {"api": api},
        }
    doc["models"]["replay-tok-dead"]["usage_fallback"] = "tokenize"
    doc["models"]["replay-tok-dead"]["tokenize"] = {"api": "llama.cpp", "url": dead, "timeout_seconds": 2}
    try:
        with running_proxy(workdir, doc, USERS) as (proxy, tokens):
            yield Replay(proxy.url, proxy.metrics_url, upstream.url, doc["ledger"]["url"], tokens)
    finally:
        upstream.stop()


def sdk(r: Replay, user: str, transcript: str) -> openai.OpenAI:
    """The official SDK as ``user``, every request answered with ``transcript``."""
    return openai.OpenAI(
        base_url=r.api_url + "/v1",
        api_key=r.tokens[user],
        max_retries=0,
        default_headers={"X-Replay": transcript},
    )


def body_of(name: str) -> bytes:
    return load_transcript(TRANSCRIPTS / name)[1]


def delivered_text(body: bytes) -> str:
    """The generated text in a transcript, decoded (what a client shows its user)."""
    text = ""
    for line in body.splitlines():
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        obj = json.loads(line[6:])
        for choice in obj.get("choices") or ():
            text += choice.get("text") or ""
            text += (choice.get("delta") or choice.get("message") or {}).get("content") or ""
    return text


def post(
    r: Replay, user: str, transcript: str, request: dict[str, Any], **headers: str
) -> tuple[requests.Response, bytes]:
    path = "/v1/completions" if "prompt" in request else "/v1/chat/completions"
    resp = requests.post(
        r.api_url + path,
        json=request,
        headers={"Authorization": f"Bearer {r.tokens[user]}", "X-Replay": transcript, **headers},
        timeout=30,
        stream=True,
    )
    return resp, resp.raw.read()


def request_id(resp: requests.Response) -> str:
    values = resp.raw.headers.getlist("X-Request-Id")
    assert len(values) == 1, f"X-Request-Id sent {len(values)} times: {values}"
    return values[0]


# transcript → (expected usage or None for an estimate, endpoint kind)
CASES: dict[str, tuple[tuple[int, int] | None, str]] = {
    "vllm-chat-usage.sse": ((17, 3), "chat"),
    "vllm-chat-continuous-usage.sse": ((17, 3), "chat"),
    "vllm-chat-error.sse": (None, "chat"),
    "sglang-chat-usage.sse": ((21, 4), "chat"),
    "sglang-chat-error.sse": (None, "chat"),
    "tgi-chat-usage.sse": ((12, 3), "chat"),
    "tgi-chat-error.sse": (None, "chat"),
    "ollama-chat-usage.sse": ((26, 3), "chat"),
    "ollama-completions-usage.sse": ((5, 4), "completions"),
    "ollama-chat-error.sse": (None, "chat"),
    "llamacpp-chat-usage.sse": ((9, 2), "chat"),
    "llamacpp-chat-error.sse": (None, "chat"),
    "llama-cpp-python-chat.sse": (None, "chat"),
}


# the error message each error transcript carries, as the ledger row's error column shows it
ERRORS = {
    "vllm-chat-error.sse": "upstream error event: The engine loop has stopped.",
    "sglang-chat-error.sse": "upstream error event: Detokenization failed",
    "tgi-chat-error.sse": "upstream error event: Request failed during generation: Server error: CUDA out of memory",
    "llamacpp-chat-error.sse": "upstream error event: context shift is disabled",
}


def test_every_transcript_names_its_source() -> None:
    files = sorted(p.name for p in TRANSCRIPTS.iterdir())
    assert set(CASES) <= set(files)
    for name in files:
        header, body = load_transcript(TRANSCRIPTS / name)
        assert any("Source:" in line for line in header), name
        assert body, name


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("name", sorted(CASES))
def test_transcripts_are_counted_exactly_or_estimated(replay: Replay, name: str, include_usage: bool) -> None:
    expected, kind = CASES[name]
    user = "replay0@corp.example"
    if kind == "chat":
        request: dict[str, Any] = {"model": "replay", "messages": MESSAGES, "stream": True}
    else:
        request = {"model": "replay", "prompt": "Tell me a story", "stream": True}
    if include_usage:
        request["stream_options"] = {"include_usage": True}
    resp, got = post(replay, user, name, request)
    assert resp.status_code == 200
    rid = request_id(resp)
    upstream = body_of(name)
    if include_usage:
        assert got == upstream  # byte for byte, extra fields (timings, matched_stop, ...) included
    else:
        assert b'"usage":{' not in got  # the usage the proxy asked for is not passed on
        assert delivered_text(got) == delivered_text(upstream)
    (row,) = wait_for_rows(replay.ledger_url, 1, request_id=rid)
    assert row["status_code"] == 200 and row["stream"]
    if expected is not None:
        assert (row["prompt_tokens"], row["completion_tokens"]) == expected
        assert row["total_tokens"] == sum(expected)
        assert not row["estimated"] and row["usage_source"] == "upstream" and row["usage_reason"] == ""
    else:
        text = delivered_text(upstream)
        assert row["estimated"] and row["usage_source"] == "estimate"
        assert row["usage_reason"] == "stream ended without a usage event"
        assert row["prompt_tokens"] == math.ceil(prompt_chars(request) / 4)
        assert row["completion_tokens"] == math.ceil(len(text) / 4)  # decoded characters
    assert row["error"] == ERRORS.get(name, "")


def test_client_closing_right_after_done_is_not_499(replay: Replay) -> None:
    """The SDK stops reading at [DONE] and closes while the upstream is still ending its body."""
    user = "replay1@corp.example"
    n = 100
    request = {"model": "replay", "messages": MESSAGES, "stream": True}
    headers = {
        "Authorization": f"Bearer {replay.tokens[user]}",
        "X-Replay": "llamacpp-chat-usage.sse",
        "X-Replay-Eof-Delay-Ms": "20",  # the body ends well after [DONE]: the close lands in between
    }

    async def run() -> list[str]:
        ids = []
        async with aiohttp.ClientSession() as session:
            for _ in range(n):
                resp = await session.post(
                    replay.api_url + "/v1/chat/completions", json=request, headers=headers
                )
                got = b""
                while b"data: [DONE]\n\n" not in got:
                    chunk = await resp.content.readany()
                    assert chunk, "stream ended before [DONE]"
                    got += chunk
                ids.append(resp.headers["X-Request-Id"])
                resp.close()  # like the SDK: done at [DONE], the connection is dropped
        return ids

    import asyncio

    before = read_metrics(replay.metrics_url)
    ids = asyncio.run(run())
    rows = wait_for_rows(replay.ledger_url, n, user_email=user)
    by_id = {r["request_id"]: r for r in rows}
    assert sorted(by_id) == sorted(ids)
    assert [by_id[i]["status_code"] for i in ids] == [200] * n
    assert all((by_id[i]["prompt_tokens"], by_id[i]["completion_tokens"]) == (9, 2) for i in ids)
    samples = read_metrics(replay.metrics_url)
    assert metric(samples, contract.REQUESTS_TOTAL, user=user) == n
    by_code = contract.REQUESTS_BY_CODE_TOTAL
    for code, want in (("200", n), ("499", 0)):
        assert (
            metric(samples, by_code, model="replay", code=code)
            - metric(before, by_code, model="replay", code=code)
            == want
        )
    assert metric(samples, contract.PROMPT_TOKENS_TOTAL, user=user) == 9 * n


def test_sdk_streams_are_never_499(replay: Replay) -> None:
    """The official SDK reads to [DONE] and closes; the upstream ends its body about a millisecond
    later (the replay's default, like llama.cpp). Every stream is a 200."""
    user = "replay7@corp.example"
    client = sdk(replay, user, "llamacpp-chat-usage.sse")
    n = 60
    for _ in range(n):
        stream = client.chat.completions.create(model="replay", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hey you"
    rows = wait_for_rows(replay.ledger_url, n, user_email=user)
    assert [r["status_code"] for r in rows] == [200] * n
    assert sum(r["completion_tokens"] for r in rows) == 2 * n
    samples = read_metrics(replay.metrics_url)
    assert metric(samples, contract.REQUESTS_TOTAL, user=user) == n


def test_upstream_breaking_the_body_after_done_is_no_error(replay: Replay) -> None:
    """The end marker was delivered; the upstream then drops the connection instead of ending its
    chunked body. The client has the whole answer: no 502, no error event appended."""
    user = "replay5@corp.example"
    request = {
        "model": "replay",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    resp, got = post(replay, user, "llamacpp-chat-usage.sse", request, **{"X-Replay-Drop-At-End": "1"})
    assert resp.status_code == 200 and got == body_of("llamacpp-chat-usage.sse")
    (row,) = wait_for_rows(replay.ledger_url, 1, request_id=request_id(resp))
    assert row["status_code"] == 200 and row["error"] == ""
    assert (row["prompt_tokens"], row["completion_tokens"], row["usage_source"]) == (9, 2, "upstream")
    # before the end marker the same break is an upstream failure (502, error event)
    resp, got = post(replay, user, "ollama-chat-error.sse", request, **{"X-Replay-Drop-At-End": "1"})
    assert resp.status_code == 200 and b'"code": "upstream_disconnected"' in got
    (row,) = wait_for_rows(replay.ledger_url, 1, request_id=request_id(resp))
    assert row["status_code"] == 502 and row["estimated"]


def test_request_id_reaches_the_client_once(replay: Replay) -> None:
    """The upstream echoes ``x-request-id`` in its own spelling; the client sees the ledger's id once."""
    user = "replay2@corp.example"
    client = sdk(replay, user, "llama-cpp-python-chat.json")
    raw = client.chat.completions.with_raw_response.create(model="replay", messages=MESSAGES)  # type: ignore[arg-type]
    completion = raw.parse()
    assert completion.usage is not None and completion.usage.prompt_tokens == 57
    values = raw.http_response.headers.get_list("x-request-id")
    assert len(values) == 1
    (row,) = wait_for_rows(replay.ledger_url, 1, user_email=user)
    assert row["request_id"] == values[0]
    assert (row["prompt_tokens"], row["completion_tokens"], row["usage_source"]) == (57, 12, "upstream")
    # streamed too
    resp, _ = post(
        replay, user, "vllm-chat-usage.sse", {"model": "replay", "messages": MESSAGES, "stream": True}
    )
    rid = request_id(resp)
    assert wait_for_rows(replay.ledger_url, 1, request_id=rid)[0]["user_email"] == user


def test_tokenize_counts_a_stream_without_usage(replay: Replay) -> None:
    user = "replay3@corp.example"
    text = delivered_text(body_of("llama-cpp-python-chat.sse"))
    client = sdk(replay, user, "llama-cpp-python-chat.sse")
    stream = client.chat.completions.create(model="replay-tok", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    got = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert got == text
    (row,) = wait_for_rows(replay.ledger_url, 1, user_email=user)
    prompt = len(template(MESSAGES).encode()) + 1  # the replay tokenizer: a token per byte, plus BOS
    completion = len(text.encode())
    assert row["status_code"] == 200
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (
        prompt,
        completion,
        prompt + completion,
    )
    assert not row["estimated"] and row["usage_source"] == "tokenize"
    assert row["usage_reason"] == "stream ended without a usage event"
    # non-streamed response without usage: counted the same way
    client2 = client.with_options(default_headers={"X-Replay": "no-usage-chat.json"})
    client2.chat.completions.create(model="replay-tok", messages=MESSAGES)  # type: ignore[arg-type]
    rows = wait_for_rows(replay.ledger_url, 2, user_email=user)
    row2 = next(r for r in rows if not r["stream"])
    assert (row2["prompt_tokens"], row2["completion_tokens"]) == (prompt, len("x\x17y\u00e9".encode()))
    assert row2["usage_source"] == "tokenize" and not row2["estimated"]
    samples = read_metrics(replay.metrics_url)
    assert metric(samples, contract.USAGE_SOURCE_TOTAL, model="replay-tok", source="tokenize") == 2
    assert metric(samples, contract.PROMPT_TOKENS_TOTAL, user=user) == 2 * prompt
    assert metric(samples, contract.USAGE_ESTIMATED_TOTAL, user=user) == 0


@pytest.mark.parametrize(
    ("api", "bos"),
    [("llama.cpp", 1), ("llama-cpp-python", 1), ("vllm", 0), ("tgi", 0)],
)
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_every_tokenize_flavour_counts_exactly(replay: Replay, api: str, bos: int, endpoint: str) -> None:
    """Each flavour's calls, against endpoints shaped like the server's: the prompt as the server
    templates it (llama.cpp and llama-cpp-python add BOS to the templated prompt, vLLM and TGI leave
    it to the template), the completion text without special tokens."""
    user = "replay6@corp.example"
    model = f"tok-{api}"
    if endpoint == "chat":
        request: dict[str, Any] = {"model": model, "messages": MESSAGES, "stream": True}
        prompt = len(template(MESSAGES).encode()) + bos
    else:
        request = {"model": model, "prompt": "Tell me a story", "stream": True}
        prompt = len(b"Tell me a story") + 1  # a raw prompt gets BOS everywhere
    resp, got = post(replay, user, "llama-cpp-python-chat.sse", request)
    assert resp.status_code == 200 and got == body_of("llama-cpp-python-chat.sse")
    (row,) = wait_for_rows(replay.ledger_url, 1, request_id=request_id(resp))
    text = delivered_text(body_of("llama-cpp-python-chat.sse"))
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, len(text.encode()))
    assert row["usage_source"] == "tokenize" and not row["estimated"]


def test_tokenize_failure_falls_back_to_the_estimate(replay: Replay) -> None:
    user = "replay4@corp.example"
    request = {"model": "replay-tok-dead", "messages": MESSAGES, "stream": True}
    resp, got = post(replay, user, "llama-cpp-python-chat.sse", request)
    assert resp.status_code == 200 and got.endswith(b"data: [DONE]\r\n\r\n")
    rid = request_id(resp)
    (row,) = wait_for_rows(replay.ledger_url, 1, request_id=rid)
    text = delivered_text(body_of("llama-cpp-python-chat.sse"))
    assert row["estimated"] and row["usage_source"] == "estimate" and row["status_code"] == 200
    assert row["usage_reason"].startswith("stream ended without a usage event; tokenize failed: ")
    assert row["prompt_tokens"] == math.ceil(prompt_chars(request) / 4)
    assert row["completion_tokens"] == math.ceil(len(text) / 4)
    samples = read_metrics(replay.metrics_url)
    assert metric(samples, contract.USAGE_SOURCE_TOTAL, model="replay-tok-dead", source="estimate") == 1
    assert metric(samples, contract.USAGE_ESTIMATED_TOTAL, user=user) == 1


BASE = """
pools: {p: {gpu_hourly_cost: 1}}
models:
  m:
    upstreams: [http://127.0.0.1:1/v1]
    pool: p
"""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "    usage_fallback: exact\n",
            'models.m.usage_fallback: expected one of estimate, tokenize, got "exact"',
        ),
        (
            "    usage_fallback: tokenize\n",
            "models.m.tokenize: usage_fallback: tokenize needs a tokenize section",
        ),
        (
            "    tokenize: {api: ollama}\n",
            "models.m.tokenize.api: expected one of llama.cpp, llama-cpp-python",
        ),
        ("    tokenize: {api: vllm, url: ftp://x}\n", "models.m.tokenize.url: expected an http(s) URL"),
        (
            "    tokenize: {api: vllm, timeout_seconds: 0}\n",
            "models.m.tokenize.timeout_seconds: must be greater",
        ),
        ("    tokenize: {api: vllm, port: 1}\n", "models.m.tokenize"),
    ],
)
def test_usage_fallback_config_errors_name_the_key(extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + extra, "c.yaml")
    assert message in str(err.value)
    assert "c.yaml" in str(err.value)


def test_usage_fallback_config_defaults() -> None:
    cfg = parse_config(BASE, "c.yaml")
    assert cfg.models["m"].usage_fallback == "estimate" and cfg.models["m"].tokenize is None
    cfg = parse_config(
        BASE + "    usage_fallback: tokenize\n    tokenize: {api: llama-cpp-python, url: 'http://h:8000/'}\n"
    )
    tok = cfg.models["m"].tokenize
    assert tok is not None and (tok.api, tok.url, tok.timeout_seconds) == (
        "llama-cpp-python",
        "http://h:8000",
        5.0,
    )


@pytest.mark.parametrize(
    ("delay_ms", "timeout_s", "source"),
    [(400, 10, "tokenize"), (3000, 0.5, "estimate")],
)
def test_pending_tokenize_counts_are_recorded_at_shutdown(
    tmp_path: Path, delay_ms: int, timeout_s: float, source: str
) -> None:
    """SIGTERM right after a response whose count is still running: shutdown waits for the count
    (each one bounded by its model's timeout), then flushes the ledger; nothing is lost."""
    upstream = start_replay(tmp_path, "--tokenize-delay-ms", str(delay_ms))
    try:
        doc = proxy_config(upstreams={"replay-tok": [f"{upstream.url}/v1"]}, workdir=tmp_path)
        ledger_url = doc["ledger"]["url"]
        doc["models"]["replay-tok"].update(
            usage_fallback="tokenize", tokenize={"api": "llama.cpp", "timeout_seconds": timeout_s}
        )
        with running_proxy(tmp_path, doc, {"late@corp.example": "research"}) as (proxy, tokens):
            r = Replay(proxy.url, proxy.metrics_url, upstream.url, ledger_url, tokens)
            request = {"model": "replay-tok", "messages": MESSAGES, "stream": True}
            resp, got = post(r, "late@corp.example", "llama-cpp-python-chat.sse", request)
            assert resp.status_code == 200 and got == body_of("llama-cpp-python-chat.sse")
            rid = request_id(resp)
            assert proxy.stop() == 0
    finally:
        upstream.stop()
    (row,) = wait_for_rows(ledger_url, 1, request_id=rid)
    assert row["status_code"] == 200 and row["usage_source"] == source
    if source == "tokenize":
        text = delivered_text(body_of("llama-cpp-python-chat.sse"))
        assert (row["prompt_tokens"], row["completion_tokens"]) == (
            len(template(MESSAGES).encode()) + 1,
            len(text.encode()),
        )
    else:
        assert row["estimated"]
        assert row["usage_reason"] == "stream ended without a usage event; tokenize timed out after 0.5s"
