"""Shared parts of the fault-injection tests: traffic through the official openai SDK that records
what each client was answered, and the check that the ledger holds exactly that.

A request is *acknowledged* when its response started (the client saw the status line and the
``X-Request-Id`` header). The ledger must then hold its row exactly once; when the client also got
the whole answer with usage, the row's tokens must be exactly those.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import openai

from exporter.sim.harness import ledger_rows


@dataclass
class Outcome:
    index: int
    request_id: str | None  # None: no response started (connection refused or reset first)
    status: int
    completed: bool  # the whole answer arrived
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


async def one_request(
    client: openai.AsyncOpenAI, i: int, stream: bool, tokens_per_second: int = 100, max_tokens: int = 20
) -> Outcome:
    msgs = [{"role": "user", "content": f"fault injection request {i}"}]
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if stream else {}
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model="sim-small",
            messages=msgs,  # type: ignore[arg-type]
            max_tokens=max_tokens,
            stream=stream,
            extra_headers={"X-Sim-Tokens-Per-Second": str(tokens_per_second)},
            **extra,
        )
    except openai.APIStatusError as exc:
        return Outcome(i, exc.response.headers.get("x-request-id"), exc.status_code, True)
    except (openai.APIConnectionError, openai.APITimeoutError):
        return Outcome(i, None, 0, False)
    rid = raw.headers.get("x-request-id")
    try:
        parsed: Any = raw.parse()  # with_raw_response (legacy) parses synchronously
        if stream:
            usage = None
            async for chunk in parsed:
                usage = chunk.usage or usage
        else:
            usage = parsed.usage
    except Exception:  # cut mid-stream (the proxy died, or an SSE error event)
        return Outcome(i, rid, raw.status_code, False)
    if usage is None:
        return Outcome(i, rid, raw.status_code, True)
    return Outcome(i, rid, raw.status_code, True, usage.prompt_tokens, usage.completion_tokens)


async def traffic(
    client: openai.AsyncOpenAI, n: int, interval: float = 0.01, **kw: Any
) -> list[asyncio.Task[Outcome]]:
    """Start ``n`` requests, one every ``interval`` seconds, alternating plain and streaming."""
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(one_request(client, i, stream=bool(i % 2), **kw)))
        await asyncio.sleep(interval)
    return tasks


def check_ledger(ledger_url: str, outcomes: list[Outcome]) -> dict[str, dict[str, Any]]:
    """Acknowledged = stored, exactly once, with exact tokens for complete answers; returns the rows."""
    rows = ledger_rows(ledger_url)
    ids = [r["request_id"] for r in rows]
    assert len(ids) == len(set(ids)), "a request id is in the ledger twice"
    by_id = {r["request_id"]: r for r in rows}
    acked = [o for o in outcomes if o.request_id]
    missing = [o.request_id for o in acked if o.request_id not in by_id]
    assert missing == [], f"{len(missing)} of {len(acked)} acknowledged requests are not in the ledger"
    for o in acked:
        row = by_id[o.request_id]  # type: ignore[index]
        if o.completed and o.prompt_tokens is not None:
            assert (row["prompt_tokens"], row["completion_tokens"]) == (
                o.prompt_tokens,
                o.completion_tokens,
            ), o
            assert row["status_code"] == o.status
    return by_id


def wait_for_ledger(ledger_url: str, outcomes: list[Outcome], timeout: float = 30.0) -> None:
    """Poll until every acknowledged request id is in the ledger (the writer is asynchronous)."""
    want = {o.request_id for o in outcomes if o.request_id}
    deadline = time.monotonic() + timeout
    while True:
        have = {r["request_id"] for r in ledger_rows(ledger_url)}
        if want <= have or time.monotonic() > deadline:
            return
        time.sleep(0.1)
