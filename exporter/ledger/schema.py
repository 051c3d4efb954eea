"""The ledger's tables, written once: columns, keys and indexes of ``http_analytics``, ``api_keys``
and the daily rollup ``http_analytics_daily``, and the DDL of both dialects generated from them.

Every column records the schema version that added it (``since``), so the DDL of an older version
is generated too: ``create_statements(dialect, 1)`` is the ledger as version 1 made it (tests build
old ledgers that way and migrate them), and a version's added columns become its ``ALTER TABLE``
steps. New columns go at the end of their table, where ``ALTER TABLE ... ADD COLUMN`` puts them, so
a migrated ledger and a new one have the same column order.

On PostgreSQL ``http_analytics`` is partitioned by month from version 4 (see ``pg_partitions``):
its primary key then includes ``timestamp``, the partition key.

This module imports nothing from the ledger; ``migrations`` assembles the steps per version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Dialect = Literal["sqlite", "postgresql"]
DIALECTS: tuple[Dialect, ...] = ("sqlite", "postgresql")

SCHEMA_VERSION = 5


@dataclass(frozen=True, eq=False)  # compared (and hashed) by identity: one object per type
class Type:
    sqlite: str
    postgresql: str

    def sql(self, dialect: Dialect) -> str:
        return self.sqlite if dialect == "sqlite" else self.postgresql


TEXT = Type("TEXT", "TEXT")
INTEGER = Type("INTEGER", "INTEGER")
BIGINT = Type("INTEGER", "BIGINT")
BOOLEAN = Type("INTEGER", "BOOLEAN")  # SQLite: 0/1
DOUBLE = Type("REAL", "DOUBLE PRECISION")
TIMESTAMP = Type("TEXT", "TIMESTAMPTZ")  # SQLite: UTC 'YYYY-MM-DDTHH:MM:SS.ffffffZ' (text order = time order)
DATE = Type("TEXT", "DATE")  # SQLite: 'YYYY-MM-DD'


@dataclass(frozen=True)
class Column:
    name: str
    type: Type
    nullable: bool = False
    default: str | None = None  # a text default ('' for every one so far)
    unique: bool = False
    since: int = 1  # the schema version that added it

    def ddl(self, dialect: Dialect) -> str:
        out = f"{self.name} {self.type.sql(dialect)}"
        if not self.nullable:
            out += " NOT NULL"
        if self.unique:
            out += " UNIQUE"
        if self.default is not None:
            out += " DEFAULT '" + self.default.replace("'", "''") + "'"
        return out


@dataclass(frozen=True)
class Index:
    name: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    indexes: tuple[Index, ...] = ()
    since: int = 1
    # PostgreSQL only: partitioned by RANGE on this column from version ``partitioned_since`` (the
    # primary key then gets the column too), with a DEFAULT partition and ndistinct statistics on
    # ``group_columns``.
    partition_column: str | None = None
    partitioned_since: int = 0
    group_columns: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def columns_at(self, version: int = SCHEMA_VERSION) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.since <= version)

    def partitioned(self, dialect: Dialect, version: int = SCHEMA_VERSION) -> bool:
        return (
            dialect == "postgresql"
            and self.partition_column is not None
            and version >= self.partitioned_since
        )

    def key(self, dialect: Dialect, version: int = SCHEMA_VERSION) -> tuple[str, ...]:
        if self.partitioned(dialect, version) and self.partition_column not in self.primary_key:
            return (*self.primary_key, self.partition_column)  # type: ignore[return-value]
        return self.primary_key

    @property
    def default_partition(self) -> str:
        return f"{self.name}_default"

    @property
    def group_statistics(self) -> str:
        return f"{self.name}_groups"


HTTP_ANALYTICS = Table(
    "http_analytics",
    (
        Column("request_id", TEXT),  # unique; the proxy's X-Request-Id
        Column("timestamp", TIMESTAMP),  # request start, UTC
        Column("user_email", TEXT),
        Column("team", TEXT),
        Column("model", TEXT),
        Column("endpoint", TEXT),
        Column("status_code", INTEGER),
        Column("prompt_tokens", BIGINT),
        Column("completion_tokens", BIGINT),
        Column("total_tokens", BIGINT),
        Column("cached_tokens", BIGINT),
        Column("estimated", BOOLEAN),
        Column("stream", BOOLEAN),
        Column("duration_ms", DOUBLE),
        Column("ttft_ms", DOUBLE, nullable=True),
        Column("api_key_id", TEXT),
        Column("upstream", TEXT),
        Column("error", TEXT, default=""),
        # 2: how each request's usage was counted (issue 11 and 12)
        Column("usage_source", TEXT, default="", since=2),
        Column("usage_reason", TEXT, default="", since=2),
    ),
    primary_key=("request_id",),
    indexes=(
        Index("http_analytics_timestamp", ("timestamp",)),
        Index("http_analytics_user_model", ("user_email", "model")),
    ),
    # 4: monthly partitions (issue 17)
    partition_column="timestamp",
    partitioned_since=4,
    # (team, user, model) are strongly correlated (a user has one team): without the statistics
    # the planner multiplies their distinct counts and badly overestimates the groups.
    group_columns=("team", "user_email", "model"),
)

API_KEYS = Table(
    "api_keys",
    (
        Column("key_id", TEXT),
        Column("prefix", TEXT),
        Column("token_hash", TEXT, unique=True),
        Column("user_email", TEXT),
        Column("team", TEXT),
        Column("created_at", TIMESTAMP),
        Column("revoked_at", TIMESTAMP, nullable=True),
        # 5: key expiry, rotation and last use (issue 15)
        Column("expires_at", TIMESTAMP, nullable=True, since=5),
        Column("rotated_to", TEXT, default="", since=5),
        Column("last_used_at", TIMESTAMP, nullable=True, since=5),
    ),
    primary_key=("key_id",),
    indexes=(Index("api_keys_user", ("user_email",)),),
)

# 4: the daily rollup (issue 17); its sums are kept by a trigger (see ``rollup``).
HTTP_ANALYTICS_DAILY = Table(
    "http_analytics_daily",
    (
        Column("day", DATE),  # UTC day
        Column("user_email", TEXT),
        Column("team", TEXT),
        Column("model", TEXT),
        Column("requests", BIGINT),
        Column("prompt_tokens", BIGINT),
        Column("completion_tokens", BIGINT),
        Column("total_tokens", BIGINT),
        Column("cached_tokens", BIGINT),
        Column("duration_us", BIGINT),  # Σ round(duration_ms × 1000)
        Column("estimated", BIGINT),  # rows with estimated usage
    ),
    primary_key=("day", "user_email", "team", "model"),
    since=4,
)

TABLES = (HTTP_ANALYTICS, API_KEYS, HTTP_ANALYTICS_DAILY)


# --------------------------------------------------------------------------- DDL


def create_table(
    table: Table, dialect: Dialect, version: int = SCHEMA_VERSION, like: str | None = None
) -> list[str]:
    """CREATE TABLE (and on PostgreSQL, once partitioned, the default partition and the statistics)
    plus the indexes, for ``table`` as schema ``version`` has it; with the columns of the table
    ``like`` instead of the schema's, where a migration must keep whatever columns a ledger has."""
    key = table.key(dialect, version)
    if like is not None:
        body = [f"LIKE {like} INCLUDING DEFAULTS", f"PRIMARY KEY ({', '.join(key)})"]
    elif len(key) == 1:
        # Inline, as every version so far made it; on SQLite that also leaves out NOT NULL (SQLite
        # lets a key that is not an INTEGER be NULL; row_values refuses an empty request_id).
        body = [
            f"{c.name} {c.type.sql(dialect)} PRIMARY KEY" if c.name == key[0] else c.ddl(dialect)
            for c in table.columns_at(version)
        ]
    else:
        body = [c.ddl(dialect) for c in table.columns_at(version)]
        body.append(f"PRIMARY KEY ({', '.join(key)})")
    sql = f"CREATE TABLE {table.name} (\n    " + ",\n    ".join(body) + "\n)"
    out = []
    if table.partitioned(dialect, version):
        out.append(f"{sql} PARTITION BY RANGE ({table.partition_column})")
        out.append(f"CREATE TABLE {table.default_partition} PARTITION OF {table.name} DEFAULT")
    else:
        out.append(sql)
    out += create_indexes(table)
    if table.partitioned(dialect, version) and table.group_columns:
        out.append(group_statistics(table, table.group_statistics, table.name))
    return out


def create_indexes(table: Table) -> list[str]:
    return [f"CREATE INDEX {i.name} ON {table.name} ({', '.join(i.columns)})" for i in table.indexes]


def group_statistics(table: Table, name: str, on: str) -> str:
    """PostgreSQL's ndistinct statistics on the table's group columns (``name``/``on`` are SQL
    text, so the partition function can pass its format() placeholders)."""
    return f"CREATE STATISTICS {name} (ndistinct) ON {', '.join(table.group_columns)} FROM {on}"


def add_columns(table: Table, dialect: Dialect, version: int) -> list[str]:
    """ALTER TABLE for the columns that schema ``version`` added to an existing table."""
    if table.since >= version:
        return []
    return [
        f"ALTER TABLE {table.name} ADD COLUMN {c.ddl(dialect)}" for c in table.columns if c.since == version
    ]


def insert_sql(table: Table, dialect: Dialect) -> str:
    """One batch of rows in, skipping keys already present (see the stores for how they call it).

    SQLite: one parameter per column, for ``executemany``. PostgreSQL: one array per column,
    unnested server-side, so the batch is one statement and the rollup trigger aggregates it once.
    """
    cols = ", ".join(table.names)
    if dialect == "sqlite":
        values = "VALUES (" + ", ".join("?" * len(table.columns)) + ")"
        conflict = f"ON CONFLICT ({', '.join(table.primary_key)}) DO NOTHING"
    else:
        arrays = ", ".join(f"%s::{c.type.postgresql.lower()}[]" for c in table.columns)
        values = f"SELECT * FROM unnest({arrays})"
        conflict = "ON CONFLICT DO NOTHING"
    return f"INSERT INTO {table.name} ({cols}) {values} {conflict}"
