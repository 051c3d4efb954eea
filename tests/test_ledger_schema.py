"""The ledger schema is written once (exporter/ledger/schema.py): the row, both dialects' DDL and a
real database of each backend agree with it, and a ledger made by schema version 1 and migrated
ends up exactly like a new one. Real SQLite files and real PostgreSQL."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import fields
from pathlib import Path

import psycopg
import pytest
from support.ledger import make_row, pg_available, temp_pg_database

from exporter.ledger import migrations, schema
from exporter.ledger.rollup import ROLLUP_SUMS, Totals
from exporter.ledger.row import COLUMNS, LedgerRow
from exporter.ledger.store import open_store

ROOT = Path(__file__).resolve().parent.parent
PG_TYPE_NAMES = {"TIMESTAMPTZ": "timestamp with time zone"}  # information_schema's spelling


def ddl_columns(statement: str) -> list[str]:
    """The column names of a generated CREATE TABLE, in order."""
    body = statement.split("(\n", 1)[1].rsplit("\n)", 1)[0]
    return [line.split()[0] for line in body.splitlines() if not line.strip().startswith("PRIMARY KEY (")]


def test_row_fields_and_both_dialects_ddl_have_the_schema_columns_in_order() -> None:
    assert tuple(f.name for f in fields(LedgerRow)) == COLUMNS == schema.HTTP_ANALYTICS.names
    for dialect in schema.DIALECTS:
        creates = [
            s for s in migrations.create_statements(dialect) if s.startswith("CREATE TABLE http_analytics (")
        ]
        assert len(creates) == 1
        assert tuple(ddl_columns(creates[0])) == COLUMNS
        insert = schema.insert_sql(schema.HTTP_ANALYTICS, dialect)
        assert insert.startswith(f"INSERT INTO http_analytics ({', '.join(COLUMNS)}) ")


def test_rollup_totals_are_the_daily_tables_sums() -> None:
    assert tuple(f.name for f in fields(Totals)) == ROLLUP_SUMS
    assert schema.HTTP_ANALYTICS_DAILY.names == (*schema.HTTP_ANALYTICS_DAILY.primary_key, *ROLLUP_SUMS)


def test_new_columns_go_at_the_end() -> None:
    """ALTER TABLE ADD COLUMN appends, so a migrated ledger keeps the schema's order only if each
    table lists its columns by the version that added them."""
    for table in schema.TABLES:
        since = [c.since for c in table.columns]
        assert since == sorted(since), table.name


def test_versions_are_numbered_without_gaps() -> None:
    for dialect in schema.DIALECTS:
        assert sorted(migrations.MIGRATIONS[dialect]) == list(range(1, schema.SCHEMA_VERSION + 1))
        assert migrations.MIGRATIONS[dialect][3] == []  # reserved, and stays empty


def test_report_package_holds_no_sql() -> None:
    """The reporter reads the ledger through ledger functions (rollup.totals), never by SQL of its own."""
    for path in sorted((ROOT / "exporter" / "report").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\bhttp_analytics|\bSELECT\s|\bFROM\s+\w+\s+WHERE\b", text), path.name


def test_docs_list_the_schema_columns() -> None:
    """docs/ledger.md's column table names every http_analytics column, in the schema's order."""
    text = (ROOT / "docs" / "ledger.md").read_text(encoding="utf-8")
    table = text.split("`http_analytics` has one row per request:", 1)[1].split("\n\n", 2)[1]
    named = [n for line in table.splitlines()[2:] for n in re.findall(r"`(\w+)`", line.split("|")[1])]
    assert tuple(named) == COLUMNS


# --------------------------------------------------------------------------- real databases


# What else a PostgreSQL ledger is made of, from the catalog (%s: the schema's table names).
PG_CATALOG = {
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes"
    " WHERE schemaname = current_schema() AND tablename = ANY(%s) ORDER BY 1, 2",
    "constraints": "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
    " WHERE conrelid::regclass::text = ANY(%s) ORDER BY 1, 2",
    "partitioned": "SELECT c.relname, pg_get_partkeydef(c.oid) FROM pg_partitioned_table p"
    " JOIN pg_class c ON c.oid = p.partrelid ORDER BY 1",
    "triggers": "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal"
    " AND tgrelid::regclass::text = ANY(%s) ORDER BY 1, 2",
    "functions": "SELECT proname FROM pg_proc WHERE proname LIKE 'chargeback%' ORDER BY 1",
    "statistics": "SELECT stxname FROM pg_statistic_ext WHERE stxrelid = 'http_analytics'::regclass ORDER BY 1",
}


def describe(url: str) -> dict[str, object]:
    """Columns (name, type, not null, default) of every schema table, their indexes and keys, the
    triggers and functions, as the database itself reports them."""
    names = [t.name for t in schema.TABLES]
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url[len("sqlite:///") :])
        try:
            out: dict[str, object] = {
                t: [(r[1], r[2], bool(r[3]), r[4]) for r in conn.execute(f"PRAGMA table_info({t})")]
                for t in names
            }
            out["keys"] = {
                t: [r[1] for r in sorted(conn.execute(f"PRAGMA table_info({t})"), key=lambda r: r[5]) if r[5]]
                for t in names
            }
            out["indexes"] = sorted(
                (r[1], r[2], tuple(c[2] for c in conn.execute(f"PRAGMA index_info({r[1]})")))
                for t in names
                for r in conn.execute(f"PRAGMA index_list({t})")
            )
            out["triggers"] = sorted(
                conn.execute("SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger'")
            )
        finally:
            conn.close()
        return out
    with psycopg.connect(url) as conn:
        out = {
            t: [
                (r[0], r[1], r[2] == "NO", r[3])
                for r in conn.execute(
                    "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position",
                    (t,),
                )
            ]
            for t in names
        }
        for name, sql in PG_CATALOG.items():
            out[name] = conn.execute(sql, (names,) if "%s" in sql else None).fetchall()
        return out


def expected_columns(dialect: schema.Dialect) -> dict[str, list[tuple[str, str, bool, str | None]]]:
    def type_name(c: schema.Column) -> str:
        t = c.type.sql(dialect)
        return t if dialect == "sqlite" else PG_TYPE_NAMES.get(t, t.lower())

    def default(c: schema.Column) -> str | None:
        if c.default is None:
            return None
        quoted = "'" + c.default.replace("'", "''") + "'"
        return quoted if dialect == "sqlite" else f"{quoted}::text"

    def not_null(t: schema.Table, c: schema.Column) -> bool:
        # SQLite's one-column text key is inline and nullable, as version 1 made it
        return not c.nullable and not (dialect == "sqlite" and t.primary_key == (c.name,))

    return {
        t.name: [(c.name, type_name(c), not_null(t, c), default(c)) for c in t.columns] for t in schema.TABLES
    }


@pytest.fixture
def second_url(ledger_url, tmp_path):
    """Another empty ledger of the same backend."""
    if ledger_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path}/other.db"
        return
    with temp_pg_database() as url:
        yield url


def test_a_new_ledger_has_exactly_the_schema(ledger_url) -> None:
    dialect = "sqlite" if ledger_url.startswith("sqlite") else "postgresql"
    open_store(ledger_url).close()
    got = describe(ledger_url)
    assert {t.name: got[t.name] for t in schema.TABLES} == expected_columns(dialect)
    if dialect == "sqlite":
        assert got["keys"] == {t.name: list(t.primary_key) for t in schema.TABLES}
    else:
        keys = {t: d.replace('"', "") for t, n, d in got["constraints"] if n.endswith("_pkey")}  # type: ignore[union-attr]
        assert keys == {t.name: f"PRIMARY KEY ({', '.join(t.key(dialect))})" for t in schema.TABLES}
        assert got["partitioned"] == [("http_analytics", 'RANGE ("timestamp")')]


def build_version_1(url: str) -> None:
    """A ledger exactly as schema version 1 made it, with a few rows."""
    rows = [make_row(i) for i in range(5)]
    cols = [c.name for c in schema.HTTP_ANALYTICS.columns_at(1)]
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url[len("sqlite:///") :])
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for stmt in migrations.MIGRATIONS["sqlite"][1]:
            conn.execute(stmt)
        conn.execute("INSERT INTO schema_version VALUES (1)")
        conn.executemany(
            f"INSERT INTO http_analytics ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            [[getattr(r, c) for c in cols] for r in rows],
        )
        conn.commit()
        conn.close()
        return
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for stmt in migrations.MIGRATIONS["postgresql"][1]:
            conn.execute(stmt)
        conn.execute("INSERT INTO schema_version VALUES (1)")
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO http_analytics ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
                [[getattr(r, c) for c in cols] for r in rows],
            )


def test_a_version_1_ledger_migrates_to_exactly_the_new_schema(ledger_url, second_url) -> None:
    build_version_1(ledger_url)
    store = open_store(ledger_url)
    try:
        assert store.query("SELECT version FROM schema_version ORDER BY version")[1] == [
            (v,) for v in range(1, schema.SCHEMA_VERSION + 1)
        ]
        assert store.count_rows() == 5
        assert sum(r[3] for r in store.summary(None, None)[1]) == 5  # the rollup holds the old rows
    finally:
        store.close()
    open_store(second_url).close()
    migrated, new = describe(ledger_url), describe(second_url)
    assert migrated == new


def test_pg_available_or_skipped() -> None:
    """Keeps the PostgreSQL half of this file honest: say so when it did not run."""
    reason = pg_available()
    if reason:
        pytest.skip(reason)


def test_a_column_an_administrator_added_survives_the_migrations(ledger_url) -> None:
    """Version 4 on PostgreSQL moves every row to a new, partitioned table: it takes the old table's
    columns as they are (LIKE), not the schema's, so nothing of a site's own is lost."""
    build_version_1(ledger_url)
    if ledger_url.startswith("sqlite"):
        conn = sqlite3.connect(ledger_url[len("sqlite:///") :])
        conn.execute("ALTER TABLE http_analytics ADD COLUMN site_note TEXT")
        conn.execute("UPDATE http_analytics SET site_note = 'audited'")
        conn.commit()
        conn.close()
    else:
        with psycopg.connect(ledger_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE http_analytics ADD COLUMN site_note TEXT")
            conn.execute("UPDATE http_analytics SET site_note = 'audited'")
    store = open_store(ledger_url)
    try:
        assert store.query("SELECT site_note, COUNT(*) FROM http_analytics GROUP BY 1")[1] == [("audited", 5)]
        # the proxy's inserts name their columns, so the extra one just stays empty
        assert store.insert_rows([make_row(99)]) == 1
        assert store.query("SELECT COUNT(*) FROM http_analytics WHERE site_note IS NULL")[1] == [(1,)]
    finally:
        store.close()
