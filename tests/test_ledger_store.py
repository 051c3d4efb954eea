"""Ledger stores on a real SQLite file and a real PostgreSQL database: schema, idempotent inserts,
the issue's verbatim SQL with exact sums, read-only ad-hoc queries, the summary."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from datetime import UTC, datetime

import pytest
from support.ledger import SUMMARY_COLUMNS, VERBATIM_SQL, make_row

from exporter.ledger.sqlite_store import MIGRATIONS
from exporter.ledger.store import QueryError, ReadOnlyError, StoreError, open_store

VERSIONS = [(v,) for v in sorted(MIGRATIONS)]


@pytest.fixture
def store(ledger_url):
    s = open_store(ledger_url)
    yield s
    s.close()


def expected_sums(rows):
    sums = defaultdict(lambda: [0, 0, 0])
    for r in rows:
        s = sums[(r.user_email, r.model)]
        s[0] += r.total_tokens
        s[1] += r.prompt_tokens
        s[2] += r.completion_tokens
    return {k: tuple(v) for k, v in sums.items()}


def test_schema_is_created_with_indexes_and_version(store, ledger_url):
    if store.backend == "sqlite":
        names = {r[0] for r in store.query("SELECT name FROM public.sqlite_master")[1]}
    else:
        names = {
            r[0]
            for r in store.query("SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace")[
                1
            ]
        }
    assert {
        "http_analytics",
        "api_keys",
        "schema_version",
        "http_analytics_timestamp",
        "http_analytics_user_model",
    } <= names
    assert store.query("SELECT version FROM schema_version ORDER BY version")[1] == VERSIONS
    cols = store.query("SELECT * FROM http_analytics")[0]
    from exporter.ledger.row import COLUMNS

    assert tuple(cols) == COLUMNS
    # Opening again does not migrate twice.
    open_store(ledger_url).close()
    assert store.query("SELECT version FROM schema_version ORDER BY version")[1] == VERSIONS


def test_insert_is_idempotent_on_request_id(store):
    rows = [make_row(i) for i in range(250)]
    assert store.insert_rows(rows) == 250
    assert store.insert_rows(rows[100:]) == 0  # a replay adds nothing
    assert store.insert_rows([*rows[:10], make_row(250)]) == 1
    assert store.count_rows() == 251


def test_verbatim_issue_query_exact_sums(store):
    rows = [make_row(i) for i in range(1000)]
    store.insert_rows(rows)
    cols, result = store.query(VERBATIM_SQL)
    assert cols == ["user_email", "model", "total_tokens_sum", "prompt_tokens_sum", "output_tokens_sum"]
    got = {(r[0], r[1]): (int(r[2]), int(r[3]), int(r[4])) for r in result}
    assert got == expected_sums(rows)
    totals = [int(r[2]) for r in result]
    assert totals == sorted(totals, reverse=True)
    assert sum(totals) == sum(r.total_tokens for r in rows)


def test_row_values_round_trip(store):
    row = make_row(1, error="upstream timeout", status_code=504, ttft_ms=None, estimated=True)
    store.insert_rows([row])
    cols, [got] = store.query("SELECT * FROM http_analytics")
    d = dict(zip(cols, got, strict=True))
    assert d["status_code"] == 504 and d["error"] == "upstream timeout" and d["ttft_ms"] is None
    assert bool(d["estimated"]) is True and bool(d["stream"]) is True
    assert d["duration_ms"] == 12.5
    ts = d["timestamp"]
    if isinstance(ts, datetime):
        assert ts == datetime(2024, 5, 2, 10, 0, 1, 123, tzinfo=UTC)
    else:
        assert ts == "2024-05-02T10:00:01.000123Z"


def test_timestamps_are_normalised_to_utc(store):
    store.insert_rows(
        [make_row(1, timestamp="2024-05-02T12:00:00+02:00"), make_row(2, timestamp="2024-05-02T10:00:00.5")]
    )
    _, rows = store.summary(
        datetime(2024, 5, 2, 10, 0, tzinfo=UTC), datetime(2024, 5, 2, 10, 0, 1, tzinfo=UTC)
    )
    assert sum(r[3] for r in rows) == 2


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM http_analytics",
        "UPDATE http_analytics SET total_tokens = 0",
        "INSERT INTO api_keys (key_id) VALUES ('x')",
        "DROP TABLE http_analytics",
        "CREATE TABLE evil (a INT)",
    ],
)
def test_query_is_read_only(store, sql):
    store.insert_rows([make_row(1)])
    with pytest.raises(ReadOnlyError, match="read-only"):
        store.query(sql)
    assert store.count_rows() == 1


def test_query_refuses_statement_stacking_and_reports_bad_sql(store):
    store.insert_rows([make_row(1)])
    with pytest.raises(QueryError):
        store.query("SELECT 1; DELETE FROM http_analytics")
    with pytest.raises(QueryError, match="nope"):
        store.query("SELECT nope FROM http_analytics")
    assert store.count_rows() == 1


def test_sqlite_query_cannot_attach_or_change_pragmas(tmp_path):
    s = open_store(f"sqlite:///{tmp_path}/l.db")
    try:
        for sql in (f"ATTACH DATABASE '{tmp_path}/other.db' AS x", "PRAGMA query_only = OFF", "VACUUM"):
            with pytest.raises(ReadOnlyError):
                s.query(sql)
        assert not (tmp_path / "other.db").exists()
    finally:
        s.close()
    assert sqlite3.connect(tmp_path / "l.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_summary_exact_per_user_team_model(store):
    rows = [make_row(i) for i in range(600)]
    store.insert_rows(rows)
    since, until = datetime(2024, 5, 3, tzinfo=UTC), datetime(2024, 5, 10, tzinfo=UTC)
    cols, result = store.summary(since, until)
    assert cols == SUMMARY_COLUMNS
    want = defaultdict(lambda: [0] * 6)
    for r in rows:
        ts = datetime.fromisoformat(r.timestamp)
        if since <= ts < until:
            w = want[(r.user_email, r.team, r.model)]
            for j, v in enumerate(
                (1, r.prompt_tokens, r.completion_tokens, r.total_tokens, r.cached_tokens, int(r.estimated))
            ):
                w[j] += v
    assert {tuple(r[:3]): list(r[3:]) for r in result} == dict(want)
    assert sum(r[3] for r in result) == 7 * 22  # days 3..9 of a 28-day cycle over 600 rows
    assert len(store.summary(None, None)[1]) == 6


def test_keys_lifecycle_in_store(store):
    from exporter.ledger.keys import TOKEN_PREFIX, hash_token

    token, rec = store.create_key("alice@corp.example", "research")
    assert token.startswith(TOKEN_PREFIX) and rec.prefix == token[:12]
    token2, rec2 = store.create_key("alice@corp.example", "research")
    _, rec3 = store.create_key("bob@corp.example", "support")
    active = dict(store.load_active_keys())
    assert active[hash_token(token)].key_id == rec.key_id and len(active) == 3
    # the token itself is nowhere in the database
    _, rows = store.query("SELECT * FROM api_keys")
    assert not any(token in str(v) or token2 in str(v) for r in rows for v in r)
    assert [k.key_id for k in store.revoke_key(rec2.prefix)] == [rec2.key_id]
    assert store.revoke_key(rec2.key_id) == []  # already revoked
    assert [k.key_id for k in store.revoke_user_keys("alice@corp.example")] == [rec.key_id]
    assert [k.key_id for _, k in store.load_active_keys()] == [rec3.key_id]
    listed = {k.key_id: k for k in store.list_keys()}
    assert listed[rec.key_id].revoked_at is not None and listed[rec3.key_id].revoked_at is None
    assert [k.key_id for k in store.list_keys(include_revoked=False)] == [rec3.key_id]


def test_bad_urls_give_clear_errors(tmp_path):
    with pytest.raises(StoreError, match="unsupported ledger URL"):
        open_store("mysql://x")
    with pytest.raises(StoreError, match="sqlite:///"):
        open_store("sqlite:/x.db")
    with pytest.raises(StoreError, match="cannot connect"):
        open_store("postgresql://postgres@127.0.0.1:1/none")


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "l.db"
    open_store(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as c:
        c.execute("INSERT INTO schema_version VALUES (99)")
    with pytest.raises(StoreError, match="newer"):
        open_store(f"sqlite:///{path}")
