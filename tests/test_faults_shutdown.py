"""Shutdown under faults, with the proxy as a real process: a stream still running when the grace
period ends, a request on a kept-alive connection during the drain, and a journal that cannot be
written while the database refuses rows (the exit code must then say that rows were lost)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiohttp
import openai
import pytest
import requests

from exporter.proxy.lifecycle import SHUTDOWN_REASON, SHUTDOWN_STATUS
from exporter.sim.harness import ledger_rows, proxy_stack

USERS = {"down@corp.example": "research"}


def _refusing(url: str) -> bool:
    try:
        requests.get(url + "/healthz", timeout=1)
    except requests.ConnectionError:
        return True
    return False


async def _until(predicate, what: str, limit: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not await asyncio.to_thread(predicate):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_stream_cut_by_shutdown_gets_an_error_event_and_its_own_row(tmp_path: Path) -> None:
    with proxy_stack(tmp_path, users=USERS, proxy={"shutdown_grace_seconds": 1}) as stack:
        client = openai.AsyncOpenAI(
            base_url=stack.api_url + "/v1", api_key=stack.tokens["down@corp.example"], max_retries=0
        )
        raw = await client.chat.completions.with_raw_response.create(
            model="sim-small",
            messages=[{"role": "user", "content": "a long answer, please"}],
            max_tokens=200,
            stream=True,
            extra_headers={"X-Sim-Tokens-Per-Second": "10"},  # 20 s: far longer than the grace
        )
        rid = raw.headers["x-request-id"]
        stream = raw.parse()
        chunks = 0
        with pytest.raises(openai.APIError) as err:
            async for _ in stream:
                chunks += 1
                if chunks == 2:
                    stack.proxy.process.signal(15)
        assert SHUTDOWN_REASON in str(err.value)
        await client.close()
        assert stack.proxy.process.proc is not None
        assert await asyncio.to_thread(stack.proxy.process.proc.wait, 30) == 0
        log = stack.proxy.process.log_tail(200)
        [row] = ledger_rows(stack.ledger_url)
    # the grace period ran once, then the stream was ended (not a second wait of the same length)
    assert log.count("grace period of 1.0s over: ending 1 stream(s)") == 1
    assert row["request_id"] == rid
    assert (row["status_code"], row["error"]) == (SHUTDOWN_STATUS, SHUTDOWN_REASON)
    assert row["stream"] and row["estimated"]  # no usage event came: the delivered text is estimated


async def test_request_on_kept_alive_connection_during_drain_gets_503(tmp_path: Path) -> None:
    with proxy_stack(tmp_path, users=USERS, proxy={"shutdown_grace_seconds": 20}) as stack:
        headers = {"Authorization": f"Bearer {stack.tokens['down@corp.example']}"}
        body = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
        url = stack.api_url + "/v1/chat/completions"
        keep = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
        slow = aiohttp.ClientSession()
        try:
            async with keep.post(url, json=body, headers=headers) as r:
                assert r.status == 200  # the connection stays open for the next request
                await r.read()
            slow_body = {**body, "max_tokens": 20}
            long_one = asyncio.create_task(
                slow.post(url, json=slow_body, headers={**headers, "X-Sim-Tokens-Per-Second": "10"})
            )
            await asyncio.sleep(0.5)  # the slow request is in flight and keeps the drain going
            stack.proxy.process.signal(15)
            await _until(lambda: _refusing(stack.api_url), "the proxy to stop listening")
            async with keep.post(url, json=body, headers=headers) as r:
                assert r.status == 503
                err = (await r.json())["error"]
            assert err["code"] == "shutting_down"
            done = await long_one
            assert done.status == 200 and (await done.json())["usage"]["completion_tokens"] == 20
            done.release()
        finally:
            await keep.close()
            await slow.close()
        assert stack.proxy.process.proc is not None
        assert await asyncio.to_thread(stack.proxy.process.proc.wait, 30) == 0
        rows = ledger_rows(stack.ledger_url)
    assert sorted(r["status_code"] for r in rows) == [200, 200, 503]


async def test_rows_neither_written_nor_journaled_make_the_exit_code_non_zero(tmp_path: Path) -> None:
    # The journal directory cannot be created (its parent is a file), standing in for a full or
    # broken disk, and the database refuses writes (another process holds SQLite's write lock).
    blocker_file = tmp_path / "not-a-directory"
    blocker_file.write_text("")
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}?busy_timeout_ms=50"
    with proxy_stack(
        tmp_path,
        users=USERS,
        ledger_url=url,
        proxy={"shutdown_grace_seconds": 1},
        ledger={"spool_dir": str(blocker_file / "spool"), "retry_seconds": 0.1},
    ) as stack:
        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            client = openai.AsyncOpenAI(
                base_url=stack.api_url + "/v1", api_key=stack.tokens["down@corp.example"], max_retries=0
            )
            for i in range(3):
                r = await client.chat.completions.create(
                    model="sim-small", messages=[{"role": "user", "content": f"q{i}"}], max_tokens=5
                )
                assert r.usage is not None
            await client.close()
            stack.proxy.process.signal(15)
            assert stack.proxy.process.proc is not None
            code = await asyncio.to_thread(stack.proxy.process.proc.wait, 30)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        log = stack.proxy.process.log_tail(100)
    assert code == 1
    assert "3 rows could be neither written nor journaled" in log
