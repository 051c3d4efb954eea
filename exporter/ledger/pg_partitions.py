"""PostgreSQL: ``http_analytics`` partitioned by month, partitions made ahead, retention.

Schema version 4 turns ``http_analytics`` into a table partitioned by RANGE on ``timestamp`` (UTC
months, ``http_analytics_YYYY_MM``) plus a DEFAULT partition, so no row is ever refused: a row for a
month without its own partition lands in the default one and is moved out when that month's
partition is created. A one-month report then reads one partition, however many months the ledger
keeps, and retention drops whole partitions instead of deleting rows.

A partitioned table's primary key must include the partition key, so the key is
``(request_id, timestamp)``. Replays stay idempotent because the proxy fixes a request's timestamp
(its start) once, and a replayed row (journal, spool, retry) carries the same request id and the
same timestamp.

``chargeback_ensure_partition(month)`` (a SQL function, so migration and writers share it) creates a
month's partition, moving any of its rows out of the default partition first; the store calls it
for the current month and the next two when opened and whenever the month changes.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any

from exporter.ledger import rollup
from exporter.ledger.schema import HTTP_ANALYTICS, create_table, group_statistics

MIGRATION_LOCK = 0x63626C65  # "cble": the advisory lock of schema migrations and partition creation
MONTHS_AHEAD = 2
_PART_NAME = re.compile(r"^http_analytics_(\d{4})_(\d{2})$")

ENSURE_PARTITION_FN = f"""CREATE FUNCTION chargeback_ensure_partition(month date) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    m date := date_trunc('month', month)::date;
    lo timestamptz := m::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (m + interval '1 month')::timestamp AT TIME ZONE 'UTC';
    part text := 'http_analytics_' || to_char(m, 'YYYY_MM');
BEGIN
    IF to_regclass(part) IS NOT NULL THEN
        RETURN false;
    END IF;
    PERFORM pg_advisory_xact_lock({MIGRATION_LOCK});  -- replicas creating the same month
    IF to_regclass(part) IS NOT NULL THEN
        RETURN false;
    END IF;
    IF EXISTS (SELECT 1 FROM http_analytics_default WHERE timestamp >= lo AND timestamp < hi) THEN
        -- The default partition may not keep rows of the new range: move them, then attach.
        EXECUTE format('CREATE TABLE %I (LIKE http_analytics INCLUDING DEFAULTS)', part);
        EXECUTE format('WITH moved AS (DELETE FROM http_analytics_default'
                       ' WHERE timestamp >= %L AND timestamp < %L RETURNING *)'
                       ' INSERT INTO %I SELECT * FROM moved', lo, hi, part);
        EXECUTE format('ALTER TABLE http_analytics ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       part, lo, hi);
    ELSE
        EXECUTE format('CREATE TABLE %I PARTITION OF http_analytics FOR VALUES FROM (%L) TO (%L)',
                       part, lo, hi);
    END IF;
    -- the partitioned table's statistics (see schema.HTTP_ANALYTICS), per partition
    EXECUTE format('{group_statistics(HTTP_ANALYTICS, "%I", "%I")}', part || '_groups', part);
    RETURN true;
END $$"""

_OLD = "http_analytics_unpartitioned"

# Version 4 (issue 17): the rows move to a partitioned table. LIKE: it works on an existing
# version-2/3 table whatever columns it has (one an administrator added stays).
MIGRATION: list[str] = [
    f"ALTER TABLE http_analytics RENAME TO {_OLD}",
    f"ALTER TABLE {_OLD} RENAME CONSTRAINT http_analytics_pkey TO {_OLD}_pkey",
    *(
        f"ALTER INDEX {i.name} RENAME TO {_OLD}{i.name.removeprefix('http_analytics')}"
        for i in HTTP_ANALYTICS.indexes
    ),
    *create_table(HTTP_ANALYTICS, "postgresql", 4, like=_OLD),
    ENSURE_PARTITION_FN,
    *rollup.ddl("postgresql"),
    # One partition for every month the old table has rows in, then the rows (the trigger fills
    # the rollup from them in the same statement).
    f"""SELECT chargeback_ensure_partition(m::date) FROM generate_series(
        date_trunc('month', (SELECT MIN(timestamp) AT TIME ZONE 'UTC' FROM {_OLD})),
        (SELECT MAX(timestamp) AT TIME ZONE 'UTC' FROM {_OLD}),
        interval '1 month') AS m""",
    f"INSERT INTO http_analytics SELECT * FROM {_OLD}",
    f"DROP TABLE {_OLD}",
    "ANALYZE http_analytics, http_analytics_daily",
]


def month_start(value: datetime | date) -> date:
    if isinstance(value, datetime):
        value = (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).date()
    return value.replace(day=1)


def add_months(d: date, n: int) -> date:
    y, m = divmod(d.year * 12 + d.month - 1 + n, 12)
    return date(y, m + 1, 1)


def months_to_ensure(now: datetime) -> list[date]:
    first = month_start(now)
    return [add_months(first, i) for i in range(MONTHS_AHEAD + 1)]


def ensure_partitions(conn: Any, months: list[date]) -> list[date]:
    """Create the partitions for these months (first of month, UTC) where missing; returns those made."""
    made = []
    for m in months:
        if conn.execute("SELECT chargeback_ensure_partition(%s)", (m,)).fetchone()[0]:
            made.append(m)
    return made


def partitions(conn: Any) -> list[tuple[str, date | None]]:
    """(name, month) of every partition; month None for the default partition."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'http_analytics'::regclass ORDER BY c.relname"
    ).fetchall()
    out: list[tuple[str, date | None]] = []
    for (name,) in rows:
        m = _PART_NAME.match(name)
        out.append((name, date(int(m.group(1)), int(m.group(2)), 1) if m else None))
    return out


def apply_retention(conn: Any, keep_months: int, now: datetime, drop: bool = True) -> dict[str, Any]:
    """Remove raw rows of months older than the last ``keep_months`` (the current month counts).

    Whole partitions are detached, then dropped unless ``drop`` is False (detached tables stay in
    the database, out of every query, for an archive job to dump). Old rows in the default partition
    are deleted. The rollup is kept. Returns what was done.
    """
    cutoff = add_months(month_start(now), -(keep_months - 1))
    cutoff_ts = datetime.combine(cutoff, datetime.min.time(), tzinfo=UTC)
    removed: list[str] = []
    for name, month in partitions(conn):
        if month is not None and month < cutoff:
            conn.execute(f'ALTER TABLE http_analytics DETACH PARTITION "{name}"')
            if drop:
                conn.execute(f'DROP TABLE "{name}"')
            removed.append(name)
    cur = conn.execute("DELETE FROM http_analytics_default WHERE timestamp < %s", (cutoff_ts,))
    return {"cutoff": cutoff, "partitions": removed, "default_rows_deleted": max(cur.rowcount, 0)}


def analyze(conn: Any) -> None:
    """Statistics for the partitioned table itself: autovacuum analyzes the partitions but never
    a partitioned parent, whose (extended) statistics plan queries that span several months."""
    conn.execute("ANALYZE http_analytics")
