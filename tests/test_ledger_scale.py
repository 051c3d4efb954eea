"""The ledger at scale (issue 17): the daily rollup equals the raw rows exactly (whole UTC days from the
rollup, partial edge days from raw rows), replays add nothing, PostgreSQL's monthly partitions are
made ahead with a default partition catching the rest, version-2 ledgers with rows migrate, and
retention removes old raw rows but keeps the rollup. Real SQLite files and real PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import psycopg
from support.ledger import VERBATIM_SQL, make_row

from exporter.ledger import pg_store, sqlite_store
from exporter.ledger.rollup import Totals, raw_totals, split_period, totals
from exporter.ledger.row import COLUMNS, LedgerRow
from exporter.ledger.store import open_store, row_values

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)  # the stores' clock in these tests


def rows_across_days(n: int) -> list[LedgerRow]:
    """n rows spread over 2024-04-28 .. 2024-06-02, every hour of the day, durations in µs steps."""
    out = []
    for i in range(n):
        day = datetime(2024, 4, 28, tzinfo=UTC).toordinal() + i % 36
        d = date.fromordinal(day)
        out.append(
            make_row(
                i,
                timestamp=f"{d.isoformat()}T{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}.{i % 1000:06d}Z",
                user_email=f"u{i % 5}@corp.example",
                team="research" if i % 5 != 4 else "support",
                model=f"m{i % 3}",
                duration_ms=10 + (i % 997) / 8,  # exact in binary: 1/8 ms steps
            )
        )
    return out


def python_totals(rows: list[LedgerRow], since: datetime | None, until: datetime | None) -> dict:
    out: dict = defaultdict(Totals)
    for r in rows:
        ts = datetime.fromisoformat(r.timestamp)
        if (since is None or ts >= since) and (until is None or ts < until):
            t = out[(r.team, r.user_email, r.model)]
            t.add(
                [1, r.prompt_tokens, r.completion_tokens, r.total_tokens, r.cached_tokens,
                 round(r.duration_ms * 1000), int(r.estimated)]
            )  # fmt: skip
    return dict(out)


def open_at(url: str):
    return open_store(url, clock=lambda: NOW) if url.startswith("postgresql") else open_store(url)


PERIODS = [
    (None, None),
    (datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC)),  # a UTC month: rollup only
    (datetime(2024, 5, 1, tzinfo=BERLIN), datetime(2024, 6, 1, tzinfo=BERLIN)),  # 22:00 UTC edges
    (datetime(2024, 5, 3, 7, 30, tzinfo=UTC), datetime(2024, 5, 3, 19, tzinfo=UTC)),  # inside one day
    (datetime(2024, 5, 3, 7, 30, tzinfo=UTC), datetime(2024, 5, 4, 1, tzinfo=UTC)),  # two partial days
    (datetime(2024, 5, 3, 13, tzinfo=UTC), datetime(2024, 5, 5, 20, tzinfo=UTC)),  # both edges subtracted
    (
        datetime(2024, 5, 1, tzinfo=ZoneInfo("America/New_York")),
        datetime(2024, 6, 1, tzinfo=ZoneInfo("Asia/Kolkata")),
    ),
    (datetime(2024, 5, 20, 5, tzinfo=UTC), None),
    (None, datetime(2024, 5, 2, 23, 59, 59, 999999, tzinfo=UTC)),
]


BERLIN_MAY = PERIODS[2]


def test_split_period_whole_days_and_edges() -> None:
    # Berlin May: 2 hours before the first UTC day from raw rows; May 31 from the rollup minus its
    # last hour (22:00 UTC onwards belongs to June in Berlin)
    plan = split_period(datetime(2024, 5, 1, tzinfo=BERLIN), datetime(2024, 6, 1, tzinfo=BERLIN))
    assert (plan.first, plan.end) == (date(2024, 5, 1), date(2024, 6, 1))
    assert plan.plus == [(datetime(2024, 5, 1, tzinfo=BERLIN), datetime(2024, 5, 1, tzinfo=UTC))]
    assert plan.minus == [(datetime(2024, 6, 1, tzinfo=BERLIN), datetime(2024, 6, 1, tzinfo=UTC))]
    # a zone west of UTC: New York's May starts at 04:00 UTC (20 h of May 1 inside: rollup minus 4 h)
    ny = ZoneInfo("America/New_York")
    plan = split_period(datetime(2024, 5, 1, tzinfo=ny), datetime(2024, 6, 1, tzinfo=ny))
    assert (plan.first, plan.end) == (date(2024, 5, 1), date(2024, 6, 1))
    assert plan.minus == [(datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 1, tzinfo=ny))]
    assert plan.plus == [(datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=ny))]
    utc = split_period(datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC))
    assert (utc.first, utc.end, utc.plus, utc.minus) == (date(2024, 5, 1), date(2024, 6, 1), [], [])
    a, b = datetime(2024, 5, 3, 7, tzinfo=UTC), datetime(2024, 5, 3, 9, tzinfo=UTC)
    inside = split_period(a, b)
    assert (inside.use_rollup, inside.plus, inside.minus) == (False, [(a, b)], [])


def test_rollup_equals_raw_rows_for_every_period_and_replays_add_nothing(ledger_url) -> None:
    # a user whose only request lies in the part of May 5 that a subtracted edge removes again
    late = make_row(9999, timestamp="2024-05-05T21:00:00.000000Z", user_email="late@corp.example")
    rows = [*rows_across_days(3000), late]
    store = open_at(ledger_url)
    try:
        assert store.insert_rows(rows[:2000]) == 2000
        assert store.insert_rows(rows[1500:]) == 1001  # 500 replayed, 1001 new
        assert store.insert_rows(rows) == 0  # a full replay
        assert store.count_rows() == 3001
        assert ("research", "late@corp.example", "m1") not in totals(store, *PERIODS[5])
        for since, until in PERIODS:
            expected = python_totals(rows, since, until)
            assert totals(store, since, until) == expected, (since, until)
            assert raw_totals(store, since, until) == expected, (since, until)
        # exact figures for the Berlin month (rows by request id, token sums)
        berlin = python_totals(rows, *BERLIN_MAY)
        ids = {
            r.request_id
            for r in rows
            if BERLIN_MAY[0] <= datetime.fromisoformat(r.timestamp) < BERLIN_MAY[1]  # type: ignore[operator]
        }
        assert sum(t.requests for t in berlin.values()) == len(ids) == 2583
        assert sum(t.total_tokens for t in berlin.values()) == sum(
            r.total_tokens for r in rows if r.request_id in ids
        )
        # the summary reads the rollup and says the same
        _, summary = store.summary(*BERLIN_MAY)
        assert {(r[1], r[0], r[2]): r[3:] for r in summary} == {
            k: (
                t.requests,
                t.prompt_tokens,
                t.completion_tokens,
                t.total_tokens,
                t.cached_tokens,
                t.estimated,
            )
            for k, t in berlin.items()
        }
        # the rollup itself: one row per UTC day × user × team × model
        (n_days,) = store.query("SELECT COUNT(DISTINCT day) FROM http_analytics_daily")[1][0]
        assert n_days == 36
        # the seed SQL on public.http_analytics still runs verbatim
        got = {(r[0], r[1]): int(r[2]) for r in store.query(VERBATIM_SQL)[1]}
        want: dict = defaultdict(int)
        for r in rows:
            want[(r.user_email, r.model)] += r.total_tokens
        assert got == dict(want)
    finally:
        store.close()


def sqlite_insert(conn: sqlite3.Connection, columns: Sequence[str], rows: Iterable[LedgerRow]) -> None:
    """Rows inserted with plain SQL, the timestamp written as the SQLite store writes it."""
    vals = []
    for r in rows:
        v = list(row_values(r))
        v[1] = v[1].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        vals.append(v)
    conn.executemany(
        f"INSERT INTO http_analytics ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", vals
    )


def test_rows_written_by_plain_sql_also_reach_the_rollup(ledger_url) -> None:
    """The rollup is kept by a trigger, so other writers (COPY, INSERT from a restore) are counted too."""
    rows = rows_across_days(40)
    store = open_at(ledger_url)
    store.close()
    if ledger_url.startswith("sqlite"):
        conn = sqlite3.connect(ledger_url[len("sqlite:///") :])
        sqlite_insert(conn, COLUMNS, rows)
        conn.commit()
        conn.close()
    else:
        copy_sql = f"COPY http_analytics ({', '.join(COLUMNS)}) FROM STDIN"
        with psycopg.connect(ledger_url) as conn, conn.cursor() as cur, cur.copy(copy_sql) as copy:
            for r in rows:
                copy.write_row(row_values(r))
    store = open_at(ledger_url)
    try:
        assert totals(store, None, None) == python_totals(rows, None, None)
        assert totals(store, *BERLIN_MAY) == python_totals(rows, *BERLIN_MAY)
    finally:
        store.close()


# --------------------------------------------------------------------------- PostgreSQL partitions


def per_partition(url: str) -> dict[str, list[str]]:
    with psycopg.connect(url) as conn:
        got = conn.execute(
            "SELECT tableoid::regclass::text, request_id FROM http_analytics ORDER BY request_id"
        ).fetchall()
    out: dict[str, list[str]] = defaultdict(list)
    for part, rid in got:
        out[part].append(rid)
    return dict(out)


def test_pg_partitions_made_ahead_default_catches_the_rest(pg_url) -> None:
    store = open_at(pg_url)
    try:
        assert [n for n, _ in store.partitions()] == [
            "http_analytics_2024_05",
            "http_analytics_2024_06",
            "http_analytics_2024_07",
            "http_analytics_default",
        ]
        rows = [
            make_row(1, timestamp="2024-05-31T23:59:59.999999Z"),
            make_row(2, timestamp="2024-06-01T00:00:00.000000Z"),
            make_row(3, timestamp="2023-01-15T08:00:00.000000Z"),  # no partition: default
            make_row(4, timestamp="2031-01-01T00:00:00.000000Z"),
        ]
        assert store.insert_rows(rows) == 4
        assert per_partition(pg_url) == {
            "http_analytics_2024_05": ["req-00000001"],
            "http_analytics_2024_06": ["req-00000002"],
            "http_analytics_default": ["req-00000003", "req-00000004"],
        }
        # creating January 2023 moves its row out of the default partition
        assert store.ensure_partitions([date(2023, 1, 1), date(2024, 5, 1)]) == [date(2023, 1, 1)]
        assert per_partition(pg_url)["http_analytics_2023_01"] == ["req-00000003"]
        assert per_partition(pg_url)["http_analytics_default"] == ["req-00000004"]
        # a replay with the same request id and timestamp adds nothing anywhere
        assert store.insert_rows(rows) == 0
        assert totals(store, None, None) == python_totals(rows, None, None)
        # the partitioned table carries the extended statistics on (team, user_email, model)
        stats = {r[0] for r in store.query("SELECT stxname FROM pg_statistic_ext")[1]}
        assert {
            "http_analytics_groups",
            "http_analytics_2024_05_groups",
            "http_analytics_2023_01_groups",
        } <= stats
    finally:
        store.close()


def test_pg_month_change_creates_the_next_partitions(pg_url) -> None:
    now = [NOW]
    store = open_store(pg_url, clock=lambda: now[0])
    try:
        now[0] = datetime(2024, 8, 1, 0, 0, 1, tzinfo=UTC)
        assert store.insert_rows([make_row(9, timestamp="2024-08-01T00:00:00.500000Z")]) == 1
        assert [n for n, _ in store.partitions()][-4:] == [
            "http_analytics_2024_08",
            "http_analytics_2024_09",
            "http_analytics_2024_10",
            "http_analytics_default",
        ]
        assert per_partition(pg_url) == {"http_analytics_2024_08": ["req-00000009"]}
    finally:
        store.close()


def test_pg_query_for_one_month_reads_only_its_partition(pg_url) -> None:
    store = open_at(pg_url)
    try:
        store.ensure_partitions([date(2024, 3, 1), date(2024, 4, 1)])
        store.insert_rows(rows_across_days(200))
        _, plan = store.query(
            "EXPLAIN SELECT COUNT(*) FROM http_analytics WHERE timestamp >= %s AND timestamp < %s",
            [datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC)],
        )
        text = "\n".join(r[0] for r in plan)
        assert "http_analytics_2024_05" in text
        assert "http_analytics_2024_04" not in text and "http_analytics_default" not in text
    finally:
        store.close()


def make_v2(url: str, backend: str, rows: list[LedgerRow]) -> None:
    """A ledger exactly as schema version 2 left it, with rows written the version-2 way."""
    cols2 = [c for c in COLUMNS]
    if backend == "postgresql":
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            for v in (1, 2):
                for stmt in pg_store.MIGRATIONS[v]:
                    conn.execute(stmt)
                conn.execute("INSERT INTO schema_version VALUES (%s)", (v,))
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO http_analytics ({', '.join(cols2)}) VALUES ({', '.join(['%s'] * len(cols2))})"
                    " ON CONFLICT (request_id) DO NOTHING",
                    [row_values(r) for r in rows],
                )
        return
    conn = sqlite3.connect(url[len("sqlite:///") :])
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for v in (1, 2):
        for stmt in sqlite_store.MIGRATIONS[v]:
            conn.execute(stmt)
        conn.execute("INSERT INTO schema_version VALUES (?)", (v,))
    sqlite_insert(conn, cols2, rows)
    conn.commit()
    conn.close()


def test_version_2_ledger_with_rows_migrates_to_4(ledger_url) -> None:
    backend = "sqlite" if ledger_url.startswith("sqlite") else "postgresql"
    rows = rows_across_days(1000)
    make_v2(ledger_url, backend, rows)
    store = open_at(ledger_url)
    try:
        # on to 4 (rollup) and 5 (key expiry, rotation, last use)
        assert store.query("SELECT MAX(version) FROM schema_version")[1] == [(5,)]
        _, got = store.query("SELECT request_id, total_tokens FROM http_analytics ORDER BY request_id")
        assert got == sorted((r.request_id, r.total_tokens) for r in rows)
        for since, until in PERIODS:
            assert totals(store, since, until) == python_totals(rows, since, until)
        assert store.insert_rows(rows[:100]) == 0  # still idempotent after the migration
        assert store.insert_rows([make_row(5000, timestamp="2024-05-05T05:05:05.000000Z")]) == 1
        if backend == "postgresql":
            parts = per_partition(ledger_url)
            # April, May and June 2024 (rows' months) plus the clock's months ahead; default empty
            assert sorted(parts) == [
                "http_analytics_2024_04",
                "http_analytics_2024_05",
                "http_analytics_2024_06",
            ]
            assert sum(len(v) for v in parts.values()) == 1001
            assert "http_analytics_default" in [n for n, _ in store.partitions()]
    finally:
        store.close()


def test_retention_drops_old_raw_rows_but_keeps_the_rollup(ledger_url) -> None:
    rows = rows_across_days(720)  # 2024-04-28 .. 2024-06-02
    store = open_at(ledger_url)
    try:
        if store.backend == "postgresql":
            store.ensure_partitions([date(2024, 4, 1)])
        store.insert_rows(rows)
        before = totals(store, None, None)
        done = store.apply_retention(2, now=datetime(2024, 6, 15, tzinfo=UTC))  # keep May and June
        assert done["cutoff"] == date(2024, 5, 1)
        april = [r for r in rows if r.timestamp < "2024-05"]
        if store.backend == "postgresql":
            assert done["partitions"] == ["http_analytics_2024_04"]
            assert "http_analytics_2024_04" not in [n for n, _ in store.partitions()]
        else:
            assert done["default_rows_deleted"] == len(april)
        assert store.count_rows() == len(rows) - len(april) == 660
        # raw rows of May are all there; the rollup still answers for April
        assert raw_totals(store, *PERIODS[1]) == python_totals(rows, *PERIODS[1])
        assert totals(store, None, None) == before
        april_period = (datetime(2024, 4, 1, tzinfo=UTC), datetime(2024, 5, 1, tzinfo=UTC))
        assert totals(store, *april_period) == python_totals(rows, *april_period)
    finally:
        store.close()


def test_pg_concurrent_writers_keep_the_rollup_exact(pg_url) -> None:
    """Four stores (as four proxy replicas) write batches that hit the same rollup rows at once, with
    replays of each other's rows mixed in; the rollup still equals the raw rows, nothing deadlocks."""
    import threading

    rows = rows_across_days(4000)
    stores = [open_at(pg_url) for _ in range(4)]
    added = [0] * 4
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            mine = rows[k::4]
            for j in range(0, len(mine), 100):
                added[k] += stores[k].insert_rows(mine[j : j + 100])
                # a replay of a neighbour's rows (some written already, some not yet)
                other = rows[(k + 1) % 4 :: 4][j : j + 50]
                added[k] += stores[k].insert_rows(other)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert sum(added) == 4000
        assert stores[0].count_rows() == 4000
        assert totals(stores[0], None, None) == python_totals(rows, None, None)
        assert totals(stores[0], *BERLIN_MAY) == python_totals(rows, *BERLIN_MAY)
    finally:
        for s in stores:
            s.close()
