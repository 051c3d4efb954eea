"""Ledger database access: ``open_store(url)`` returns a synchronous store for SQLite or PostgreSQL.

Stores are meant to be used from worker threads (the proxy calls them through
``asyncio.to_thread`` or the writer's own thread); each method is safe to call from any thread.
The schema is created or migrated when a store is opened.

This is the ledger's front door: callers import ``open_store``, ``LedgerStore`` and the errors from
here. What the backends share is in ``backend`` and ``keys``, which import neither this module nor
a backend, so imports point one way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Any, Protocol

from exporter.ledger.backend import (
    SUMMARY_COLUMNS,
    QueryError,
    ReadOnlyError,
    RowError,
    StoreError,
    is_transient,
    redact_url,
    row_values,
)
from exporter.ledger.keys import KeyRecord
from exporter.ledger.row import LedgerRow

__all__ = [
    "SUMMARY_COLUMNS",
    "LedgerStore",
    "QueryError",
    "ReadOnlyError",
    "RowError",
    "StoreError",
    "is_transient",
    "open_store",
    "redact_url",
    "row_values",
]


class LedgerStore(Protocol):
    url: str
    backend: str  # "sqlite" | "postgresql"
    placeholder: str  # "?" (SQLite) or "%s" (PostgreSQL), for query(sql, params)

    def timestamp_param(self, value: str | datetime) -> Any:
        """A timestamp as this backend compares it with the ``timestamp`` column."""
        ...

    def day_param(self, value: date) -> Any:
        """A UTC day as this backend compares it with the rollup's ``day`` column."""
        ...

    def insert_rows(self, rows: Sequence[LedgerRow]) -> int:
        """Insert in one transaction, skipping request_ids already present; returns rows added."""
        ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one read-only statement; returns (column names, rows)."""
        ...

    def select(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Our own read (parameters marked '?' on both backends); returns the rows."""
        ...

    def summary(
        self, since: datetime | None, until: datetime | None
    ) -> tuple[list[str], list[tuple[Any, ...]]]: ...

    def count_rows(self) -> int: ...

    def create_key(
        self, user_email: str, team: str, expires_at: str | None = None
    ) -> tuple[str, KeyRecord]: ...

    def create_keys(
        self,
        entries: Sequence[tuple[str, str] | tuple[str, str, str | None]],
        before_store: Callable[[list[tuple[str, KeyRecord]]], None] | None = None,
    ) -> list[tuple[str, KeyRecord]]: ...

    def apply_retention(
        self, keep_months: int, drop: bool = True, now: datetime | None = None
    ) -> dict[str, Any]:
        """Remove raw rows older than the last ``keep_months`` months; the daily rollup stays."""
        ...

    def list_keys(self, include_revoked: bool = True) -> list[KeyRecord]: ...

    def revoke_key(self, key_id_or_prefix_or_user: str) -> list[KeyRecord]: ...

    def revoke_user_keys(self, user_email: str) -> list[KeyRecord]: ...

    def load_active_keys(self) -> list[tuple[str, KeyRecord]]: ...

    def rotate_key(self, key_id: str, overlap_seconds: float) -> tuple[str, KeyRecord, KeyRecord]: ...

    def touch_keys(self, used: dict[str, str]) -> None: ...

    def close(self) -> None: ...


def open_store(url: str, **options: Any) -> LedgerStore:
    """Open (and create or migrate) the ledger at ``url``.

    ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` (SQLAlchemy's convention),
    ``sqlite://:memory:`` (tests), or ``postgresql://user:pass@host:port/db`` (also ``postgres://``).
    """
    from exporter.ledger.url import LedgerUrlError, parse_ledger_url

    try:
        backend = parse_ledger_url(url).backend
    except LedgerUrlError as exc:
        raise StoreError(str(exc)) from None
    if backend == "sqlite":
        from exporter.ledger.sqlite_store import SqliteStore

        return SqliteStore(url, **options)
    from exporter.ledger.pg_store import PostgresStore

    return PostgresStore(url, **options)
