"""`chargeback ledger query` cannot run programs, read server files or write (issue 11, item 7), on the
real PostgreSQL as the superuser ``postgres`` and as a read-only role, and on SQLite; a mistyped
SQLite path is an error, never a new database."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from support.ledger import PG_ADMIN_URL, make_row, pg_available, temp_pg_database

from exporter.ledger.adhoc import check_statement, sql_words
from exporter.ledger.store import ReadOnlyError, open_store

REFUSED = "chargeback: the ledger query is read-only; refused: "


def chargeback(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter.cli", *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


@pytest.fixture
def pg_ledger() -> Iterator[str]:
    reason = pg_available()
    if reason:
        pytest.skip(reason)
    with temp_pg_database("cb_query") as url:
        store = open_store(url)
        store.insert_rows([make_row(i) for i in range(5)])
        store.close()
        yield url


@pytest.fixture
def reader_url(pg_ledger: str) -> Iterator[str]:
    """A login role that may only read the ledger's tables (what docs/ledger.md sets up)."""
    role = f"cb_reader_{secrets.token_hex(4)}"
    with psycopg.connect(pg_ledger, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    parts = urlsplit(pg_ledger)
    try:
        yield urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
    finally:
        with psycopg.connect(pg_ledger, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_superuser_is_refused_without_the_flag(pg_ledger: str) -> None:
    out = chargeback("ledger", "query", "SELECT COUNT(*) FROM http_analytics", "--ledger.url", pg_ledger)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == (
        "chargeback: refusing to run an ad-hoc query as PostgreSQL role 'postgres' (--ledger.url), a superuser"
        " that can run programs and read server files: set ledger.query_url to a read-only role"
        " (docs/ledger.md), or pass --allow-superuser\n"
    )


def test_superuser_cannot_run_programs_or_read_files(pg_ledger: str, tmp_path: Path) -> None:
    out_file = tmp_path / "out.txt"
    attacks = {
        f"COPY (SELECT 1) TO PROGRAM 'id > {out_file}'": "COPY (a query starts with",
        f"copy http_analytics to '{out_file}'": "COPY (a query starts with",
        "SELECT pg_read_file('/etc/hostname')": "pg_read_file() reaches beyond the ledger",
        "SELECT \"pg_read_file\"('/etc/hostname')": "pg_read_file() reaches beyond the ledger",
        "SELECT pg_catalog.pg_read_binary_file('/etc/hostname')": "pg_read_binary_file() reaches beyond",
        "SELECT * FROM pg_ls_dir('.')": "pg_ls_dir() reaches beyond the ledger",
        f"SELECT lo_export(lo_import('/etc/hostname'), '{out_file}')": "lo_export() reaches beyond",
        "SELECT set_config('role', 'none', false)": "set_config() reaches beyond the ledger",
        "SELECT query_to_xml('select 1', true, true, '')": "query_to_xml() reaches beyond the ledger",
        "DO $$ BEGIN PERFORM 1; END $$": "DO (a query starts with",
        "CALL nothing()": "CALL (a query starts with",
        "SET ROLE postgres": "SET (a query starts with",
        # a backslash does not end a standard string: the call after it is seen
        "SELECT 'x\\' , pg_read_file('/etc/hostname') --'": "pg_read_file() reaches beyond the ledger",
        'SELECT 1 FROM U&"http_analytics"': 'Unicode-escaped identifiers (U&"...") are not allowed',
    }
    for sql, reason in attacks.items():
        out = chargeback("ledger", "query", sql, "--ledger.url", pg_ledger, "--allow-superuser")
        assert out.returncode == 1 and out.stdout == "", (sql, out.stdout)
        assert out.stderr.startswith(REFUSED) and reason in out.stderr, (sql, out.stderr)
    assert not out_file.exists()
    # reading the ledger works, as pg_read_all_data (so whatever a check misses has no file access)
    out = chargeback(
        "ledger", "query", "SELECT current_user, COUNT(*) FROM http_analytics", "--csv",
        "--ledger.url", pg_ledger, "--allow-superuser",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout == "current_user,count\npg_read_all_data,5\n"
    out = chargeback(
        "ledger", "query", "DELETE FROM http_analytics", "--ledger.url", pg_ledger, "--allow-superuser"
    )
    assert out.returncode == 1 and "DELETE (a query starts with" in out.stderr
    out = chargeback(
        "ledger", "query", "WITH gone AS (DELETE FROM http_analytics RETURNING 1) SELECT COUNT(*) FROM gone",
        "--ledger.url", pg_ledger, "--allow-superuser",
    )  # fmt: skip
    assert out.returncode == 1 and out.stderr.startswith(REFUSED), out.stderr
    assert "read-only transaction" in out.stderr
    assert open_store(pg_ledger).count_rows() == 5


def test_query_url_is_used_and_still_read_only(pg_ledger: str, reader_url: str, tmp_path: Path) -> None:
    cfg = tmp_path / "chargeback.yaml"
    cfg.write_text(
        "pools: {p: {gpu_hourly_cost: 1, gpus: 1}}\n"
        "models: {m0: {upstreams: ['http://127.0.0.1:9/v1'], pool: p}}\n"
        f"ledger: {{url: '{pg_ledger}', query_url: '{reader_url}'}}\n"
    )
    out = chargeback("ledger", "query", "SELECT current_user = session_user AS own, COUNT(*) FROM http_analytics",
                     "--csv", "--config.file", str(cfg))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout == "own,count\ntrue,5\n"
    out_file = tmp_path / "out.txt"
    out = chargeback(
        "ledger", "query", f"COPY (SELECT 1) TO PROGRAM 'id > {out_file}'", "--config.file", str(cfg)
    )
    assert out.returncode == 1 and out.stderr.startswith(REFUSED)
    out = chargeback("ledger", "query", "SELECT pg_sleep(0), count(*) FROM pg_stat_file('/etc/hostname')",
                     "--config.file", str(cfg))  # fmt: skip
    assert out.returncode == 1 and "pg_stat_file() reaches beyond the ledger" in out.stderr
    assert not out_file.exists()


def test_sqlite_path_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "ledgr.db"
    out = chargeback("ledger", "query", "SELECT 1", "--ledger.url", f"sqlite:///{missing}")
    assert out.returncode == 1
    assert (
        out.stderr
        == f"chargeback: SQLite ledger {missing} does not exist (from --ledger.url); check the path\n"
    )
    assert not missing.exists() and list(tmp_path.iterdir()) == []


def test_sqlite_ledger_is_opened_read_only(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ledger.db"
    store = open_store(url)
    store.insert_rows([make_row(i) for i in range(3)])
    store.close()
    for sql in ("DELETE FROM http_analytics", "ATTACH DATABASE 'x.db' AS x", "PRAGMA query_only = OFF"):
        out = chargeback("ledger", "query", sql, "--ledger.url", url, cwd=tmp_path)
        assert out.returncode == 1 and out.stderr.startswith(REFUSED), (sql, out.stderr)
    out = chargeback(
        "ledger", "query", "SELECT COUNT(*) AS n FROM http_analytics", "--csv", "--ledger.url", url
    )
    assert out.stdout == "n\n3\n"
    assert not (tmp_path / "x.db").exists() and open_store(url).count_rows() == 3


@pytest.mark.parametrize(
    "sql, words",
    [
        ("SELECT a -- pg_read_file(\n FROM t", ["select", "a", "from", "t"]),
        ("SELECT /* /* nested */ pg_ls_dir */ 1", ["select"]),
        ("SELECT $tag$ pg_read_file $tag$, $$x$$", ["select"]),
        ("SELECT E'it\\'s pg_read_file', 'a''b'", ["select"]),
        ('SELECT "Weird""Name" FROM "T"', ["select", 'weird"name', "from", "t"]),
    ],
)
def test_sql_words_skip_strings_and_comments_like_postgresql(sql: str, words: list[str]) -> None:
    assert sql_words(sql) == words
    check_statement(sql)  # none of them calls anything


def test_check_statement_refuses_a_call_hidden_after_a_string() -> None:
    with pytest.raises(ReadOnlyError, match=r"lo_import\(\) reaches beyond"):
        check_statement("SELECT E'\\\\', lo_import('/etc/passwd')")
