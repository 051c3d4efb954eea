"""Schema versions: how a new ledger is created and how an older one is brought up to date.

A new ledger gets the current schema in one go (``create_statements``), generated from ``schema``.
A ledger made by an older version runs the steps of each version after its own, in order; a
version's step is generated too: the columns it added (``Column.since``), plus what else it did.

1. ``http_analytics`` and ``api_keys``
2. ``usage_source`` and ``usage_reason``: how each request's usage was counted (issue 11 and 12)
3. reserved (stays empty: databases at version 4 exist)
4. the daily rollup kept by a trigger; on PostgreSQL monthly partitions (issue 17)
5. key expiry, rotation and last use (issue 15)
"""

from __future__ import annotations

from typing import Any

from exporter.ledger import pg_partitions, rollup
from exporter.ledger.backend import StoreError
from exporter.ledger.schema import (
    API_KEYS,
    DIALECTS,
    HTTP_ANALYTICS,
    SCHEMA_VERSION,
    TABLES,
    Dialect,
    add_columns,
    create_table,
)

ROLLUP_SINCE = 4


def create_statements(dialect: Dialect, version: int = SCHEMA_VERSION) -> list[str]:
    """The DDL of a new ledger as schema ``version`` has it (older versions: to build old ledgers)."""
    out = [*create_table(HTTP_ANALYTICS, dialect, version), *create_table(API_KEYS, dialect, version)]
    if version >= ROLLUP_SINCE:
        if dialect == "postgresql":
            out.append(pg_partitions.ENSURE_PARTITION_FN)
        out += rollup.ddl(dialect)
    return out


def upgrade_statements(dialect: Dialect, version: int) -> list[str]:
    """What schema ``version`` changes in a ledger at ``version - 1``."""
    if version == 1:
        return create_statements(dialect, 1)
    out = [stmt for table in TABLES for stmt in add_columns(table, dialect, version)]
    if version == ROLLUP_SINCE:
        # PostgreSQL: the rows move to the partitioned table, and the trigger sums them on the way.
        out += pg_partitions.MIGRATION if dialect == "postgresql" else rollup.sqlite_upgrade()
    return out


MIGRATIONS: dict[Dialect, dict[int, list[str]]] = {
    d: {v: upgrade_statements(d, v) for v in range(1, SCHEMA_VERSION + 1)} for d in DIALECTS
}


def pending(dialect: Dialect, current: int) -> list[tuple[list[int], list[str]]]:
    """What brings a ledger at schema version ``current`` (0: none yet) up to date, in order: the
    versions each part completes and its statements."""
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"ledger schema version {current} is newer than this program supports ({SCHEMA_VERSION})"
        )
    if current == 0:
        return [(list(range(1, SCHEMA_VERSION + 1)), create_statements(dialect))]
    return [([v], MIGRATIONS[dialect][v]) for v in range(current + 1, SCHEMA_VERSION + 1)]


def migrate(conn: Any, dialect: Dialect) -> None:
    """Create or upgrade the schema through ``conn`` (a DB-API connection with ``execute``), inside
    the caller's transaction, which also keeps other processes from migrating at the same time."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    current = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
    for versions, statements in pending(dialect, current):
        for stmt in statements:
            conn.execute(stmt)
        conn.execute(
            "INSERT INTO schema_version (version) VALUES " + ", ".join(f"({int(v)})" for v in versions)
        )
