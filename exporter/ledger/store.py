"""Ledger database access: ``open_store(url)`` returns a synchronous store for SQLite or PostgreSQL.

Stores are meant to be used from worker threads (the proxy calls them through
``asyncio.to_thread`` or the writer's own thread); each method is safe to call from any thread.
The schema is created or migrated when a store is opened.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from exporter.keys import KeyRecord
from exporter.ledger.row import LedgerRow


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


class LedgerStore(Protocol):
    url: str
    backend: str  # "sqlite" | "postgresql"
    placeholder: str  # "?" (SQLite) or "%s" (PostgreSQL), for query(sql, params)

    def timestamp_param(self, value: str | datetime) -> Any:
        """A timestamp as this backend compares it with the ``timestamp`` column."""
        ...

    def insert_rows(self, rows: Sequence[LedgerRow]) -> int:
        """Insert in one transaction, skipping request_ids already present; returns rows added."""
        ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one read-only statement; returns (column names, rows)."""
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
    if url.startswith("sqlite:"):
        from exporter.ledger.sqlite_store import SqliteStore

        return SqliteStore(url, **options)
    if url.startswith(("postgresql://", "postgres://")):
        from exporter.ledger.pg_store import PostgresStore

        return PostgresStore(url, **options)
    raise StoreError(
        f"unsupported ledger URL {redact_url(url)!r}: expected sqlite:///PATH or postgresql://..."
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


def row_values(row: LedgerRow) -> tuple[Any, ...]:
    """The row as checked Python values in COLUMNS order (timestamp as aware datetime)."""
    try:
        if not row.request_id:
            raise RowError("request_id is empty")
        return (
            str(row.request_id),
            parse_timestamp(row.timestamp),
            str(row.user_email),
            str(row.team),
            str(row.model),
            str(row.endpoint),
            int(row.status_code),
            int(row.prompt_tokens),
            int(row.completion_tokens),
            int(row.total_tokens),
            int(row.cached_tokens),
            bool(row.estimated),
            bool(row.stream),
            float(row.duration_ms),
            None if row.ttft_ms is None else float(row.ttft_ms),
            str(row.api_key_id),
            str(row.upstream),
            str(row.error or ""),
            str(row.usage_source or ""),
            str(row.usage_reason or ""),
        )
    except (TypeError, ValueError) as exc:
        raise RowError(f"request {getattr(row, 'request_id', '?')!r}: {exc}") from None


SUMMARY_COLUMNS = [
    "user_email", "team", "model", "requests", "prompt_tokens", "completion_tokens",
    "total_tokens", "cached_tokens", "estimated",
]  # fmt: skip


def summary_sql(placeholder: str, since: bool, until: bool) -> str:
    where = []
    if since:
        where.append(f"timestamp >= {placeholder}")
    if until:
        where.append(f"timestamp < {placeholder}")
    return (
        "SELECT user_email, team, model, COUNT(*) AS requests,"
        " COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens,"
        " COALESCE(SUM(completion_tokens), 0) AS completion_tokens,"
        " COALESCE(SUM(total_tokens), 0) AS total_tokens,"
        " COALESCE(SUM(cached_tokens), 0) AS cached_tokens,"
        " SUM(CASE WHEN estimated THEN 1 ELSE 0 END) AS estimated"
        " FROM http_analytics"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " GROUP BY user_email, team, model ORDER BY team, user_email, model"
    )


_IDENT = re.compile(r"^[A-Za-z0-9_.@+:-]+$")


def check_ident(value: str, what: str) -> str:
    if not value or not _IDENT.match(value):
        raise StoreError(f"invalid {what} {value!r}")
    return value


class StoreOpsMixin(abc.ABC):
    """Operations shared by both backends: API keys, the row count and the summary. Internal SQL uses
    '?' placeholders; a backend provides ``_exec_write`` (one transaction, returns fetched rows),
    ``_exec_read``, and the ``LedgerStore`` members ``placeholder``, ``timestamp_param`` and ``query``."""

    placeholder: str

    @abc.abstractmethod
    def _exec_write(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]: ...

    @abc.abstractmethod
    def _exec_read(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]: ...

    _KEY_COLUMNS = (
        "key_id, user_email, team, created_at, revoked_at, prefix, expires_at, rotated_to, last_used_at"
    )
    _INSERT_KEY = (
        "INSERT INTO api_keys (key_id, prefix, token_hash, user_email, team, created_at, revoked_at,"
        " expires_at, rotated_to) VALUES (?, ?, ?, ?, ?, ?, NULL, ?, '')"
    )

    @staticmethod
    def _record(r: tuple[Any, ...]) -> KeyRecord:
        return KeyRecord(
            key_id=r[0],
            user_email=r[1],
            team=r[2],
            created_at=iso_seconds(r[3]) or "",
            revoked_at=iso_seconds(r[4]),
            prefix=r[5],
            expires_at=iso_seconds(r[6]),
            rotated_to=r[7] or "",
            last_used_at=iso_seconds(r[8]),
        )

    def create_key(self, user_email: str, team: str, expires_at: str | None = None) -> tuple[str, KeyRecord]:
        """A new key; ``expires_at`` (ISO UTC, 'YYYY-MM-DDTHH:MM:SSZ') or None for one that never expires."""
        from exporter.keys import display_prefix, generate_key_id, generate_token, hash_token

        check_ident(user_email, "user email")
        check_ident(team, "team")
        token = generate_token()
        key_id = generate_key_id()
        now = utc_now_iso()
        expires = self._key_time(expires_at) if expires_at else None
        self._exec_write(
            self._INSERT_KEY,
            (
                key_id,
                display_prefix(token),
                hash_token(token),
                user_email,
                team,
                self._key_time(now),
                expires,
            ),
        )
        return token, KeyRecord(key_id, user_email, team, now, None, display_prefix(token), expires_at)

    def rotate_key(self, key_id: str, overlap_seconds: float) -> tuple[str, KeyRecord, KeyRecord]:
        """A new key for the same user and team (same lifetime as the old one had, if it expires);
        the old key stays valid for ``overlap_seconds`` more (or until it expires anyway).
        Returns (new token, new key, old key as updated)."""
        from exporter.ledger.store import StoreError

        rows = self._exec_read(f"SELECT {self._KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,))
        if not rows:
            raise StoreError(f"no key {key_id!r}")
        old = self._record(rows[0])
        if old.revoked_at is not None:
            raise StoreError(f"key {key_id} was revoked at {old.revoked_at}; create a new one instead")
        now = datetime.now(UTC)
        if old.expires_ts is not None and old.expires_ts <= now.timestamp():
            raise StoreError(f"key {key_id} expired at {old.expires_at}; create a new one instead")
        new_expiry = None
        if old.expires_ts is not None:
            created = parse_timestamp(old.created_at)
            lifetime = old.expires_ts - created.timestamp()
            new_expiry = datetime.fromtimestamp(now.timestamp() + lifetime, UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )
        token, new = self.create_key(old.user_email, old.team, new_expiry)
        cut = now.timestamp() + overlap_seconds
        if old.expires_ts is not None:
            cut = min(cut, old.expires_ts)
        cut_iso = datetime.fromtimestamp(cut, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        got = self._exec_write(
            f"UPDATE api_keys SET expires_at = ?, rotated_to = ? WHERE key_id = ? RETURNING {self._KEY_COLUMNS}",
            (self._key_time(cut_iso), new.key_id, key_id),
        )
        return token, new, self._record(got[0])

    def touch_keys(self, used: dict[str, str]) -> None:
        """Set last use (ISO UTC) of many keys in one transaction; never moves a time backwards."""
        if not used:
            return
        self._exec_write_many(
            "UPDATE api_keys SET last_used_at = ? WHERE key_id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
            [(self._key_time(t), k, self._key_time(t)) for k, t in sorted(used.items())],
        )

    def create_keys(
        self,
        entries: Sequence[tuple[str, str] | tuple[str, str, str | None]],
        before_store: Callable[[list[tuple[str, KeyRecord]]], None] | None = None,
    ) -> list[tuple[str, KeyRecord]]:
        """One new key per (user_email, team[, expires_at ISO UTC or None]), all in one transaction (bulk import): either every
        key is stored or none is. ``before_store`` gets the tokens first (to save them where the
        caller wants them: a key whose token was never saved is useless). Returns (token, record)
        in the order given."""
        from exporter.keys import display_prefix, generate_key_id, generate_token, hash_token

        now = utc_now_iso()
        when = self._key_time(now)
        out: list[tuple[str, KeyRecord]] = []
        params: list[tuple[Any, ...]] = []
        for entry in entries:
            user_email, team = entry[0], entry[1]
            expires_at = entry[2] if len(entry) > 2 else None  # type: ignore[misc]
            check_ident(user_email, "user email")
            check_ident(team, "team")
            token, key_id = generate_token(), generate_key_id()
            prefix = display_prefix(token)
            expires = self._key_time(expires_at) if expires_at else None
            params.append((key_id, prefix, hash_token(token), user_email, team, when, expires))
            out.append((token, KeyRecord(key_id, user_email, team, now, None, prefix, expires_at)))
        if before_store is not None:
            before_store(out)
        if params:
            self._exec_write_many(self._INSERT_KEY, params)
        return out

    def _exec_write_many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        """The statement once per parameter set, all in one transaction (backends may do better)."""
        for p in params:  # pragma: no cover - both backends override this
            self._exec_write(sql, p)

    def _key_time(self, iso: str) -> Any:
        return iso

    def list_keys(self, include_revoked: bool = True) -> list[KeyRecord]:
        sql = f"SELECT {self._KEY_COLUMNS} FROM api_keys"
        if not include_revoked:
            sql += " WHERE revoked_at IS NULL"
        sql += " ORDER BY created_at, key_id"
        return [self._record(r) for r in self._exec_read(sql, ())]

    def revoke_key(self, key_id_or_prefix_or_user: str) -> list[KeyRecord]:
        """Revoke the active key(s) matching a key id, a display prefix or a user email."""
        ident = key_id_or_prefix_or_user
        return self._revoke("key_id = ? OR prefix = ? OR user_email = ?", (ident, ident, ident))

    def revoke_user_keys(self, user_email: str) -> list[KeyRecord]:
        return self._revoke("user_email = ?", (user_email,))

    def _revoke(self, cond: str, params: Sequence[Any]) -> list[KeyRecord]:
        now = self._key_time(utc_now_iso())
        rows = self._exec_write(
            f"UPDATE api_keys SET revoked_at = ? WHERE revoked_at IS NULL AND ({cond})"
            f" RETURNING {self._KEY_COLUMNS}",
            (now, *params),
        )
        return sorted((self._record(r) for r in rows), key=lambda k: (k.created_at, k.key_id))

    def load_active_keys(self) -> list[tuple[str, KeyRecord]]:
        rows = self._exec_read(
            f"SELECT token_hash, {self._KEY_COLUMNS} FROM api_keys WHERE revoked_at IS NULL", ()
        )
        return [(r[0], self._record(r[1:])) for r in rows]

    def count_rows(self) -> int:
        return int(self._exec_read("SELECT COUNT(*) FROM http_analytics", ())[0][0])

    @abc.abstractmethod
    def timestamp_param(self, value: str | datetime) -> Any: ...

    @abc.abstractmethod
    def query(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[tuple[Any, ...]]]: ...

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
