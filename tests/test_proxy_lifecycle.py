"""Proxy lifecycle with their own stacks: SIGTERM drain under load, and a PostgreSQL outage (through
a relay we cut) spanning a proxy restart, ending with exact ledger rows and the issue's SQL on
PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import psycopg
import pytest
import requests
from support.ledger import VERBATIM_SQL

from exporter import contract
from exporter.sim.harness import ledger_rows, metric, proxy_stack, read_metrics, wait_for_rows
from exporter.sim.relay import TcpRelay
from exporter.sim.traffic import Totals, TrafficResult, run_traffic
from exporter.sim.upstream import expected_usage

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


async def test_sigterm_drains_in_flight_requests(tmp_path: Path) -> None:
    users = {f"drain{i}@corp.example": ("research", "support")[i % 2] for i in range(4)}
    with proxy_stack(tmp_path, users=users, proxy={"shutdown_grace_seconds": 20}) as stack:
        clients = {
            u: openai.AsyncOpenAI(base_url=stack.api_url + "/v1", api_key=t, max_retries=0, timeout=60)
            for u, t in stack.tokens.items()
        }
        slow = {"X-Sim-Tokens-Per-Second": "15"}  # 8..30 tokens: 0.5-2 s per request
        plan = [(u, i) for u in users for i in range(4)]  # 16 requests, half streaming

        async def one(user: str, i: int) -> tuple[str, int, int]:
            msgs = [{"role": "user", "content": f"request {i} from {user} during shutdown"}]
            c = clients[user]
            if i % 2:
                usage = None
                async for ch in await c.chat.completions.create(
                    model="sim-small",
                    messages=msgs,
                    max_tokens=30,
                    stream=True,  # type: ignore[arg-type]
                    stream_options={"include_usage": True},
                    extra_headers=slow,
                ):
                    usage = ch.usage or usage
            else:
                usage = (
                    await c.chat.completions.create(
                        model="sim-small",
                        messages=msgs,
                        max_tokens=30,  # type: ignore[arg-type]
                        extra_headers=slow,
                    )
                ).usage
            assert usage is not None
            want = expected_usage("chat/completions", {"messages": msgs, "max_tokens": 30})
            assert (usage.prompt_tokens, usage.completion_tokens) == (
                want["prompt_tokens"],
                want["completion_tokens"],
            )
            return user, usage.prompt_tokens, usage.completion_tokens

        tasks = [asyncio.create_task(one(u, i)) for u, i in plan]

        def all_in_flight() -> bool:
            return metric(read_metrics(stack.metrics_url), contract.INFLIGHT_REQUESTS) == len(plan)

        await asyncio.to_thread(wait_until, all_in_flight, 20, "16 requests in flight")
        stack.proxy.process.signal(15)  # SIGTERM

        def refused() -> bool:
            try:
                requests.get(stack.api_url + "/healthz", timeout=1)
            except requests.ConnectionError:
                return True
            return False

        await asyncio.to_thread(wait_until, refused, 10, "the proxy to stop accepting connections")
        assert not all(t.done() for t in tasks), (
            "in-flight requests were still running when listening stopped"
        )
        results = await asyncio.gather(*tasks)
        for c in clients.values():
            await c.close()
        assert stack.proxy.process.proc is not None
        assert await asyncio.to_thread(stack.proxy.process.proc.wait, 30) == 0
        rows = ledger_rows(stack.ledger_url)  # flushed before exit: no waiting needed
        assert len(rows) == len(plan)
        assert all(r["status_code"] == 200 and not r["estimated"] for r in rows)
        assert sum(r["completion_tokens"] for r in rows) == sum(r[2] for r in results)
        assert sum(r["prompt_tokens"] for r in rows) == sum(r[1] for r in results)


@pytest.fixture
def pg_database() -> Iterator[str]:
    name = f"cb_proxy_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {PG_ADMIN} is required: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def merge(*results: TrafficResult) -> dict[tuple[str, str], Totals]:
    out = TrafficResult()
    for r in results:
        out.add(r)
    return out.totals


async def test_postgres_outage_restart_and_recovery(tmp_path: Path, pg_database: str) -> None:
    direct = f"postgresql://postgres@127.0.0.1:5432/{pg_database}"
    relay = TcpRelay("127.0.0.1", 5432).start()
    via_relay = f"postgresql://postgres@127.0.0.1:{relay.port}/{pg_database}?connect_timeout=2"
    users = {
        "pg-alice@corp.example": "research",
        "pg-bob@corp.example": "support",
        "pg-carol@corp.example": "research",
    }
    models = ["sim-small", "sim-large"]
    try:
        with proxy_stack(tmp_path, users=users, ledger_url=via_relay, ledger={"max_queue_rows": 10}) as stack:
            tokens = stack.tokens
            first = await run_traffic(
                stack.api_url, tokens, models, requests_per_user=4, stream_ratio=0.5, seed=11
            )
            assert first.errors == []
            await asyncio.to_thread(wait_for_rows, direct, 12)

            relay.cut()  # the database goes away; requests must keep working
            second = await run_traffic(
                stack.api_url, tokens, models, requests_per_user=8, stream_ratio=0.5, seed=12
            )
            assert second.errors == []

            def buffered() -> bool:
                m = read_metrics(stack.metrics_url)
                return (
                    metric(m, contract.LEDGER_QUEUE_ROWS) + metric(m, contract.LEDGER_SPOOLED_ROWS) == 24
                    and metric(m, contract.LEDGER_WRITE_ERRORS_TOTAL) > 0
                )

            await asyncio.to_thread(wait_until, buffered, 20, "24 rows queued/spooled during the outage")
            m = read_metrics(stack.metrics_url)
            assert metric(m, contract.LEDGER_SPOOLED_ROWS) > 0, (
                "beyond max_queue_rows rows go to the disk spool"
            )
            assert len(ledger_rows(direct)) == 12

            # restart while the database is still down: nothing acknowledged may be lost
            assert stack.proxy.stop() == 0
            relay.restore()
            stack.restart_proxy()
            await asyncio.to_thread(wait_for_rows, direct, 36)
            third = await run_traffic(
                stack.api_url, tokens, models, requests_per_user=2, stream_ratio=0.5, seed=13
            )
            assert third.errors == []
            rows = await asyncio.to_thread(wait_for_rows, direct, 42)
            assert len(rows) == 42 and len({r["request_id"] for r in rows}) == 42

            from exporter.ledger.store import open_store

            store = open_store(direct)
            try:
                cols, out = store.query(VERBATIM_SQL)
            finally:
                store.close()
            assert cols == [
                "user_email",
                "model",
                "total_tokens_sum",
                "prompt_tokens_sum",
                "output_tokens_sum",
            ]
            got = {(r[0], r[1]): tuple(int(v) for v in r[2:]) for r in out}
            want = {
                k: (t.total_tokens, t.prompt_tokens, t.completion_tokens)
                for k, t in merge(first, second, third).items()
            }
            assert got == want
            totals = [int(r[2]) for r in out]
            assert totals == sorted(totals, reverse=True)
    finally:
        relay.close()


def test_expected_usage_is_deterministic() -> None:
    body = {
        "messages": [{"role": "system", "content": "a b"}, {"role": "user", "content": "c d e"}],
        "seed": 5,
    }
    u = expected_usage("chat/completions", body)
    assert u == expected_usage("chat/completions", dict(body))
    assert u["prompt_tokens"] == 5 + 2 * 3 and u["cached_tokens"] == 2
    assert expected_usage("chat/completions", {**body, "max_tokens": 3})["completion_tokens"] == 3
