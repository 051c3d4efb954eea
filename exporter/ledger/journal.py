"""The ledger's write-ahead journal: every row is on local disk before the proxy forgets it.

Each proxy process (an *instance*) appends JSON lines to numbered segment files in the journal
directory (``ledger.spool_dir``) and holds an exclusive ``flock`` on its own lock file for as long as
it runs. ``append`` is one ``write(2)`` into the page cache: from then on the row survives a crash of
the process (``kill -9``, the OOM killer), because the kernel still owns the data. A group-commit
thread ``fsync``s the segment every ``fsync_seconds``, so a power cut loses at most that interval.

Segments whose rows are all in the database are deleted. Segments left behind by an instance whose
lock is free (it crashed, or stopped while the database was down) are replayed by the next process
that starts in the same directory; replays are idempotent because the database skips request ids
it already has.

Two kinds of record share a segment: a final row (the plain row as JSON, the same format the older
spool files had, which are replayed too) and a *begin* record (``"_begin": 1``) written when a
response starts. A begin without a final row after a crash is a request the client saw start but
whose row was never finished; replay records it from the begin record (see docs/ledger.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from exporter.ledger.row import COLUMNS, LedgerRow

log = logging.getLogger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700
LEGACY_SPOOL_GLOB = "ledger-spool-*.jsonl"  # files written by versions before the journal
SEGMENT_ROWS = 20_000  # rotate so that a replay and a deletion never handle a huge file at once
BEGIN_KEY = "_begin"
_SEGMENT_RE = re.compile(r"^journal-(?P<inst>[0-9A-Za-z-]+)-(?P<seq>\d{6})\.jsonl$")


_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode


def encode_row(row: LedgerRow, begin: bool = False) -> bytes:
    """One journal line. ``ensure_ascii`` escapes every non-ASCII code point, lone surrogates
    included, so encoding never fails whatever text a row holds. (A dict built by hand: three
    times cheaper than ``dataclasses.asdict``, and this runs on the request path.)"""
    d = {name: getattr(row, name) for name in COLUMNS}
    if begin:
        d[BEGIN_KEY] = 1
    return (_ENCODE(d) + "\n").encode("ascii")


def decode_line(raw: bytes) -> tuple[LedgerRow, bool]:
    """(row, is_begin) from a journal or spool line; ValueError/TypeError/KeyError when torn."""
    d = json.loads(raw)
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    return LedgerRow.from_dict(d), bool(d.get(BEGIN_KEY))


def secure_dir(path: Path) -> None:
    """Create the directory (0700) or narrow an existing one we own; OSError names the path."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        if path.stat().st_mode & 0o077 and path.stat().st_uid == os.getuid():
            path.chmod(DIR_MODE)


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Open:
    seq: int
    fd: int
    rows: int = 0
    dirty: bool = False


class Journal:
    """This process's journal segments. Thread-safe; ``append`` never holds a lock during fsync."""

    def __init__(self, directory: str | os.PathLike[str], fsync_seconds: float = 0.01) -> None:
        self.dir = Path(directory)
        self.fsync_seconds = fsync_seconds
        self.instance = (
            f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}-{secrets.token_hex(3)}"
        )
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._cur: _Open | None = None
        self._seq = 0
        self._to_close: list[int] = []  # rotated segments' fds: fsync'ed and closed by the sync thread
        self._new_dir_entry = False
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        self.sync_errors = 0

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Create the directory and take this instance's lock. Raises OSError naming the path."""
        secure_dir(self.dir)
        lock = self.dir / f"journal-{self.instance}.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._lock_fd = fd
        with self._lock:
            self._open_segment()
        self._syncer = threading.Thread(target=self._run_sync, name="ledger-journal-sync", daemon=True)
        self._syncer.start()

    def close(self, remove_lock: bool) -> None:
        """fsync and close everything; the lock file goes too when nothing of ours is left."""
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join(5.0)
        with self._lock:
            fds = self._to_close + ([self._cur.fd] if self._cur else [])
            self._to_close, self._cur = [], None
        for fd in fds:
            with contextlib.suppress(OSError):
                os.fsync(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._lock_fd is not None:
            if remove_lock:
                with contextlib.suppress(OSError):
                    (self.dir / f"journal-{self.instance}.lock").unlink()
            os.close(self._lock_fd)  # releases the flock: what is left is replayed by the next start
            self._lock_fd = None

    def segment_path(self, seq: int) -> Path:
        return self.dir / f"journal-{self.instance}-{seq:06d}.jsonl"

    def _open_segment(self) -> None:
        self._seq += 1
        path = self.segment_path(self._seq)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        if self._cur is not None:
            self._to_close.append(self._cur.fd)
        self._cur = _Open(self._seq, fd)
        self._new_dir_entry = True

    # ------------------------------------------------------------------ writing

    @property
    def current_seq(self) -> int:
        return self._cur.seq if self._cur is not None else 0

    def append(self, data: bytes, rows: int = 1) -> int:
        """Write (not yet fsync) lines; returns the segment's number. OSError when the disk refuses."""
        with self._lock:
            cur = self._cur
            if cur is None:
                raise OSError(f"ledger journal in {self.dir} is closed")
            if cur.rows >= SEGMENT_ROWS:
                self._open_segment()
                cur = self._cur
                assert cur is not None
            n = os.write(cur.fd, data)
            if n != len(data):  # a short write (disk full mid-line): finish it or fail loudly
                rest = data[n:]
                while rest:
                    n = os.write(cur.fd, rest)
                    rest = rest[n:]
            cur.rows += rows
            cur.dirty = True
            return cur.seq

    def rotate(self) -> int:
        """Start a new segment; returns the number of the new one."""
        with self._lock:
            if self._cur is None:
                raise OSError(f"ledger journal in {self.dir} is closed")
            self._open_segment()
            return self._cur.seq  # type: ignore[union-attr]

    def sync(self) -> None:
        """Group commit: fsync the current segment (and finish rotated ones)."""
        with self._lock:
            cur = self._cur
            fd = cur.fd if cur is not None and cur.dirty else None
            if cur is not None:
                cur.dirty = False
            old, self._to_close = self._to_close, []
            new_entry, self._new_dir_entry = self._new_dir_entry, False
        try:
            for f in old:
                try:
                    os.fsync(f)
                finally:
                    os.close(f)
            if fd is not None:
                os.fsync(fd)
        except OSError as exc:
            self.sync_errors += 1
            log.error("ledger journal fsync in %s failed: %s", self.dir, exc)
        if new_entry:
            fsync_dir(self.dir)

    def _run_sync(self) -> None:
        while not self._stop.wait(self.fsync_seconds):
            self.sync()
        self.sync()

    def remove(self, seq: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.segment_path(seq).unlink()


# --------------------------------------------------------------------------- replay of old files


@dataclass
class Orphan:
    """Files left by an instance that is gone (or an old-style spool file), replayed as one unit."""

    key: str
    files: list[Path]
    lock: Path | None  # the instance's lock file (None for an old spool file: it is its own lock)


def find_orphans(directory: Path, own_instance: str) -> list[Orphan]:
    """Every other instance's segments, grouped by instance, oldest first; plus old spool files."""
    if not directory.is_dir():
        return []
    groups: dict[str, list[tuple[int, Path]]] = {}
    for p in directory.glob("journal-*.jsonl"):
        m = _SEGMENT_RE.match(p.name)
        if m and m["inst"] != own_instance:
            groups.setdefault(m["inst"], []).append((int(m["seq"]), p))
    out = [
        Orphan(inst, [p for _, p in sorted(files)], directory / f"journal-{inst}.lock")
        for inst, files in sorted(groups.items())
    ]
    out += [Orphan(p.name, [p], None) for p in sorted(directory.glob(LEGACY_SPOOL_GLOB))]
    # lock files of instances that left no segments (stopped cleanly but kept the lock after a crash)
    for lock in directory.glob("journal-*.lock"):
        inst = lock.name[len("journal-") : -len(".lock")]
        if inst != own_instance and inst not in groups:
            out.append(Orphan(inst, [], lock))
    return out


@contextlib.contextmanager
def claim(orphan: Orphan) -> Iterator[bool]:
    """Lock an orphan for replay; yields False when its instance still runs (or another replays it)."""
    target = orphan.lock if orphan.lock is not None else orphan.files[0]
    try:
        fd = os.open(target, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        if orphan.lock is not None and orphan.files:
            # segments without a lock file: the instance is gone (a lock file is made before segments)
            yield True
            return
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield target.exists()
    finally:
        os.close(fd)


def count_lines(paths: list[Path]) -> tuple[int, int]:
    """(final rows, bytes) in these files, for the backlog gauge; begin records are not rows."""
    rows = size = 0
    for p in paths:
        try:
            with open(p, "rb") as f:
                for line in f:
                    size += len(line)
                    if line.strip() and b'"_begin":1' not in line:
                        rows += 1
        except OSError:
            continue
    return rows, size
