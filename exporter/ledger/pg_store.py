"""PostgreSQL ledger backend (psycopg 3), for several proxy replicas sharing one ledger.

Tables are created in the connection's current schema (``public`` unless the URL's options set a
``search_path``). Migrations take an advisory lock so replicas starting together do not race.
Ad-hoc queries run on their own connection inside ``BEGIN READ ONLY`` and as prepared statements,
which PostgreSQL refuses to combine with a second statement (no ``COMMIT; DROP ...`` tricks).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from exporter.ledger import migrations, pg_partitions, schema
from exporter.ledger.backend import (
    QueryError,
    ReadOnlyError,
    RowError,
    StoreError,
    StoreOpsMixin,
    parse_timestamp,
    redact_url,
    row_values,
)
from exporter.ledger.keys import KeyOps
from exporter.ledger.row import LedgerRow
from exporter.logs import get_logger

log = get_logger(__name__)

MIGRATIONS = migrations.MIGRATIONS["postgresql"]  # schema versions: see ``migrations``

# One statement per batch (arrays unnested server-side): the rollup trigger then aggregates the
# batch once. ON CONFLICT on the key (request_id, timestamp): see pg_partitions for why replays
# still add nothing.
_INSERT = schema.insert_sql(schema.HTTP_ANALYTICS, "postgresql")


class PostgresStore(StoreOpsMixin, KeyOps):
    backend = "postgresql"
    placeholder = "%s"  # parameter marker for query(sql, params)

    def __init__(
        self,
        url: str,
        connect_timeout: int = 5,
        clock: Callable[[], datetime] | None = None,
        statement_timeout: float = 30.0,
    ) -> None:
        from exporter.ledger.url import parse_ledger_url

        url = parse_ledger_url(url).url  # postgres:// → postgresql://
        self.url = url
        self.connect_timeout = connect_timeout
        # Server side: statement_timeout and lock_timeout end a slow statement or a lock wait. A
        # server that does not answer at all (frozen, a network black hole) cannot enforce them, so
        # a watchdog thread also cuts the socket when a call runs past this plus a margin.
        self.statement_timeout = statement_timeout
        self.client_timeout = statement_timeout + 5.0
        self._clock = clock or (lambda: datetime.now(UTC))
        self._partitions_for: date | None = None  # the month partitions were last ensured for
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._read: psycopg.Connection[Any] | None = None
        with self._lock:
            self._migrate(self._connection())

    def _connect(self) -> psycopg.Connection[Any]:
        kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in self.url:
            kwargs["connect_timeout"] = self.connect_timeout
        if "options" not in self.url:  # the URL's own options win (and then set their own timeouts)
            ms = int(self.statement_timeout * 1000)
            kwargs["options"] = (
                f"-c statement_timeout={ms} -c lock_timeout={ms}"
                f" -c idle_in_transaction_session_timeout={ms * 2}"
            )
        try:
            return psycopg.connect(self.url, **kwargs)
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot connect to PostgreSQL ledger {redact_url(self.url)}: {exc}".strip()
            ) from exc

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self._connect()
        return self._conn

    @contextlib.contextmanager
    def _deadline(self, conn: psycopg.Connection[Any]) -> Iterator[None]:
        """Cut the connection's socket if the call inside takes longer than ``client_timeout``: the
        blocked read then fails at once (OperationalError) instead of waiting for a server that is
        frozen. Costs one timer thread per call, which is nothing next to a round trip."""
        try:
            fd = conn.fileno()
        except Exception:
            yield
            return

        def cut() -> None:
            log.error(
                "PostgreSQL ledger %s did not answer within %.0fs; dropping the connection",
                redact_url(self.url),
                self.client_timeout,
            )
            with contextlib.suppress(OSError):
                sock = socket.socket(fileno=os.dup(fd))
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                finally:
                    sock.close()

        timer = threading.Timer(self.client_timeout, cut)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    @contextlib.contextmanager
    def _maintenance(self, conn: psycopg.Connection[Any]) -> Iterator[None]:
        """No statement timeout for maintenance (partitions, retention, ANALYZE): it may take minutes."""
        conn.execute("SET statement_timeout = 0")
        try:
            yield
        finally:
            with contextlib.suppress(psycopg.Error):
                conn.execute("RESET statement_timeout")

    def _drop(self) -> None:
        """Forget a connection after an error, so the next call reconnects."""
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    # ------------------------------------------------------------------ schema

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            # A migration may copy the whole table (version 4): no statement timeout for it.
            conn.execute("SET LOCAL statement_timeout = 0")
            conn.execute("SET LOCAL lock_timeout = 0")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (pg_partitions.MIGRATION_LOCK,))
            migrations.migrate(conn, "postgresql")
            self._ensure_partitions(conn)

    def _ensure_partitions(self, conn: psycopg.Connection[Any]) -> None:
        """The current month's partition and the next ones exist (checked once per month)."""
        now = self._clock()
        month = pg_partitions.month_start(now)
        if self._partitions_for != month:
            try:
                with conn.transaction():  # a savepoint inside the migration's transaction
                    pg_partitions.ensure_partitions(conn, pg_partitions.months_to_ensure(now))
            except (pg_errors.InsufficientPrivilege, pg_errors.UndefinedFunction) as exc:
                # A role that may only read or insert: rows still land (in the default partition
                # until `chargeback ledger maintain` runs with an owner's rights).
                log.warning("cannot create the ledger's monthly partitions: %s", str(exc).strip())
            self._partitions_for = month

    def ensure_partitions(self, months: Sequence[date]) -> list[date]:
        """Create the partitions of these months where missing (e.g. before loading history)."""
        with self._lock:
            conn = self._connection()
            with self._maintenance(conn), conn.transaction():
                return pg_partitions.ensure_partitions(conn, [pg_partitions.month_start(m) for m in months])

    def analyze(self) -> None:
        with self._lock:
            conn = self._connection()
            with self._maintenance(conn):
                pg_partitions.analyze(conn)

    def partitions(self) -> list[tuple[str, date | None]]:
        with self._lock:
            return pg_partitions.partitions(self._connection())

    def apply_retention(
        self, keep_months: int, drop: bool = True, now: datetime | None = None
    ) -> dict[str, Any]:
        """Detach (and drop) month partitions older than the last ``keep_months`` months."""
        with self._lock:
            conn = self._connection()
            with self._maintenance(conn), conn.transaction():
                return pg_partitions.apply_retention(conn, keep_months, now or self._clock(), drop)

    # ------------------------------------------------------------------ writes

    def insert_rows(self, rows: Sequence[LedgerRow]) -> int:
        if not rows:
            return 0
        # Sorted by key: concurrent writers replaying overlapping rows lock them in the same order.
        values = sorted((row_values(r) for r in rows), key=lambda v: (v[0], v[1]))
        columns = [list(c) for c in zip(*values, strict=True)]
        with self._lock:
            conn = self._connection()
            try:
                with self._deadline(conn):
                    self._ensure_partitions(conn)  # own transaction, once a month: kept if the batch fails
                    with conn.transaction(), conn.cursor() as cur:
                        cur.execute(_INSERT, columns)
                        return max(cur.rowcount, 0)
            except (pg_errors.DataError, pg_errors.IntegrityError) as exc:
                raise RowError(str(exc)) from exc
            except psycopg.Error:
                self._drop()
                raise

    @contextlib.contextmanager
    def _call(self) -> Iterator[psycopg.Connection[Any]]:
        """The connection for one call: under the lock and the deadline; a connection that failed
        (OperationalError: gone, or cut by the deadline) is dropped so the next call reconnects."""
        with self._lock:
            conn = self._connection()
            try:
                with self._deadline(conn):
                    yield conn
            except psycopg.OperationalError:
                self._drop()
                raise

    def _exec_write(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._call() as conn, conn.transaction():
            cur = conn.execute(self._native(sql), tuple(params))
            return cur.fetchall() if cur.description else []

    def _exec_write_many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        with self._call() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(self._native(sql), [tuple(p) for p in params])  # pipelined

    def _exec_read(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._call() as conn:
            return conn.execute(self._native(sql), tuple(params)).fetchall()

    def _key_time(self, iso: str) -> Any:
        return parse_timestamp(iso)

    # ------------------------------------------------------------------ ad-hoc reads

    def query(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
        with self._read_lock:
            if self._read is None or self._read.closed or self._read.broken:
                self._read = self._connect()
                self._read.read_only = True  # every transaction psycopg opens is BEGIN READ ONLY
            conn = self._read
            try:
                with conn.transaction():
                    # prepare=True: the extended protocol, one statement only.
                    cur = conn.execute(sql, tuple(params) if params else None, prepare=True)
                    if cur.description is None:
                        return [], []
                    return [d.name for d in cur.description], cur.fetchall()
            except pg_errors.ReadOnlySqlTransaction as exc:
                raise ReadOnlyError(f"the ledger query is read-only; refused: {exc}") from None
            except psycopg.OperationalError as exc:
                with contextlib.suppress(Exception):
                    conn.close()
                self._read = None
                raise StoreError(f"ledger database error: {exc}") from exc
            except psycopg.Error as exc:
                raise QueryError(str(exc).strip()) from None

    def timestamp_param(self, value: str | datetime) -> Any:
        """A timestamp as this backend compares it with the ``timestamp`` column (for query params)."""
        return parse_timestamp(value)

    def day_param(self, value: date) -> Any:
        """A UTC day as this backend compares it with the rollup's ``day`` column."""
        return value

    def close(self) -> None:
        with self._lock:
            self._drop()
        with self._read_lock:
            if self._read is not None:
                with contextlib.suppress(Exception):
                    self._read.close()
                self._read = None
