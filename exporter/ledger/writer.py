"""The asynchronous ledger writer: rows in, batches out, nothing lost.

``submit`` only appends to an in-memory queue (a few hundred nanoseconds, never blocks on I/O, never
raises), so the ledger is never on a request's critical path. A worker thread writes batches of
``batch_size`` rows (or whatever arrived within ``flush_interval_seconds``) in one transaction.

When the database fails, the batch goes back to the head of the queue and the worker retries every
``retry_seconds``. The queue is bounded by ``max_queue_rows``: a second thread moves the excess to
the on-disk spool (JSON lines, fsync'ed), so memory stays bounded however long the outage lasts.
Once writes succeed again, spool files are replayed. ``close`` flushes what it can and spools the
rest; ``start`` replays spool files left by an earlier run. Inserts skip request_ids already in the
ledger, so a row that is both written and spooled (a crash in between, a replay interrupted halfway)
is counted once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from exporter.config import LedgerConfig
from exporter.ledger.row import LedgerRow
from exporter.ledger.spool import Spool
from exporter.ledger.store import LedgerStore, RowError, open_store, redact_url

log = logging.getLogger(__name__)

_ERROR_LOG_INTERVAL = 60.0  # while the database stays down, repeat the error log at most this often


@dataclass
class LedgerStats:
    rows_written: int  # rows inserted into the database (counter)
    write_errors: int  # failed write attempts (counter)
    queue_rows: int  # rows waiting in memory, including the batch being written (gauge)
    spooled_rows: int  # rows waiting in the on-disk spool (gauge)
    rows_submitted: int = 0  # rows handed to submit() (counter)
    rows_spooled_total: int = 0  # rows ever moved to the spool by this process (counter)
    rows_duplicate: int = 0  # rows skipped because their request_id was already written (replays)
    rows_rejected: int = 0  # rows that can never be inserted, kept in <spool_dir>/rejected/ (counter)
    database_up: bool = False  # the last write attempt succeeded


class LedgerWriter:
    def __init__(
        self,
        url: str,
        cfg: LedgerConfig,
        store_factory: Callable[[str], LedgerStore] = open_store,
    ) -> None:
        self.url = url
        self.cfg = cfg
        self._store_factory = store_factory
        self._store: LedgerStore | None = None
        self._spool = Spool(cfg.spool_dir)
        self._queue: deque[LedgerRow] = deque()
        self._cond = threading.Condition()
        self._inflight: list[LedgerRow] = []  # the batch being written right now
        self._spooling = 0  # rows taken off the queue by the spooler, not yet on disk
        self._next_replay = 0.0  # monotonic time of the next spool replay attempt
        self._closing = False
        self._closed = False  # close() finished: later rows go straight to the spool
        self._abandoned = False  # close() timed out and spooled the queue itself
        self._worker: threading.Thread | None = None
        self._spooler: threading.Thread | None = None
        self._spool_counts: dict[Path, int] = {}
        self._replaying: tuple[Path, int] | None = None  # (file, rows of it already inserted)
        # counters
        self._submitted = 0
        self._written = 0
        self._errors = 0
        self._spooled_total = 0
        self._duplicates = 0
        self._db_up = False
        self._last_error_log = 0.0
        self._last_error: str | None = None

    # ------------------------------------------------------------------ public API

    async def start(self) -> None:
        """Start the worker threads; spool files left by a previous run are replayed in the background."""
        await asyncio.to_thread(self._prepare_spool)
        self._worker = threading.Thread(target=self._run_worker, name="ledger-writer", daemon=True)
        self._spooler = threading.Thread(target=self._run_spooler, name="ledger-spooler", daemon=True)
        self._worker.start()
        self._spooler.start()

    def _prepare_spool(self) -> None:
        try:
            self._spool.prepare()
        except OSError as exc:
            log.error("ledger spool directory %s is not usable: %s", self.cfg.spool_dir, exc)
            return
        counts = self._spool.count_rows()
        with self._cond:
            self._spool_counts.update(counts)
        if counts:
            log.info(
                "ledger: %d rows in %d spool files from an earlier run will be replayed",
                sum(counts.values()),
                len(counts),
            )

    def submit(self, row: LedgerRow) -> None:
        """Queue one row. Never blocks on I/O and never raises."""
        if self._closed:
            self._late_submit(row)
            return
        try:
            with self._cond:
                self._queue.append(row)
                self._submitted += 1
                n = len(self._queue)
                if n >= self.cfg.batch_size or n > self.cfg.max_queue_rows:
                    self._cond.notify_all()
        except Exception:  # pragma: no cover - defensive: recording must never break a request
            log.exception("ledger: could not queue row %r", getattr(row, "request_id", "?"))

    def _late_submit(self, row: LedgerRow) -> None:
        """A row after close(): nobody will write it any more, so spool it right away (rare; blocks briefly)."""
        log.warning("ledger: row %s submitted after close; writing it to the spool", row.request_id)
        with self._cond:
            self._submitted += 1
        if not self._spool_rows([row]):
            log.critical("ledger: row %s could not be spooled after close: %r", row.request_id, row.as_dict())
        self._spool.close()

    def stats(self) -> LedgerStats:
        with self._cond:
            spooled = sum(self._spool_counts.values())
            if self._replaying is not None:
                spooled -= self._replaying[1]
            return LedgerStats(
                rows_written=self._written,
                write_errors=self._errors,
                queue_rows=len(self._queue) + len(self._inflight) + self._spooling,
                spooled_rows=max(spooled, 0),
                rows_submitted=self._submitted,
                rows_spooled_total=self._spooled_total,
                rows_duplicate=self._duplicates,
                rows_rejected=self._spool.rejected_rows,
                database_up=self._db_up,
            )

    async def flush(self, timeout: float = 10.0) -> bool:  # noqa: ASYNC109 - deadline, not cancellation
        """Wait until the queue and the spool are empty (everything is in the database)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.stats()
            if s.queue_rows == 0 and s.spooled_rows == 0:
                return True
            with self._cond:
                self._cond.notify_all()
            await asyncio.sleep(0.02)
        return False

    async def close(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - the interface the proxy calls
        """Write what can be written within ``timeout``; spool the rest. Nothing is lost."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._worker is not None:
            await asyncio.to_thread(self._worker.join, timeout)
            if self._worker.is_alive():
                # Stuck in a database call: spool everything still queued, including the batch in
                # flight (if that write completes after all, the replay skips the duplicates).
                log.error(
                    "ledger: database did not answer within %.1fs at shutdown; spooling the queue", timeout
                )
                await asyncio.to_thread(self._abandon)
        if self._spooler is not None:
            await asyncio.to_thread(self._spooler.join, 5.0)
        if self._worker is None:  # never started: spool whatever was submitted
            await asyncio.to_thread(self._abandon)
        self._closed = True
        self._spool.close()
        s = self.stats()
        log.info(
            "ledger writer closed: %d rows written, %d rows waiting in the spool",
            s.rows_written,
            s.spooled_rows,
        )

    # ------------------------------------------------------------------ worker thread

    def _run_worker(self) -> None:
        try:
            self._work()
        except Exception:  # pragma: no cover - a bug here must not lose rows silently
            log.exception("ledger writer thread failed; spooling the queue")
            self._spool_everything(include_inflight=True)
        finally:
            store, self._store = self._store, None
            if store is not None:
                with contextlib.suppress(Exception):
                    store.close()

    def _work(self) -> None:
        cfg = self.cfg
        while True:
            with self._cond:
                if not self._closing:
                    deadline = time.monotonic() + cfg.flush_interval_seconds
                    while not self._closing and len(self._queue) < cfg.batch_size:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                if self._abandoned:
                    return
                batch = [self._queue.popleft() for _ in range(min(cfg.batch_size, len(self._queue)))]
                self._inflight = batch
                closing = self._closing
            if batch:
                ok = self._write(batch)
                with self._cond:
                    self._inflight = []
                    if self._abandoned:
                        return
                    if not ok:
                        self._queue.extendleft(reversed(batch))
                        self._cond.notify_all()  # the spooler re-checks the bound
                if not ok:
                    if closing:
                        self._spool_everything()
                        return
                    self._sleep(cfg.retry_seconds)
                    continue
            elif closing:
                return
            # The queue is short: catch up on the spool (after a failure, not before retry_seconds).
            if (
                self._spool_counts
                and not closing
                and len(self._queue) < cfg.batch_size
                and time.monotonic() >= self._next_replay
                and not self._replay_spool()
            ):
                self._next_replay = time.monotonic() + cfg.retry_seconds

    def _sleep(self, seconds: float) -> None:
        with self._cond:
            if not self._closing:
                self._cond.wait(seconds)

    def _open(self) -> LedgerStore:
        if self._store is None:
            self._store = self._store_factory(self.url)
        return self._store

    def _write(self, batch: list[LedgerRow]) -> bool:
        """Insert one batch; True when every row is in the database (or rejected for good)."""
        try:
            added = self._open().insert_rows(batch)
        except RowError:
            return self._write_one_by_one(batch)
        except Exception as exc:
            self._failed(exc)
            return False
        self._succeeded(len(batch), added)
        return True

    def _write_one_by_one(self, batch: list[LedgerRow]) -> bool:
        """A batch holds a row that can never be written: insert the others, keep that one aside."""
        for row in batch:
            try:
                added = self._open().insert_rows([row])
            except RowError as exc:
                self._spool.reject(json.dumps(row.as_dict(), default=str), str(exc))
                continue
            except Exception as exc:
                self._failed(exc)
                return False  # the rows already written are skipped as duplicates on retry
            self._succeeded(1, added)
        return True

    def _succeeded(self, rows: int, added: int) -> None:
        with self._cond:
            self._written += added
            self._duplicates += rows - added
            was_up, self._db_up = self._db_up, True
        if not was_up and self._last_error is not None:
            log.info("ledger database %s is writable again", redact_url(self.url))
            self._last_error = None

    def _failed(self, exc: Exception) -> None:
        with self._cond:
            self._errors += 1
            self._db_up = False
            queued = len(self._queue) + len(self._inflight)
        msg = f"{type(exc).__name__}: {exc}".strip()
        now = time.monotonic()
        if msg != self._last_error or now - self._last_error_log > _ERROR_LOG_INTERVAL:
            log.error(
                "ledger write to %s failed (%d rows waiting, retrying every %.1fs): %s",
                redact_url(self.url),
                queued,
                self.cfg.retry_seconds,
                msg,
            )
            self._last_error_log = now
        self._last_error = msg
        store, self._store = self._store, None  # reconnect on the next attempt
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()

    def _replay_spool(self) -> bool:
        """Replay closed spool files; False when a database write failed."""
        self._spool.rotate()  # rows spooled from now on go to a new file
        for path in self._spool.files():
            with self._cond:
                if self._closing:
                    return True
                if path not in self._spool_counts:
                    self._spool_counts[path] = 0  # a file that appeared after start (another replica's)
            with self._spool.claim(path) as batches:
                if batches is None:
                    continue
                done = 0
                with self._cond:
                    self._replaying = (path, 0)
                try:
                    for batch in batches:
                        if self._closing:
                            return True  # the file stays; the next start replays it (duplicates skipped)
                        if not self._write(batch):
                            return False
                        done += len(batch)
                        with self._cond:
                            self._replaying = (path, done)
                    self._spool.remove(path)
                    with self._cond:
                        self._spool_counts.pop(path, None)
                    log.info("ledger: replayed %d spooled rows from %s", done, path.name)
                finally:
                    with self._cond:
                        self._replaying = None
        with self._cond:  # files listed at start but gone now (replayed by another replica)
            for gone in [p for p in self._spool_counts if not p.exists()]:
                del self._spool_counts[gone]
        return True

    # ------------------------------------------------------------------ spooling

    def _run_spooler(self) -> None:
        """Move rows beyond max_queue_rows from memory to the spool as soon as they arrive."""
        limit = self.cfg.max_queue_rows
        while True:
            with self._cond:
                while not self._closing and len(self._queue) <= limit:
                    self._cond.wait(1.0)
                if self._closing:
                    return
                excess = len(self._queue) - limit
                # Take the newest rows: the worker keeps writing from the head of the queue.
                rows = [self._queue.pop() for _ in range(excess)]
                rows.reverse()
                self._spooling = len(rows)
            ok = self._spool_rows(rows)
            with self._cond:
                self._spooling = 0
                if not ok:  # disk refused too: keep the rows in memory rather than lose them
                    self._queue.extend(rows)
            if not ok:
                time.sleep(self.cfg.retry_seconds)

    def _spool_rows(self, rows: list[LedgerRow]) -> bool:
        try:
            self._spool.append(rows)
        except OSError as exc:
            with self._cond:
                self._errors += 1
            log.error(
                "ledger: cannot write %d rows to the spool in %s: %s", len(rows), self.cfg.spool_dir, exc
            )
            return False
        with self._cond:
            self._spooled_total += len(rows)
            current = self._spool._path
            if current is not None:
                self._spool_counts[current] = self._spool_counts.get(current, 0) + len(rows)
        return True

    def _spool_everything(self, include_inflight: bool = False) -> None:
        with self._cond:
            rows = (list(self._inflight) if include_inflight else []) + list(self._queue)
            self._queue.clear()
        if rows and not self._spool_rows(rows):
            log.critical("ledger: %d rows could neither be written nor spooled at shutdown", len(rows))
            with self._cond:
                self._queue.extend(rows)

    def _abandon(self) -> None:
        """close() gave up on the worker: spool the queue and the batch it is stuck on."""
        with self._cond:
            self._abandoned = True
            self._cond.notify_all()
        self._spool_everything(include_inflight=True)
