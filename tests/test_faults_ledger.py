"""Fault injection against the ledger, with real processes: the proxy killed with SIGKILL in the
middle of traffic, a private PostgreSQL stopped (``-m immediate``) or frozen (SIGSTOP) under it, and
rows the database refuses for good. Every test compares the ledger, by request id, with what the
clients were answered (tests/faults.py): acknowledged = stored, exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import openai
import psycopg
import pytest
from faults import Outcome, check_ledger, traffic, wait_for_ledger
from private_pg import PrivatePostgres, pg_bin
from support.ledger import make_row

from exporter.config import LedgerConfig
from exporter.ledger.store import open_store
from exporter.ledger.writer import LedgerWriter
from exporter.proxy.lifecycle import CRASH_REASON
from exporter.sim.harness import ledger_rows, proxy_stack

USERS = {"fault@corp.example": "research"}


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    if pg_bin("initdb") is None:
        pytest.fail("initdb is required for the fault tests (make deps installs postgresql)")
    pg = PrivatePostgres().init()
    pg.start()
    try:
        yield pg
    finally:
        pg.destroy()


@pytest.fixture
def pg_url(private_pg: PrivatePostgres) -> Iterator[str]:
    """A fresh database on the private server, which is running and not frozen."""
    private_pg.thaw()
    if not (private_pg.data / "postmaster.pid").exists():
        private_pg.start()
    name = f"cb_fault_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(private_pg.url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield private_pg.url.rsplit("/", 1)[0] + "/" + name


async def _gather(tasks: list[asyncio.Task[Outcome]]) -> list[Outcome]:
    return list(await asyncio.gather(*tasks))


async def _wait_done(tasks: list[asyncio.Task[Outcome]], n: int) -> None:
    while sum(t.done() for t in tasks) < n:  # noqa: ASYNC110 - polling the client's own tasks
        await asyncio.sleep(0.01)


async def test_kill9_mid_traffic_then_restart_loses_nothing(tmp_path: Path) -> None:
    with proxy_stack(tmp_path, users=USERS, tokens_per_second=0) as stack:
        client = openai.AsyncOpenAI(
            base_url=stack.api_url + "/v1", api_key=stack.tokens["fault@corp.example"], max_retries=0
        )
        # 80 requests, half of them streams of 1 s: plenty are in flight when the proxy dies.
        tasks = await traffic(client, 80, interval=0.005, tokens_per_second=20)
        await _wait_done(tasks, 20)
        stack.proxy.process.signal(9)
        outcomes = await _gather(tasks)
        await client.close()
        assert stack.proxy.process.proc is not None
        assert stack.proxy.process.proc.wait(10) == -9
        stack.restart_proxy()  # replays the dead process's journal
        await asyncio.to_thread(wait_for_ledger, stack.ledger_url, outcomes)
        rows = check_ledger(stack.ledger_url, outcomes)
    done = [o for o in outcomes if o.request_id and o.completed]
    cut = [o for o in outcomes if o.request_id and not o.completed]
    assert len(done) >= 20
    # streams whose response had started when the proxy died: recorded from their begin records
    assert cut, "no stream was in flight when the proxy was killed"
    for o in cut:
        row = rows[o.request_id]  # type: ignore[index]
        assert row["estimated"] and row["status_code"] == 200
        assert row["error"] in (CRASH_REASON, "") or row["error"].startswith("client closed")


async def test_postgres_killed_then_proxy_killed_then_both_back(tmp_path: Path, private_pg, pg_url) -> None:
    with proxy_stack(tmp_path, users=USERS, ledger_url=pg_url, ledger={"retry_seconds": 0.2}) as stack:
        client = openai.AsyncOpenAI(
            base_url=stack.api_url + "/v1", api_key=stack.tokens["fault@corp.example"], max_retries=0
        )
        before = await _gather(await traffic(client, 10, tokens_per_second=0))
        await asyncio.to_thread(wait_for_ledger, pg_url, before)
        private_pg.stop_immediate()  # the database crashes
        during = await _gather(await traffic(client, 30, tokens_per_second=0))
        assert all(o.completed and o.status == 200 for o in during)
        stack.proxy.process.signal(9)  # and then the proxy too, with 30 rows not in the database
        assert stack.proxy.process.proc is not None
        stack.proxy.process.proc.wait(10)
        await client.close()
        private_pg.start()
        stack.restart_proxy()
        outcomes = before + during
        await asyncio.to_thread(wait_for_ledger, pg_url, outcomes)
        rows = check_ledger(pg_url, outcomes)
    assert len(rows) == 40


async def test_frozen_postgres_sigterm_exits_and_journal_is_replayed(
    tmp_path: Path, private_pg, pg_url
) -> None:
    grace = 2.0
    with proxy_stack(
        tmp_path,
        users=USERS,
        ledger_url=pg_url,
        proxy={"shutdown_grace_seconds": grace, "key_refresh_seconds": 0.2},
    ) as stack:
        client = openai.AsyncOpenAI(
            base_url=stack.api_url + "/v1", api_key=stack.tokens["fault@corp.example"], max_retries=0
        )
        before = await _gather(await traffic(client, 5, tokens_per_second=0))
        await asyncio.to_thread(wait_for_ledger, pg_url, before)
        private_pg.freeze()  # accepts TCP, never answers: key refresh and inserts hang
        try:
            during = await _gather(await traffic(client, 20, tokens_per_second=0))
            assert all(o.completed and o.status == 200 for o in during)
            await asyncio.sleep(0.5)  # a key refresh and a batch insert are now stuck in the database
            stack.proxy.process.signal(15)
            assert stack.proxy.process.proc is not None
            # the limit only guards against a hang (before the fix: 654 s); see docs/proxy.md
            code = await asyncio.to_thread(stack.proxy.process.proc.wait, grace + 20)
            assert code == 0
            assert "stay in the journal" in stack.proxy.process.log_tail(200)
        finally:
            private_pg.thaw()
        await client.close()
        stack.restart_proxy()
        outcomes = before + during
        await asyncio.to_thread(wait_for_ledger, pg_url, outcomes)
        rows = check_ledger(pg_url, outcomes)
    assert len(rows) == 25


# --------------------------------------------------------------------------- poison rows (writer)


def _config(tmp_path: Path, url: str) -> LedgerConfig:
    return LedgerConfig(
        url=url,
        batch_size=50,
        flush_interval_seconds=0.02,
        spool_dir=str(tmp_path / "spool"),
        retry_seconds=0.1,
    )


POISON = {
    "surrogate": {"model": "\ud800"},
    "nul": {"model": "a\x00b"},
    "huge": {"prompt_tokens": 2**63, "total_tokens": 2**63},
}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_poison_rows_go_to_dead_letter_and_never_block(tmp_path: Path, backend: str, request) -> None:
    url = f"sqlite:///{tmp_path}/ledger.db" if backend == "sqlite" else request.getfixturevalue("pg_url")
    open_store(url).close()
    cfg = _config(tmp_path, url)
    w = LedgerWriter(url, cfg)
    await w.start()
    good = [make_row(i) for i in range(120)]
    poison = [make_row(1000 + i, **kw) for i, kw in enumerate(POISON.values())]
    for i, row in enumerate(good):
        w.submit(row)
        if i % 40 == 7:
            w.submit(poison[i // 40])
    assert await w.flush(30)
    await w.close()
    stored = {r["request_id"] for r in ledger_rows(url)}
    assert {r.request_id for r in good} <= stored
    dead_dir = tmp_path / "spool" / "dead-letter"
    [dead_file] = dead_dir.glob("*.jsonl")
    dead = [json.loads(x) for x in dead_file.read_text().splitlines()]
    dead_ids = {d["row"]["request_id"] for d in dead}
    # SQLite stores a NUL in text; PostgreSQL refuses it. Every poison row is in exactly one place.
    refused = {"req-00001000", "req-00001002"} | ({"req-00001001"} if backend == "postgresql" else set())
    assert dead_ids == refused and not (dead_ids & stored)
    assert {r.request_id for r in poison} <= stored | dead_ids
    assert w.stats().rows_rejected == len(refused) and w.stats().journal_rows == 0
    assert stat.S_IMODE(dead_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(dead_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
    # the journal is clean: a restart replays nothing and dead-letters nothing again
    w2 = LedgerWriter(url, cfg)
    await w2.start()
    assert await w2.flush()
    await w2.close()
    assert (w2.stats().rows_written, w2.stats().rows_rejected) == (0, 0)
    assert not list((tmp_path / "spool").glob("journal-*.jsonl"))


async def test_journal_files_are_private(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ledger.db"
    old = os.umask(0o022)
    try:
        w = LedgerWriter(url, _config(tmp_path, url))
        await w.start()
        w.submit(make_row(1))
        files = list((tmp_path / "spool").glob("journal-*"))
        assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
        await w.close()
    finally:
        os.umask(old)


async def test_begin_records_are_replayed_only_for_a_dead_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ledger.db"
    open_store(url).close()
    cfg = _config(tmp_path, url)
    w1 = LedgerWriter(url, cfg)
    await w1.start()
    cut_short = make_row(1, error=CRASH_REASON, estimated=True)  # a stream still running
    finished = make_row(2)
    w1.begin(cut_short)
    w1.begin(make_row(2, error=CRASH_REASON))
    w1.submit(finished)  # its begin record is superseded
    assert await w1.flush()
    # A replica sharing the directory while w1 runs: w1's journal is locked, nothing of it replays.
    w2 = LedgerWriter(url, cfg)
    await w2.start()
    await asyncio.sleep(0.3)
    assert await w2.flush()
    await w2.close()
    assert {r["request_id"] for r in ledger_rows(url)} == {"req-00000002"}
    # w1 "crashes": a copy of its journal, with its lock free, as a dead process leaves it.
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for f in (tmp_path / "spool").glob("journal-*"):
        (crashed / f.name).write_bytes(f.read_bytes())
    w3 = LedgerWriter(url, replace(cfg, spool_dir=str(crashed)))
    await w3.start()
    assert await w3.flush()
    await w3.close()
    await w1.close()
    rows = {r["request_id"]: r for r in ledger_rows(url)}
    assert sorted(rows) == ["req-00000001", "req-00000002"]
    assert rows["req-00000001"]["error"] == CRASH_REASON and rows["req-00000001"]["estimated"]
    assert (
        rows["req-00000002"]["error"] == "" and rows["req-00000002"]["total_tokens"] == finished.total_tokens
    )
    assert (w3.stats().rows_written, w3.stats().rows_duplicate) == (1, 1)
    assert not list(crashed.glob("journal-*"))


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a disk that fills up (needs the right to mount, e.g. root)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_full_journal_disk_keeps_rows_in_memory_until_the_database_takes_them(
    tmp_path: Path, tiny_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from exporter.ledger import journal

    monkeypatch.setattr(journal, "SEGMENT_BYTES", 64 * 1024)
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}?busy_timeout_ms=20"
    open_store(url).close()
    cfg = replace(_config(tmp_path, url), spool_dir=str(tiny_disk / "spool"), max_queue_rows=100_000)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # the database refuses writes meanwhile
    w = LedgerWriter(url, cfg)
    await w.start()
    try:
        rows = [make_row(i) for i in range(2000)]  # ~900 KB of journal: far more than the disk
        for r in rows:
            w.submit(r)
        s = w.stats()
        assert s.rows_unjournaled > 0 and s.journal_rows + s.rows_unjournaled == 2000
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert await w.flush(30)
    await w.close()
    s = w.stats()
    assert (s.rows_written, s.rows_unjournaled, s.rows_lost) == (2000, 0, 0)
    assert {r["request_id"] for r in ledger_rows(url)} == {r.request_id for r in rows}


def test_every_postgres_call_is_bounded_even_when_the_server_is_frozen(private_pg, pg_url) -> None:
    from exporter.ledger.pg_store import PostgresStore

    store = PostgresStore(pg_url, statement_timeout=0.2)
    try:
        assert store._exec_read("SHOW statement_timeout", ()) == [("200ms",)]
        assert store._exec_read("SHOW lock_timeout", ()) == [("200ms",)]
        private_pg.freeze()  # the server accepts TCP and never answers: no server-side timeout fires
        outcome: list[BaseException | object] = []

        def refresh() -> None:  # what the proxy's key refresh does
            try:
                outcome.append(store.load_active_keys())
            except BaseException as exc:
                outcome.append(exc)

        t = threading.Thread(target=refresh, daemon=True)
        t.start()
        t.join(60)  # a guard against a hang, not a timing assertion: the watchdog ends it first
        assert not t.is_alive(), "the key refresh hung on a frozen database"
        assert isinstance(outcome[0], psycopg.OperationalError)
        assert not store._lock.locked()  # the store's lock is free again for the ledger and others
    finally:
        private_pg.thaw()
        store.close()
