"""The ledger's write-ahead journal: every row is on local disk before the proxy forgets it.

Each proxy process (an *instance*) appends JSON lines to numbered segment files in the journal
directory (``ledger.spool_dir``) and holds an exclusive ``flock`` on its own lock file for as long as
it runs. ``append`` copies the line into the segment's shared memory mapping, which is the page
cache itself: from then on the row survives a crash of the process (``kill -9``, the OOM killer),
because the kernel owns the data. A group-commit thread ``fsync``s the segment
``fsync_seconds`` after the first line written since its last fsync (and sleeps while nothing is
written), so a power cut loses at most that interval.

Segments whose rows are all in the database are deleted. Segments left behind by an instance whose
lock is free (it crashed, or stopped while the database was down) are replayed by the next process
that starts in the same directory; replays are idempotent because the database skips request ids
it already has.

Two kinds of record share a segment (see ``encode_row``): a final row and a *begin* record written
when a stream's response starts. Spool files of older versions (one JSON object a line) are
replayed too. A begin without a final row after a crash is a request the client saw start but
whose row was never finished; replay records it from the begin record (see docs/ledger.md).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import mmap
import operator
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from exporter.ledger.row import COLUMNS, LedgerRow
from exporter.logs import get_logger

log = get_logger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700
LEGACY_SPOOL_GLOB = "ledger-spool-*.jsonl"  # files written by versions before the journal
SEGMENT_ROWS = 20_000  # rotate so that a replay and a deletion never handle a huge file at once
SEGMENT_BYTES = 8 * 1024 * 1024  # preallocated per segment (about 18,000 rows)
BEGIN_KEY = "_begin"
_SEGMENT_RE = re.compile(r"^journal-(?P<inst>[0-9A-Za-z-]+)-(?P<seq>\d{6})\.jsonl$")


_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode
_FIELDS = operator.attrgetter(*COLUMNS)
_ROW, _BEGIN = (0,), (1,)


def encode_row(row: LedgerRow, begin: bool = False) -> bytes:
    """One journal line: ``[kind, <the row's fields in COLUMNS order>]``, kind 0 for a row and 1 for
    a begin record. Positional, because this runs on the request path and an array encodes twice
    as fast as an object; a column added later goes at the end with a default, so older lines stay
    readable. ``ensure_ascii`` escapes every non-ASCII code point, lone surrogates included, so
    encoding never fails whatever text a row holds."""
    return (_ENCODE((_BEGIN if begin else _ROW) + _FIELDS(row)) + "\n").encode("ascii")


def decode_line(raw: bytes) -> tuple[LedgerRow, bool]:
    """(row, is_begin) from a journal line, or an object line of an old spool file;
    ValueError/TypeError/KeyError when the line is torn or not a row."""
    d = json.loads(raw)
    if isinstance(d, list) and d and d[0] in (0, 1):
        return LedgerRow(*d[1:]), d[0] == 1
    if isinstance(d, dict):
        return LedgerRow.from_dict(d), bool(d.get(BEGIN_KEY))
    raise ValueError("not a journal line")


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
class _Segment:
    """A journal file, preallocated and mapped into memory."""

    seq: int
    fd: int
    mm: mmap.mmap
    size: int
    pos: int = 0
    rows: int = 0
    dirty: bool = False


class Journal:
    """This process's journal segments. Thread-safe.

    A segment is preallocated (``posix_fallocate``: a full disk fails here, with an OSError, not
    later with SIGBUS) and mapped into memory. ``append`` copies the line into the mapping: no
    system call and no release of the interpreter lock on the request path. The pages belong to
    the kernel's page cache, so they survive the death of the process; the group-commit thread
    ``fsync``s them within ``fsync_seconds`` of being written and prepares the next segment ahead of time. The
    unwritten tail of a segment is zero bytes, which readers skip (a journal line never contains a
    NUL byte: JSON escapes it)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        fsync_seconds: float = 0.01,
        segment_bytes: int | None = None,
    ) -> None:
        self.dir = Path(directory)
        self.fsync_seconds = fsync_seconds
        self.segment_bytes = segment_bytes or SEGMENT_BYTES
        self.instance = (
            f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}-{secrets.token_hex(3)}"
        )
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._cur: _Segment | None = None
        self._spare: _Segment | None = None  # the next segment, made ahead of time by the sync thread
        self._seq = 0
        self._to_close: list[_Segment] = []  # rotated segments: synced, trimmed, closed by the sync thread
        self._new_dir_entry = False
        self._stop = threading.Event()
        # set when there is something to sync (a segment turned dirty, a rotation): an idle journal's
        # thread sleeps instead of waking every ``fsync_seconds`` (it cost an idle proxy about 1% of
        # a core, nearly all of its idle CPU)
        self._work = threading.Event()
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
            self._cur = self._new_segment(self._next_seq(), self.segment_bytes)
        self._work.set()  # the first sync makes the spare segment ahead of time
        self._syncer = threading.Thread(target=self._run_sync, name="ledger-journal-sync", daemon=True)
        self._syncer.start()

    def close(self, remove_lock: bool) -> None:
        """fsync, trim and close everything; the lock file goes too when nothing of ours is left."""
        self._stop.set()
        self._work.set()
        if self._syncer is not None:
            self._syncer.join(5.0)
        with self._lock:
            segs = self._to_close + ([self._cur] if self._cur else [])
            spare, self._spare = self._spare, None
            self._to_close, self._cur = [], None
        for seg in segs:
            self._finish(seg)
        if spare is not None:
            self._drop(spare)
        if self._lock_fd is not None:
            if remove_lock:
                with contextlib.suppress(OSError):
                    (self.dir / f"journal-{self.instance}.lock").unlink()
            os.close(self._lock_fd)  # releases the flock: what is left is replayed by the next start
            self._lock_fd = None

    def segment_path(self, seq: int) -> Path:
        return self.dir / f"journal-{self.instance}-{seq:06d}.jsonl"

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _new_segment(self, seq: int, size: int) -> _Segment:
        path = self.segment_path(seq)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise  # ENOSPC above all: the caller keeps the rows in memory and says so
                # a filesystem without fallocate: a sparse file (a full disk is then seen late)
                os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        self._new_dir_entry = True
        return _Segment(seq, fd, mm, size)

    def _rotate_locked(self, need: int) -> _Segment:
        """Switch to the spare segment (or a new one); the old one is finished by the sync thread."""
        spare, self._spare = self._spare, None
        if spare is None or spare.size < need:
            if spare is not None:
                self._drop(spare)
            spare = self._new_segment(self._next_seq(), max(self.segment_bytes, need))
        if self._cur is not None:
            self._to_close.append(self._cur)
            self._work.set()  # the sync thread finishes the rotated segment
        self._cur = spare
        return spare

    def _finish(self, seg: _Segment) -> None:
        """fsync, trim the unused tail, close."""
        try:
            seg.mm.close()
            os.ftruncate(seg.fd, seg.pos)
            os.fsync(seg.fd)
        except (OSError, ValueError) as exc:
            self.sync_errors += 1
            log.error("ledger journal segment %d in %s: %s", seg.seq, self.dir, exc)
        finally:
            os.close(seg.fd)

    def _drop(self, seg: _Segment) -> None:
        """An unused spare segment: away with it."""
        with contextlib.suppress(OSError, ValueError):
            seg.mm.close()
        os.close(seg.fd)
        with contextlib.suppress(OSError):
            self.segment_path(seg.seq).unlink()

    # ------------------------------------------------------------------ writing

    @property
    def current_seq(self) -> int:
        return self._cur.seq if self._cur is not None else 0

    def append(self, data: bytes, rows: int = 1) -> int:
        """Copy lines into the journal; returns the segment's number. OSError when the disk refuses
        (a new segment cannot be allocated) or the journal is closed."""
        with self._lock:
            cur = self._cur
            if cur is None:
                raise OSError(f"ledger journal in {self.dir} is closed")
            n = len(data)
            if cur.pos + n > cur.size or cur.rows >= SEGMENT_ROWS:
                cur = self._rotate_locked(n)
            cur.mm[cur.pos : cur.pos + n] = data
            cur.pos += n
            cur.rows += rows
            if not cur.dirty:  # once per group commit, not per row
                cur.dirty = True
                self._work.set()
            return cur.seq

    def rotate(self) -> int:
        """Start a new segment; returns the number of the new one."""
        with self._lock:
            if self._cur is None:
                raise OSError(f"ledger journal in {self.dir} is closed")
            return self._rotate_locked(0).seq

    def sync(self) -> None:
        """Group commit: fsync the current segment, finish rotated ones, prepare the next one."""
        with self._lock:
            cur = self._cur
            dirty = cur is not None and cur.dirty
            if cur is not None:
                cur.dirty = False
            old, self._to_close = self._to_close, []
            need_spare = self._spare is None and cur is not None
            new_entry, self._new_dir_entry = self._new_dir_entry, False
        for seg in old:
            self._finish(seg)
        if dirty and cur is not None:
            # fsync, not mmap.flush(): on Linux both write the mapping's dirty pages (msync(MS_SYNC)
            # is fsync of the range), but only os.fsync lets go of the interpreter lock meanwhile.
            try:
                os.fsync(cur.fd)
            except OSError as exc:  # EBADF: closed meanwhile by close()
                self.sync_errors += 1
                log.error("ledger journal fsync in %s failed: %s", self.dir, exc)
        if need_spare:
            self._make_spare()
            new_entry = True
        if new_entry:
            fsync_dir(self.dir)

    def _make_spare(self) -> None:
        """Allocate the next segment outside the lock: ``append`` never waits for the disk."""
        with self._lock:
            if self._spare is not None or self._cur is None or self._stop.is_set():
                return
            seq = self._next_seq()
        try:
            seg = self._new_segment(seq, self.segment_bytes)
        except OSError as exc:  # the disk is full: append() reports it when it needs a segment
            log.debug("ledger journal: no spare segment yet: %s", exc)
            return
        with self._lock:
            # a rotation meanwhile made its own, later segment: numbers must follow the order of use
            installed = self._spare is None and self._cur is not None and self._cur.seq < seq
            if installed:
                self._spare = seg
        if not installed:
            self._drop(seg)

    def _run_sync(self) -> None:
        while True:
            self._work.wait()  # nothing written since the last sync: sleep
            if self._stop.wait(self.fsync_seconds):  # the group-commit window
                break
            self._work.clear()  # before sync() reads the dirty flag: a later append sets it again
            self.sync()
        self.sync()

    def remove(self, seq: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.segment_path(seq).unlink()


def journal_lines(f: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of a journal or spool file, stopping at the zero bytes of a segment's
    unwritten tail (a line cut by them is returned as it is, and fails to parse)."""
    for lineno, raw in enumerate(f, 1):
        if raw[:1] == b"\x00":
            return
        cut = raw.find(b"\x00")
        if cut >= 0:
            yield lineno, raw[:cut]
            return
        yield lineno, raw


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
                for _, line in journal_lines(f):
                    size += len(line)
                    if line.strip() and not line.startswith(b"[1,"):
                        rows += 1
        except OSError:
            continue
    return rows, size
