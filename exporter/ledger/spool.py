"""The on-disk spool: ledger rows that could not be written to the database (yet).

Rows are appended as JSON lines and fsync'ed before the append returns, so a spooled row survives a
crash. Each process writes its own file and holds an exclusive ``flock`` on it while it is open;
replay only touches files it can lock, so two replicas sharing a spool directory never replay a
file that is still being written. A file is deleted only after all its rows are in the database;
a crash in between replays the file again, which is harmless because inserts skip request_ids that
are already present.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from exporter.ledger.private_files import make_private_dir, open_private
from exporter.ledger.row import LedgerRow

log = logging.getLogger(__name__)

SPOOL_GLOB = "ledger-spool-*.jsonl"
MAX_FILE_ROWS = 100_000  # rotate so that replay progress is never all-or-nothing on a huge file


class Spool:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self._file_rows = 0
        self._seq = 0
        self.rejected_rows = 0

    # ------------------------------------------------------------------ writing

    def prepare(self) -> None:
        """Create the directory (raises OSError with the path if impossible)."""
        make_private_dir(self.dir)

    def append(self, rows: Sequence[LedgerRow]) -> None:
        """Durably append rows (write + fsync). Raises OSError when the disk refuses."""
        if not rows:
            return
        data = b"".join(json.dumps(r.as_dict(), separators=(",", ":")).encode() + b"\n" for r in rows)
        with self._lock:
            if self._file is None or self._file_rows >= MAX_FILE_ROWS:
                self._open_new()
            assert self._file is not None
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file_rows += len(rows)

    def _open_new(self) -> None:
        self._close_current()
        self.prepare()
        self._seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        path = self.dir / f"ledger-spool-{stamp}-{os.getpid()}-{self._seq:04d}.jsonl"
        f = open_private(path, "ab")  # held open across appends
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        _fsync_dir(self.dir)  # the new file's name must survive a crash too
        self._file, self._path, self._file_rows = f, path, 0

    def _close_current(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()  # closing releases the flock
        self._file, self._path, self._file_rows = None, None, 0

    def rotate(self) -> None:
        """Close the file being appended to, so it can be replayed; later appends start a new one."""
        with self._lock:
            self._close_current()

    def close(self) -> None:
        self.rotate()

    # ------------------------------------------------------------------ replay

    def files(self) -> list[Path]:
        """Spool files other than the one this process is writing, oldest first."""
        if not self.dir.is_dir():
            return []
        with self._lock:
            current = self._path
        return sorted(p for p in self.dir.glob(SPOOL_GLOB) if p != current)

    def count_rows(self) -> dict[Path, int]:
        out: dict[Path, int] = {}
        for p in self.files():
            try:
                with open(p, "rb") as f:
                    out[p] = sum(1 for line in f if line.strip())
            except OSError:
                continue
        return out

    @contextlib.contextmanager
    def claim(self, path: Path) -> Iterator[Iterator[list[LedgerRow]] | None]:
        """Lock a spool file for replay; yields a batch iterator, or None if another process holds it.

        Lines that cannot be parsed (e.g. a write torn by a crash) are moved to ``rejected/`` and
        logged, never silently dropped.
        """
        try:
            f = open(path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            yield None
            return
        try:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            if not path.exists():  # replayed and deleted by someone else meanwhile
                yield None
                return
            yield self._batches(f, path)
        finally:
            f.close()

    def _batches(self, f: IO[bytes], path: Path, size: int = 500) -> Iterator[list[LedgerRow]]:
        batch: list[LedgerRow] = []
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                batch.append(LedgerRow.from_dict(json.loads(raw)))
            except (ValueError, TypeError, KeyError) as exc:
                self.reject(raw.decode("utf-8", "replace").rstrip("\n"), f"{path.name}:{lineno}: {exc}")
                continue
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch

    def reject(self, line: str, reason: str) -> None:
        """Keep a row that can never be inserted in ``rejected/`` (for a person to look at)."""
        self.rejected_rows += 1
        log.error("ledger row rejected (kept in %s): %s", self.dir / "rejected", reason)
        rdir = self.dir / "rejected"
        make_private_dir(rdir)
        with open_private(rdir / f"rejected-{os.getpid()}.jsonl", "a", encoding="utf-8") as out:
            out.write(json.dumps({"reason": reason, "row": line}) + "\n")
            out.flush()
            os.fsync(out.fileno())

    def remove(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        _fsync_dir(self.dir)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
