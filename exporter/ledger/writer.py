"""The asynchronous ledger writer: every row journaled on local disk first, then batched into the
database; nothing acknowledged is lost, and no row can hold up the others.

``submit`` appends the row to the write-ahead journal (a copy into a memory-mapped file, i.e. the
page cache: no system call; see ``journal.py``) and to an in-memory queue, then returns; it never waits for the
database and never raises. From that moment the row survives a crash of the process; a
group-commit thread fsyncs the journal every ``journal_fsync_seconds`` against power loss. A worker
thread writes batches of ``batch_size`` rows (or whatever arrived within ``flush_interval_seconds``)
in one transaction, and deletes journal segments whose rows are all committed.

Failures are classified (``store.is_transient``). A transient one (database down, locked, timed
out) puts the batch back and retries every ``retry_seconds``, for as long as the outage lasts. A
permanent one splits the batch in halves until the refused row is alone; that row goes to the
dead-letter file and the rest are written. While the database is down, the memory queue is bounded
by ``max_queue_rows``: later rows are only journaled (a new segment), and are read back from disk
when the database is back. Journals left by an earlier run (a crash, a stop during an outage) and
spool files of older versions are replayed at start; request ids make every replay idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from exporter.ledger.deadletter import DeadLetters
from exporter.ledger.journal import (
    Journal,
    Orphan,
    claim,
    count_lines,
    decode_line,
    encode_row,
    find_orphans,
    journal_lines,
)
from exporter.ledger.row import LedgerRow
from exporter.ledger.settings import LedgerConfig
from exporter.ledger.store import LedgerStore, is_transient, open_store, redact_url
from exporter.logs import get_logger

log = get_logger(__name__)

_ERROR_LOG_INTERVAL = 60.0  # while the database stays down, repeat the error log at most this often
_ROTATE_BYTES = 4 * 1024 * 1024  # a fully committed current segment larger than this is replaced
_Item = tuple[int, LedgerRow]  # (journal segment number, 0 when not journaled; row)


@dataclass
class LedgerStats:
    rows_written: int  # rows inserted into the database (counter)
    write_errors: int  # failed write attempts (counter)
    queue_rows: int  # rows waiting in memory, including the batch being written (gauge)
    spooled_rows: (
        int  # rows waiting on disk only: journaled while the queue was full, or by an earlier run (gauge)
    )
    rows_submitted: int = 0  # rows handed to submit() (counter)
    rows_spooled_total: int = 0  # rows ever journaled without a copy in memory (counter)
    rows_duplicate: int = 0  # rows skipped because their request_id was already written (replays)
    rows_rejected: int = 0  # rows the database refused for good, in the dead-letter file (counter)
    database_up: bool = False  # the last write attempt succeeded
    journal_rows: int = 0  # rows journaled but not yet committed to the database (gauge)
    journal_bytes: int = 0  # bytes of journal files not yet deleted (gauge)
    rows_unjournaled: int = 0  # rows held only in memory because the journal could not be written (gauge)
    rows_lost: int = 0  # rows that could be neither written nor journaled (counter; exit code 1)


def _free(orphan: Orphan) -> bool:
    """Nobody holds this journal: it is ours to replay (and to count in our backlog). A replica
    sharing the directory keeps its own journal locked while it runs."""
    with claim(orphan) as mine:
        return mine


@dataclass
class _Seg:
    pending: int = 0  # final rows in this segment not yet in the database
    begins: int = 0  # begin records of requests still running
    bytes: int = 0
    disk: bool = False  # its rows are not in memory: read back from the file


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
        self._journal: Journal | None = Journal(cfg.spool_dir, cfg.journal_fsync_seconds)
        self._dead = DeadLetters(cfg.spool_dir, self._journal.instance)
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._inflight: list[_Item] = []
        self._segs: dict[int, _Seg] = {}
        self._begun: dict[str, int] = {}  # request id -> segment of its begin record
        self._disk_mode = False
        self._orphans: dict[str, tuple[Orphan, int, int]] = {}  # key -> (orphan, rows, bytes)
        self._replaying: str | None = None
        self._next_replay = 0.0
        self._closing = False
        self._closed = False
        self._abandoned = False
        self._worker: threading.Thread | None = None
        # counters
        self._submitted = 0
        self._written = 0
        self._errors = 0
        self._spooled_total = 0
        self._duplicates = 0
        self._unjournaled = 0
        self._lost = 0
        self._db_up = False
        self._last_error_log = 0.0
        self._last_error: str | None = None
        self._last_journal_error = 0.0

    # ------------------------------------------------------------------ public API

    async def start(self) -> None:
        """Open the journal and start the worker; journals of earlier runs are replayed in the background."""
        await asyncio.to_thread(self._open_journal)
        self._worker = threading.Thread(target=self._run_worker, name="ledger-writer", daemon=True)
        self._worker.start()

    def _open_journal(self) -> None:
        assert self._journal is not None
        try:
            self._journal.open()
        except OSError as exc:
            log.critical(
                "ledger journal directory %s is not usable (%s): rows are kept in memory only until the "
                "database takes them; a crash would lose them",
                self.cfg.spool_dir,
                exc,
            )
            self._journal = None
            return
        with self._cond:
            self._segs[self._journal.current_seq] = _Seg()
        self._scan_orphans()

    def _scan_orphans(self) -> None:
        if self._journal is None:
            return
        found = find_orphans(Path(self.cfg.spool_dir), self._journal.instance)
        new = [o for o in found if o.key not in self._orphans and _free(o)]
        counted = {o.key: (o, *count_lines(o.files)) for o in new}
        with self._cond:
            self._orphans.update(counted)
        rows = sum(r for _, r, _ in counted.values())
        if rows:
            log.info("ledger: %d rows journaled by earlier runs will be replayed", rows)

    def submit(self, row: LedgerRow) -> None:
        """Journal and queue one row. Never waits for the database and never raises."""
        try:
            if self._closed:
                self._late_submit(row)
                return
            line = encode_row(row)
            with self._cond:
                self._submitted += 1
                seq = self._append(line, final=True)
                bseq = self._begun.pop(row.request_id, None)
                if bseq is not None and bseq in self._segs:
                    self._segs[bseq].begins -= 1
                if seq and self._segs[seq].disk:
                    self._spooled_total += 1
                    return
                self._queue.append((seq, row))
                if not seq:
                    self._unjournaled += 1
                n = len(self._queue)
                if n > self.cfg.max_queue_rows and seq and not self._disk_mode:
                    self._enter_disk_mode()
                if n >= self.cfg.batch_size:
                    self._cond.notify_all()
        except Exception:  # pragma: no cover - defensive: recording must never break a request
            log.exception("ledger: could not queue row %r", getattr(row, "request_id", "?"))

    def begin(self, row: LedgerRow) -> None:
        """Journal a request whose response has started (see journal.py); its ``submit`` closes it."""
        if self._closed or self._journal is None:
            return
        try:
            line = encode_row(row, begin=True)
            with self._cond:
                seq = self._append(line, final=False)
                if seq:
                    self._segs[seq].begins += 1
                    old = self._begun.get(row.request_id)
                    if old is not None and old in self._segs:  # begun twice: the newer record counts
                        self._segs[old].begins -= 1
                    self._begun[row.request_id] = seq
        except Exception:  # pragma: no cover - defensive
            log.exception("ledger: could not journal the start of %r", getattr(row, "request_id", "?"))

    def _append(self, line: bytes, final: bool) -> int:
        """Write one journal line (caller holds the lock); the segment number, 0 when the disk refused."""
        j = self._journal
        if j is None:
            return 0
        try:
            seq = j.append(line)
        except OSError as exc:
            self._errors += 1
            now = time.monotonic()
            if now - self._last_journal_error > _ERROR_LOG_INTERVAL:
                self._last_journal_error = now
                log.critical("ledger: cannot write the journal in %s: %s", self.cfg.spool_dir, exc)
            return 0
        seg = self._segs.get(seq)
        if seg is None:
            seg = self._segs[seq] = _Seg(disk=self._disk_mode)
        seg.bytes += len(line)
        if final:
            seg.pending += 1
        return seq

    def _enter_disk_mode(self) -> None:
        """The queue is full: later rows go to a segment of their own, read back from disk later."""
        if self._set_disk_mode(True):
            log.warning(
                "ledger: %d rows waiting for the database; further rows are kept in the journal only",
                len(self._queue),
            )

    def _set_disk_mode(self, disk: bool) -> bool:
        """Start a new journal segment whose rows are (disk) or are not kept in the journal only;
        False, and the mode unchanged, when the journal cannot rotate."""
        assert self._journal is not None
        try:
            seq = self._journal.rotate()
        except OSError:
            return False
        self._disk_mode = disk
        self._segs.setdefault(seq, _Seg()).disk = disk
        return True

    def _late_submit(self, row: LedgerRow) -> None:
        """A row after close(): nobody will write it any more, so journal it for the next start."""
        log.warning("ledger: row %s submitted after close; journaling it for the next start", row.request_id)
        with self._cond:
            self._submitted += 1
        j = Journal(self.cfg.spool_dir, self.cfg.journal_fsync_seconds)
        try:
            j.open()
            j.append(encode_row(row))
            j.sync()
        except OSError as exc:
            with self._cond:
                self._lost += 1
            log.critical("ledger: row %s could be neither written nor journaled: %s", row.request_id, exc)
        finally:
            j.close(remove_lock=False)

    def stats(self) -> LedgerStats:
        with self._cond:
            on_disk = sum(s.pending for s in self._segs.values() if s.disk)
            orphan_rows = sum(r for _, r, _ in self._orphans.values())
            orphan_bytes = sum(b for _, _, b in self._orphans.values())
            return LedgerStats(
                rows_written=self._written,
                write_errors=self._errors,
                queue_rows=len(self._queue) + len(self._inflight),
                spooled_rows=on_disk + orphan_rows,
                rows_submitted=self._submitted,
                rows_spooled_total=self._spooled_total,
                rows_duplicate=self._duplicates,
                rows_rejected=self._dead.rows,
                database_up=self._db_up,
                journal_rows=sum(s.pending for s in self._segs.values()) + orphan_rows,
                journal_bytes=sum(s.bytes for s in self._segs.values()) + orphan_bytes,
                rows_unjournaled=self._unjournaled,
                rows_lost=self._lost,
            )

    async def flush(self, timeout: float = 10.0) -> bool:  # noqa: ASYNC109 - deadline, not cancellation
        """Wait until every row is in the database (memory queue, journal and old journals empty)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.stats()
            if s.queue_rows == 0 and s.journal_rows == 0:
                return True
            with self._cond:
                self._next_replay = 0.0
                self._cond.notify_all()
            await asyncio.sleep(0.02)
        return False

    async def close(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - the interface the proxy calls
        """Write what the database takes within ``timeout``; the rest stays journaled for the next
        start. Returns within ``timeout`` plus the journal's fsync, whatever the database does."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._worker is not None:
            await asyncio.to_thread(self._worker.join, timeout)
            if self._worker.is_alive():
                log.error(
                    "ledger: database did not answer within %.1fs at shutdown; the unwritten rows stay in "
                    "the journal in %s and are written at the next start",
                    timeout,
                    self.cfg.spool_dir,
                )
        await asyncio.to_thread(self._finish_close)
        s = self.stats()
        log.info(
            "ledger writer closed: %d rows written, %d rows left in the journal, %d lost",
            s.rows_written,
            s.journal_rows,
            s.rows_lost,
        )

    def _finish_close(self) -> None:
        with self._cond:
            self._abandoned = True
            self._closed = True
            self._cond.notify_all()
            unjournaled = [r for seq, r in (*self._inflight, *self._queue) if not seq]
        j = self._journal
        if unjournaled:  # the journal refused them earlier: one more try, or they are lost
            try:
                if j is None:
                    raise OSError(f"ledger journal in {self.cfg.spool_dir} is not usable")
                j.append(b"".join(encode_row(r) for r in unjournaled), rows=len(unjournaled))
            except OSError as exc:
                with self._cond:
                    self._lost += len(unjournaled)
                log.critical(
                    "ledger: %d rows could be neither written nor journaled at shutdown: %s",
                    len(unjournaled),
                    exc,
                )
        if j is not None:
            self._collect(final=True)
            with self._cond:
                clean = not self._segs and not unjournaled
            j.close(remove_lock=clean)

    # ------------------------------------------------------------------ worker thread

    def _run_worker(self) -> None:
        try:
            self._work()
        except Exception:  # pragma: no cover - a bug here must not lose rows: they are journaled
            log.exception("ledger writer thread failed; unwritten rows stay in the journal")
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
                if self._disk_mode and len(self._queue) < cfg.max_queue_rows // 2:
                    self._set_disk_mode(False)
            if batch:
                rest = self._write(batch)
                with self._cond:
                    self._inflight = []
                    if self._abandoned:
                        return
                    self._committed(batch, rest)
                    if rest:
                        self._queue.extendleft(reversed(rest))
                if rest:
                    if closing:
                        return
                    self._sleep(cfg.retry_seconds)
                    continue
                self._collect()
            elif closing:
                return
            elif time.monotonic() >= self._next_replay:
                if not self._replay_once():
                    self._next_replay = time.monotonic() + cfg.retry_seconds
                self._collect()

    def _sleep(self, seconds: float) -> None:
        with self._cond:
            if not self._closing:
                self._cond.wait(seconds)

    def _committed(self, batch: list[_Item], rest: list[_Item]) -> None:
        """Account for the rows of ``batch`` not in ``rest`` (caller holds the lock)."""
        left = {id(item) for item in rest}
        for item in batch:
            if id(item) in left:
                continue
            seq = item[0]
            if seq:
                seg = self._segs.get(seq)
                if seg is not None:
                    seg.pending -= 1
            else:
                self._unjournaled -= 1

    def _collect(self, final: bool = False) -> None:
        """Delete journal segments whose rows are all in the database and whose requests all ended."""
        j = self._journal
        if j is None:
            return
        with self._cond:
            current = 0 if final else j.current_seq
            cur = self._segs.get(current)
            if cur is not None and cur.pending <= 0 and cur.begins <= 0 and cur.bytes > _ROTATE_BYTES:
                with contextlib.suppress(OSError):
                    j.rotate()
                    self._segs.setdefault(j.current_seq, _Seg(disk=self._disk_mode))
                    current = j.current_seq
            done = [
                seq for seq, s in self._segs.items() if seq != current and s.pending <= 0 and s.begins <= 0
            ]
            for seq in done:
                del self._segs[seq]
        for seq in done:
            j.remove(seq)

    def _open(self) -> LedgerStore:
        if self._store is None:
            self._store = self._store_factory(self.url)
        return self._store

    def _write(self, batch: list[_Item]) -> list[_Item]:
        """Insert a batch; returns the items still to be written (empty: all written or dead-lettered)."""
        try:
            added = self._open().insert_rows([row for _, row in batch])
        except Exception as exc:
            if is_transient(exc):
                self._failed(exc)
                return batch
            if len(batch) == 1:
                return self._dead_letter(batch[0], exc)
            # a permanent error: split the batch until the refused row is alone
            mid = len(batch) // 2
            rest = self._write(batch[:mid])
            if rest:
                return rest + batch[mid:]
            return self._write(batch[mid:])
        self._succeeded(len(batch), added)
        return []

    def _dead_letter(self, item: _Item, exc: Exception) -> list[_Item]:
        """One row refused with a permanent error: once more on a fresh connection, then dead letter."""
        self._reset_store()
        try:
            added = self._open().insert_rows([item[1]])
        except Exception as again:
            if is_transient(again):
                self._failed(again)
                return [item]
            exc = again
        else:
            self._succeeded(1, added)
            return []
        reason = f"{type(exc).__name__}: {exc}".strip()[:2000]
        try:
            self._dead.add(item[1].as_dict(), f"request {item[1].request_id!r} refused: {reason}")
        except OSError as err:
            log.critical("ledger: cannot write the dead-letter file %s: %s", self._dead.path, err)
            self._failed(err)
            return [item]
        return []

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
        self._reset_store()

    def _reset_store(self) -> None:
        store, self._store = self._store, None  # reconnect on the next attempt
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()

    # ------------------------------------------------------------------ replay from disk

    def _replay_once(self) -> bool:
        """Replay one file set from disk; True when it did so (more may follow), False when there was
        nothing to do or a write failed."""
        j = self._journal
        if j is None:
            return False
        with self._cond:
            current = j.current_seq
            own = sorted(seq for seq, s in self._segs.items() if s.disk and s.pending > 0 and seq != current)
        if own:
            seq = own[0]
            if not self._replay_files([j.segment_path(seq)], resolve_begins=False):
                return False
            with self._cond:
                seg = self._segs.get(seq)
                if seg is not None:
                    seg.pending = 0
            return True
        self._scan_orphans()
        with self._cond:
            orphans = [o for o, _, _ in self._orphans.values()]
        for orphan in orphans:
            with claim(orphan) as mine:
                if not mine:
                    continue
                if not self._replay_files(orphan.files, resolve_begins=True):
                    return False
                for p in orphan.files:
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
                if orphan.lock is not None:
                    with contextlib.suppress(FileNotFoundError):
                        orphan.lock.unlink()
            with self._cond:
                self._orphans.pop(orphan.key, None)
            log.info("ledger: replayed the journal %s", orphan.key)
            return True
        return False

    def _replay_files(self, paths: list[Path], resolve_begins: bool) -> bool:
        """Write every final row of these files (in order); with ``resolve_begins``, then the begin
        records that no final row followed: requests cut short by a crash. False: stopped early."""
        begins: dict[str, LedgerRow] = {}
        batch: list[_Item] = []
        for path in paths:
            try:
                f = open(path, "rb")  # noqa: SIM115
            except FileNotFoundError:
                continue
            with f:
                for lineno, raw in journal_lines(f):
                    if not raw.strip():
                        continue
                    try:
                        row, is_begin = decode_line(raw)
                    except (ValueError, TypeError, KeyError) as exc:
                        try:
                            self._dead.add(
                                raw.decode("utf-8", "replace").rstrip("\n"),
                                f"{path.name}:{lineno}: unreadable journal line: {exc}",
                            )
                        except OSError as err:
                            self._failed(err)
                            return False
                        continue
                    if is_begin:
                        if resolve_begins:
                            begins[row.request_id] = row
                        continue
                    begins.pop(row.request_id, None)
                    batch.append((0, row))
                    if len(batch) >= self.cfg.batch_size:
                        if self._closing or self._write(batch):
                            return False
                        batch = []
        if batch and (self._closing or self._write(batch)):
            return False
        if begins:
            log.warning(
                "ledger: %d requests were cut short by a crash; recording them from their begin records",
                len(begins),
            )
            if self._closing or self._write([(0, r) for r in begins.values()]):
                return False
        return True
