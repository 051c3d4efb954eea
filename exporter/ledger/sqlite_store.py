"""SQLite ledger backend: one file, WAL mode, the embedded default.

Writes go through one connection guarded by a lock. Ad-hoc queries use a second connection that
opens an empty in-memory database and ATTACHes the ledger file read-only as schema ``public``, so
``SELECT ... FROM public.http_analytics`` (PostgreSQL's spelling) works unchanged; an authorizer
additionally refuses anything but reading on that connection.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from exporter.ledger import migrations, schema
from exporter.ledger.backend import (
    TS_FORMAT,
    QueryError,
    ReadOnlyError,
    StoreError,
    StoreOpsMixin,
    canonical_timestamp,
    row_values,
)
from exporter.ledger.keys import KeyOps
from exporter.ledger.private_files import create_private_file, make_private_dir
from exporter.ledger.row import LedgerRow

MIGRATIONS = migrations.MIGRATIONS["sqlite"]  # schema versions: see ``migrations``

_INSERT = schema.insert_sql(schema.HTTP_ANALYTICS, "sqlite")
# Columns whose checked value (row_values) SQLite cannot bind as it is: timestamps, stored as text.
_TIMESTAMPS = [i for i, c in enumerate(schema.HTTP_ANALYTICS.columns) if c.type is schema.TIMESTAMP]

# Authorizer actions allowed on the ad-hoc query connection: reading only.
_READ_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, 33}  # 33 = RECURSIVE


def _read_only_authorizer(action: int, *_: Any) -> int:
    return sqlite3.SQLITE_OK if action in _READ_ACTIONS else sqlite3.SQLITE_DENY


def read_only_connection(target: str, busy_timeout_ms: int) -> sqlite3.Connection:
    """A connection for ad-hoc reads: an empty in-memory database with the ledger ``target`` (a
    ``file:`` URI, ``mode=ro`` for files) attached as ``public``, and only reading authorized."""
    conn = sqlite3.connect("file::memory:", uri=True, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("ATTACH DATABASE ? AS public", (target,))
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.execute("PRAGMA query_only = ON")
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"cannot open the SQLite ledger read-only ({target}): {exc}") from None
    conn.set_authorizer(_read_only_authorizer)
    return conn


def run_read_query(
    conn: sqlite3.Connection, sql: str, params: Sequence[Any]
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """One statement on a ``read_only_connection``: (column names, rows)."""
    try:
        cur = conn.execute(sql, tuple(params))
        rows = cur.fetchall()
    except sqlite3.DatabaseError as exc:
        if any(s in str(exc) for s in ("not authorized", "authorization denied", "readonly", "query_only")):
            raise ReadOnlyError(f"the ledger query is read-only; refused: {exc}") from None
        raise QueryError(str(exc)) from None
    except sqlite3.Warning as exc:
        raise QueryError(str(exc)) from None
    if cur.description is None:
        return [], []
    return [d[0] for d in cur.description], rows


def existing_file(path: str, hint: str) -> Path:
    """``path`` as an existing SQLite file, or StoreError naming it: a reader must never create an
    empty ledger at a mistyped path (``hint`` ends the message: where the path came from, say)."""
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is not a file" if p.exists() else "does not exist"
        raise StoreError(f"SQLite ledger {p} {what}{hint}")
    return p


def parse_sqlite_url(url: str) -> tuple[str, bool, dict[str, str]]:
    """(path or shared-memory URI, is_memory, options) from sqlite:///rel.db, sqlite:////abs.db, sqlite://:memory:."""
    from exporter.ledger.url import LedgerUrlError, parse_ledger_url

    try:
        parsed = parse_ledger_url(url)
    except LedgerUrlError as exc:
        raise StoreError(str(exc)) from None
    if parsed.backend != "sqlite":
        raise StoreError(
            f"bad SQLite ledger URL {url!r}: expected sqlite:///relative.db or sqlite:////absolute.db"
        )
    return parsed.path, parsed.memory, parsed.options


class SqliteStore(StoreOpsMixin, KeyOps):
    backend = "sqlite"
    placeholder = "?"  # parameter marker for query(sql, params)

    def __init__(self, url: str, busy_timeout_ms: int | None = None) -> None:
        self.url = url
        path, self._memory, opts = parse_sqlite_url(url)
        self.busy_timeout_ms = int(
            opts.get("busy_timeout_ms", busy_timeout_ms if busy_timeout_ms is not None else 5000)
        )
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._read: sqlite3.Connection | None = None
        if self._memory:
            self._target = path
        else:
            p = Path(path).expanduser()
            try:
                make_private_dir(p.parent)
                create_private_file(p)  # 0600, and so are its -wal and -shm files
            except OSError as exc:
                raise StoreError(f"cannot create the ledger {p}: {exc}") from None
            self.path = p.resolve()
            self._target = str(self.path)
        try:
            self._conn = sqlite3.connect(
                self._target,
                uri=self._memory,
                isolation_level=None,
                check_same_thread=False,
                timeout=self.busy_timeout_ms / 1000,
            )
            self._conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            if not self._memory:
                mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"cannot switch {self.path} to WAL mode (got {mode})")
            # FULL: a committed batch survives power loss, not only a process crash. Batching makes the
            # extra fsync cheap (one per transaction, not per row).
            self._conn.execute("PRAGMA synchronous = FULL")
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite ledger {self._target}: {exc}") from exc

    # ------------------------------------------------------------------ schema

    def _migrate(self) -> None:
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")  # one process migrates at a time
            try:
                migrations.migrate(c, "sqlite")
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------------ writes

    def insert_rows(self, rows: Sequence[LedgerRow]) -> int:
        if not rows:
            return 0
        params = []
        for row in rows:
            v = list(row_values(row))
            for i in _TIMESTAMPS:
                v[i] = v[i].strftime(TS_FORMAT)  # row_values already made it an aware UTC datetime
            params.append(v)
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                # rowcount (sqlite3_changes) counts the rows inserted, not the rollup trigger's writes
                added = c.executemany(_INSERT, params).rowcount
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
            return max(added, 0)

    def apply_retention(
        self, keep_months: int, drop: bool = True, now: datetime | None = None
    ) -> dict[str, Any]:
        """Delete raw rows older than the last ``keep_months`` months (the current one counts); the
        rollup is kept. SQLite has no partitions, so this is a DELETE (run it off-peak)."""
        from exporter.ledger.pg_partitions import add_months, month_start

        cutoff = add_months(month_start(now or datetime.now(UTC)), -(keep_months - 1))
        rows = self._exec_write(
            "DELETE FROM http_analytics WHERE timestamp < ? RETURNING 1", (f"{cutoff.isoformat()}T",)
        )
        return {"cutoff": cutoff, "partitions": [], "default_rows_deleted": len(rows)}

    def _exec_write(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                out = c.execute(sql, params).fetchall()
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
            return out

    def _exec_write_many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                c.executemany(sql, params)
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise

    def _exec_read(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # ------------------------------------------------------------------ ad-hoc reads

    def _reader(self) -> sqlite3.Connection:
        if self._read is None:
            target = self._target if self._memory else "file:" + quote(str(self.path)) + "?mode=ro"
            self._read = read_only_connection(target, self.busy_timeout_ms)
        return self._read

    def query(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
        with self._read_lock:
            return run_read_query(self._reader(), sql, params)

    def timestamp_param(self, value: str | datetime) -> Any:
        """A timestamp as this backend compares it with the ``timestamp`` column (for query params)."""
        return canonical_timestamp(value)

    def day_param(self, value: date) -> Any:
        """A UTC day as this backend compares it with the rollup's ``day`` column."""
        return value.isoformat()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        with self._read_lock:
            if self._read is not None:
                self._read.close()
                self._read = None
