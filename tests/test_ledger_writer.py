"""LedgerWriter against real databases: batching, outages (a real SQLite write lock, a real
PostgreSQL database refusing connections), the bounded queue spilling to the journal, journal replay
after a restart (including a replay repeated after a crash), close() flushing, bad rows kept aside,
old spool files replayed."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import threading
from dataclasses import replace

import pytest
from support.ledger import (
    async_wait_for,
    block_pg_database,
    make_row,
    unblock_pg_database,
)

from exporter.config import LedgerConfig
from exporter.ledger.journal import journal_lines
from exporter.ledger.store import open_store
from exporter.ledger.writer import LedgerWriter


def config(tmp_path, url, **kw):
    base = LedgerConfig(
        url=url,
        batch_size=50,
        flush_interval_seconds=0.02,
        max_queue_rows=100,
        spool_dir=str(tmp_path / "spool"),
        retry_seconds=0.1,
    )
    return replace(base, **kw)


SPOOL_GLOB = "ledger-spool-*.jsonl"  # spool files of versions before the journal


def spool_lines(tmp_path):
    """Rows (not begin records) in the journal and old spool files."""
    files = [*(tmp_path / "spool").glob("journal-*.jsonl"), *(tmp_path / "spool").glob(SPOOL_GLOB)]
    n = 0
    for p in files:
        with open(p, "rb") as f:
            n += sum(1 for _, line in journal_lines(f) if line.strip() and not line.startswith(b"[1,"))
    return n


def count(url):
    s = open_store(url)
    try:
        return s.count_rows()
    finally:
        s.close()


def token_total(url):
    s = open_store(url)
    try:
        return int(s.query("SELECT SUM(total_tokens) FROM public.http_analytics")[1][0][0] or 0)
    finally:
        s.close()


@pytest.fixture
def sqlite_url(tmp_path):
    url = f"sqlite:///{tmp_path}/ledger.db?busy_timeout_ms=50"
    open_store(url).close()
    return url


class RecordingStore:
    """The real store, with each insert_rows batch size recorded (and an optional gate to hang on)."""

    def __init__(self, url, sizes, gate=None):
        self._s = open_store(url)
        self.sizes = sizes
        self.gate = gate

    def insert_rows(self, rows):
        self.sizes.append(len(rows))
        if self.gate is not None:
            self.gate.wait()
        return self._s.insert_rows(rows)

    def __getattr__(self, name):
        return getattr(self._s, name)


async def test_rows_are_written_in_batches(tmp_path, sqlite_url):
    sizes: list[int] = []
    w = LedgerWriter(
        sqlite_url,
        config(tmp_path, sqlite_url, batch_size=100, max_queue_rows=10_000),
        store_factory=lambda u: RecordingStore(u, sizes),
    )
    await w.start()
    rows = [make_row(i) for i in range(1050)]
    for r in rows:
        w.submit(r)
    assert await w.flush()
    await w.close()
    assert sum(sizes) == 1050 and max(sizes) <= 100 and len(sizes) >= 11
    s = w.stats()
    assert (s.rows_written, s.rows_submitted, s.write_errors, s.queue_rows, s.spooled_rows) == (
        1050,
        1050,
        0,
        0,
        0,
    )
    assert count(sqlite_url) == 1050
    assert token_total(sqlite_url) == sum(r.total_tokens for r in rows)


async def test_close_flushes_everything(tmp_path, sqlite_url):
    w = LedgerWriter(
        sqlite_url,
        config(tmp_path, sqlite_url, batch_size=10_000, flush_interval_seconds=60, max_queue_rows=10_000),
    )
    await w.start()
    for i in range(123):
        w.submit(make_row(i))
    await w.close()
    assert count(sqlite_url) == 123
    assert w.stats().spooled_rows == 0 and spool_lines(tmp_path) == 0


async def test_sqlite_outage_queue_overflow_spools_then_recovers(tmp_path, sqlite_url):
    cfg = config(tmp_path, sqlite_url)
    w = LedgerWriter(sqlite_url, cfg)
    await w.start()
    for i in range(40):
        w.submit(make_row(i))
    assert await w.flush()
    # Outage: another process holds the write lock (what a stuck writer or a long VACUUM does).
    path = sqlite_url[len("sqlite:///") :].split("?")[0]
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        for i in range(40, 1040):
            w.submit(make_row(i))
        await async_wait_for(lambda: w.stats().write_errors >= 1, what="a failed write")
        # Every row is journaled when submit() returns; memory stays bounded (queue ≤ max_queue_rows
        # + the batch being retried) and the rest is on disk only.
        s = w.stats()
        assert s.journal_rows == 1000 and spool_lines(tmp_path) == 1040  # + the 40 written ones
        assert s.queue_rows + s.spooled_rows == 1000
        assert s.queue_rows <= cfg.max_queue_rows + cfg.batch_size + 1
        assert s.spooled_rows >= 1000 - cfg.max_queue_rows - cfg.batch_size - 1
        assert not s.database_up and s.rows_written == 40
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert await w.flush()
    await w.close()
    s = w.stats()
    assert (s.rows_written, s.queue_rows, s.spooled_rows, s.rows_duplicate) == (1040, 0, 0, 0)
    assert count(sqlite_url) == 1040
    assert token_total(sqlite_url) == sum(make_row(i).total_tokens for i in range(1040))
    assert spool_lines(tmp_path) == 0


async def test_postgres_outage_and_recovery(tmp_path, pg_url):
    cfg = config(tmp_path, pg_url, max_queue_rows=200)
    w = LedgerWriter(pg_url, cfg)
    await w.start()
    for i in range(100):
        w.submit(make_row(i))
    assert await w.flush()
    block_pg_database(pg_url)
    try:
        for i in range(100, 700):
            w.submit(make_row(i))
        await async_wait_for(lambda: w.stats().write_errors >= 1, what="a failed write")
        s = w.stats()  # every row is journaled on submit; beyond the queue's bound, on disk only
        assert s.journal_rows == 600
        assert s.spooled_rows >= 600 - cfg.max_queue_rows - cfg.batch_size - 1
        assert w.stats().rows_written == 100 and not w.stats().database_up
    finally:
        unblock_pg_database(pg_url)
    assert await w.flush(30)
    await w.close()
    s = w.stats()
    assert (s.rows_written, s.queue_rows, s.spooled_rows) == (700, 0, 0)
    assert count(pg_url) == 700
    assert token_total(pg_url) == sum(make_row(i).total_tokens for i in range(700))


async def test_postgres_down_at_start(tmp_path, pg_url):
    open_store(pg_url).close()
    block_pg_database(pg_url)
    try:
        w = LedgerWriter(pg_url, config(tmp_path, pg_url))
        await w.start()
        for i in range(30):
            w.submit(make_row(i))
        await async_wait_for(lambda: w.stats().write_errors >= 2, what="retries")
    finally:
        unblock_pg_database(pg_url)
    assert await w.flush(30)
    await w.close()
    assert count(pg_url) == 30


async def test_restart_replays_spool_exactly_once(tmp_path, sqlite_url):
    path = sqlite_url[len("sqlite:///") :].split("?")[0]
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        w1 = LedgerWriter(sqlite_url, config(tmp_path, sqlite_url))
        await w1.start()
        for i in range(500):
            w1.submit(make_row(i))
        await w1.close(timeout=5)  # database still locked: everything stays in the journal
        assert w1.stats().rows_written == 0 and w1.stats().journal_rows == 500
        assert spool_lines(tmp_path) == 500
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    # Keep a copy, as if the process had crashed after inserting but before deleting the file.
    saved = tmp_path / "saved"
    shutil.copytree(tmp_path / "spool", saved)

    w2 = LedgerWriter(sqlite_url, config(tmp_path, sqlite_url))
    await w2.start()
    assert w2.stats().spooled_rows == 500
    assert await w2.flush()
    await w2.close()
    assert count(sqlite_url) == 500 and w2.stats().rows_written == 500 and spool_lines(tmp_path) == 0

    for f in saved.glob("journal-*"):
        shutil.copy(f, tmp_path / "spool" / f.name)
    w3 = LedgerWriter(sqlite_url, config(tmp_path, sqlite_url))
    await w3.start()
    assert await w3.flush()
    await w3.close()
    assert count(sqlite_url) == 500  # the second replay added nothing
    assert (w3.stats().rows_written, w3.stats().rows_duplicate) == (0, 500)
    assert token_total(sqlite_url) == sum(make_row(i).total_tokens for i in range(500))


async def test_close_with_a_hung_database_spools_the_batch_in_flight(tmp_path, sqlite_url):
    gate = threading.Event()
    sizes: list[int] = []
    w = LedgerWriter(
        sqlite_url,
        config(tmp_path, sqlite_url, max_queue_rows=10_000),
        store_factory=lambda u: RecordingStore(u, sizes, gate),
    )
    await w.start()
    for i in range(120):
        w.submit(make_row(i))
    await async_wait_for(lambda: len(sizes) == 1, what="the first write to hang")
    await w.close(timeout=0.3)
    assert spool_lines(tmp_path) == 120  # queue + the hung batch
    gate.set()  # the hung write completes after all
    await asyncio.sleep(0.2)
    w2 = LedgerWriter(sqlite_url, config(tmp_path, sqlite_url))
    await w2.start()
    assert await w2.flush()
    await w2.close()
    assert count(sqlite_url) == 120


async def test_bad_row_is_kept_aside_and_the_rest_written(tmp_path, sqlite_url):
    w = LedgerWriter(sqlite_url, config(tmp_path, sqlite_url))
    await w.start()
    for i in range(10):
        w.submit(make_row(i, timestamp="not a time") if i == 4 else make_row(i))
    assert await w.flush()
    await w.close()
    assert count(sqlite_url) == 9
    assert w.stats().rows_rejected == 1
    [rejected] = (tmp_path / "spool" / "dead-letter").glob("*.jsonl")
    [entry] = [json.loads(x) for x in rejected.read_text().splitlines()]
    assert entry["row"]["request_id"] == "req-00000004" and "not ISO 8601" in entry["reason"]


async def test_torn_spool_line_is_rejected_not_dropped(tmp_path, sqlite_url):
    spool = tmp_path / "spool"
    spool.mkdir()
    good = [json.dumps(make_row(i).as_dict()) for i in range(3)]
    (spool / "ledger-spool-20240101T000000-1-0001.jsonl").write_text(
        "\n".join(good) + '\n{"request_id": "req-0'
    )
    w = LedgerWriter(sqlite_url, config(tmp_path, sqlite_url))
    await w.start()
    assert await w.flush()
    await w.close()
    assert count(sqlite_url) == 3 and w.stats().rows_rejected == 1
    assert not list(spool.glob(SPOOL_GLOB))
    assert '{\\"request_id\\": \\"req-0' in next((spool / "dead-letter").glob("*.jsonl")).read_text()


async def test_row_submitted_after_close_is_spooled_not_lost(tmp_path, sqlite_url):
    w = LedgerWriter(sqlite_url, config(tmp_path, sqlite_url))
    await w.start()
    await w.close()
    w.submit(make_row(7))
    assert spool_lines(tmp_path) == 1
    w2 = LedgerWriter(sqlite_url, config(tmp_path, sqlite_url))
    await w2.start()
    assert await w2.flush()
    await w2.close()
    assert count(sqlite_url) == 1


async def test_two_replicas_share_one_postgres_ledger(tmp_path, pg_url):
    a = LedgerWriter(pg_url, config(tmp_path / "a", pg_url, max_queue_rows=10_000))
    b = LedgerWriter(pg_url, config(tmp_path / "b", pg_url, max_queue_rows=10_000))
    await asyncio.gather(a.start(), b.start())
    rows = [make_row(i) for i in range(2000)]
    for i, r in enumerate(rows):
        (a if i % 2 else b).submit(r)
    for r in rows[:300]:  # a client retry through the other replica with the same request id
        a.submit(r)
    assert await a.flush() and await b.flush()
    await asyncio.gather(a.close(), b.close())
    assert count(pg_url) == 2000
    assert a.stats().rows_written + b.stats().rows_written == 2000
    assert token_total(pg_url) == sum(r.total_tokens for r in rows)


async def test_spool_file_held_by_another_process_is_left_alone(tmp_path, sqlite_url):
    import fcntl

    spool = tmp_path / "spool"
    spool.mkdir()
    f = spool / "ledger-spool-20240101T000000-99999-0001.jsonl"
    f.write_text("".join(json.dumps(make_row(i).as_dict()) + "\n" for i in range(5)))
    holder = open(f, "ab")  # noqa: SIM115, ASYNC230 - another replica still appending to its spool file
    fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
    w = LedgerWriter(sqlite_url, config(tmp_path, sqlite_url))
    await w.start()
    try:
        await asyncio.sleep(0.5)  # several replay rounds (retry_seconds 0.1)
        assert count(sqlite_url) == 0 and f.exists()
        assert w.stats().journal_rows == 0  # another process's rows are not this one's backlog
    finally:
        holder.close()  # that replica closed the file
    await async_wait_for(lambda: count(sqlite_url) == 5, what="the replay")
    assert await w.flush()
    await w.close()
    assert count(sqlite_url) == 5 and not f.exists()
