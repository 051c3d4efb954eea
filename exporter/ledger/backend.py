"""What the SQLite and PostgreSQL backends share: errors, value checks, timestamps and the SQL
both run (row count, summary). Key SQL is in ``keys``; ``store`` opens a backend.

This module imports neither backend nor ``store``, so the arrows point one way:
``store`` -> ``sqlite_store`` / ``pg_store`` -> ``keys`` -> ``backend``.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from exporter.ledger.row import LedgerRow
from exporter.ledger.schema import (
    BIGINT,
    BOOLEAN,
    DOUBLE,
    HTTP_ANALYTICS,
    INTEGER,
    TEXT,
    TIMESTAMP,
    Column,
    Type,
)


class StoreError(Exception):
    """A ledger database problem, with a message meant for people."""


class QueryError(StoreError):
    """An ad-hoc query failed (bad SQL, unknown column ...)."""


class ReadOnlyError(QueryError):
    """An ad-hoc query tried to change something."""


class RowError(StoreError):
    """A row that can never be written (bad value); retrying it would not help."""


def is_transient(exc: BaseException) -> bool:
    """True for failures that a retry may cure (the database is down, locked, slow, being
    migrated); False for permanent ones that only this data causes (a data or encoding error, a
    number out of range, a NUL refused by PostgreSQL). The writer retries the first kind without
    limit, and isolates and dead-letters rows that hit the second kind."""
    import sqlite3

    if isinstance(exc, RowError):
        return False
    if isinstance(exc, (StoreError, OSError, TimeoutError, sqlite3.OperationalError)):
        return True
    if isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc):
        return True
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    if isinstance(exc, (psycopg.DataError, psycopg.IntegrityError)):
        return False
    # connection lost, timeouts (57014 query_canceled), locks, resources; a schema that is being
    # migrated (42P01 undefined table) is cured by waiting too
    return isinstance(
        exc,
        (psycopg.OperationalError, psycopg.InterfaceError, psycopg.InternalError, psycopg.ProgrammingError),
    )


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


# --------------------------------------------------------------------------- shared helpers

TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def parse_timestamp(value: str | datetime) -> datetime:
    """An aware UTC datetime from an ISO 8601 string (naive means UTC) or a datetime."""
    if isinstance(value, datetime):
        dt = value
    else:
        try:
            dt = datetime.fromisoformat(value)
        except (TypeError, ValueError):
            raise RowError(f"timestamp {value!r} is not ISO 8601") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def canonical_timestamp(value: str | datetime) -> str:
    """UTC, microseconds and 'Z': the one text form the SQLite ledger stores, so text order = time order."""
    return parse_timestamp(value).strftime(TS_FORMAT)


def utc_now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_seconds(value: Any) -> str | None:
    """A key timestamp (datetime from PostgreSQL or text from SQLite) as 'YYYY-MM-DDTHH:MM:SSZ'."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


# How each column type's value is checked (and made the Python type both drivers bind).
_CHECK: dict[Type, str] = {
    TEXT: "str", INTEGER: "int", BIGINT: "int", BOOLEAN: "bool", DOUBLE: "float", TIMESTAMP: "parse_timestamp",
}  # fmt: skip


def _check_expr(column: Column) -> str:
    """Python for one column's checked value: None stays NULL where the column is nullable, and a
    missing value (None or empty) becomes its default where it has one."""
    value, check = f"row.{column.name}", _CHECK[column.type]
    if column.nullable:
        return f"None if {value} is None else {check}({value})"
    if column.default is not None:
        return f"{check}({value} or {column.default!r})"
    return f"{check}({value})"


def _row_checker() -> Callable[[LedgerRow], tuple[Any, ...]]:
    """The checks of every column as one generated function (as dataclasses make ``__init__``): it
    runs for every row written, and a loop over the columns takes three times as long."""
    body = ",\n        ".join(_check_expr(c) for c in HTTP_ANALYTICS.columns)
    namespace: dict[str, Any] = {"parse_timestamp": parse_timestamp}
    exec(f"def checked(row):\n    return (\n        {body},\n    )", namespace)
    return namespace["checked"]  # type: ignore[no-any-return]


_checked = _row_checker()


def row_values(row: LedgerRow) -> tuple[Any, ...]:
    """The row as checked Python values in COLUMNS order (timestamp as aware datetime)."""
    try:
        if not row.request_id:
            raise RowError("request_id is empty")
        return _checked(row)
    except (TypeError, ValueError) as exc:
        raise RowError(f"request {getattr(row, 'request_id', '?')!r}: {exc}") from None


SUMMARY_COLUMNS = [
    "user_email", "team", "model", "requests", "prompt_tokens", "completion_tokens",
    "total_tokens", "cached_tokens", "estimated",
]  # fmt: skip


_IDENT = re.compile(r"^[A-Za-z0-9_.@+:-]+$")


def check_ident(value: str, what: str) -> str:
    if not value or not _IDENT.match(value):
        raise StoreError(f"invalid {what} {value!r}")
    return value


class StoreOpsMixin(abc.ABC):
    """Operations shared by both backends: the row count, internal reads and the summary (API keys:
    ``KeyOps``). A backend provides ``_exec_read`` and the ``LedgerStore`` members ``placeholder``,
    ``timestamp_param``, ``day_param`` and ``query``."""

    placeholder: str

    @abc.abstractmethod
    def _exec_read(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]: ...

    def count_rows(self) -> int:
        return int(self._exec_read("SELECT COUNT(*) FROM http_analytics", ())[0][0])

    @abc.abstractmethod
    def timestamp_param(self, value: str | datetime) -> Any: ...

    @abc.abstractmethod
    def day_param(self, value: date) -> Any: ...

    @abc.abstractmethod
    def query(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[tuple[Any, ...]]]: ...

    def _native(self, sql: str) -> str:
        """Our own SQL marks parameters with '?' on both backends; this is where it becomes the
        backend's marker (ad-hoc queries are written with the backend's own)."""
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def select(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one of our own reads (parameters marked '?'), on the read-only connection."""
        return self.query(self._native(sql), params)[1]

    def summary(
        self, since: datetime | None, until: datetime | None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Requests and tokens per (user, team, model) in [since, until), as int on both backends;
        read from the daily rollup (raw rows only for partial UTC days at the edges)."""
        from exporter.ledger.rollup import totals

        got = totals(self, since, until)
        rows = [
            (user, team, model, t.requests, t.prompt_tokens, t.completion_tokens, t.total_tokens,
             t.cached_tokens, t.estimated)
            for (team, user, model), t in sorted(got.items())
        ]  # fmt: skip
        return list(SUMMARY_COLUMNS), rows
