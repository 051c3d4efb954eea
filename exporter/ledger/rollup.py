"""The daily rollup ``http_analytics_daily``: per UTC day × user × team × model, the sums reports need.

The ledger's raw rows grow by one per request (tens of millions a month at scale); every report,
``ledger summary`` and reconciliation only needs totals per user, team and model. The rollup holds
those per UTC day and is maintained by a trigger in the same transaction as the raw insert, from
the rows that were actually inserted: a replayed batch (``ON CONFLICT DO NOTHING``) adds nothing to
either table, so the rollup stays exactly equal to the raw rows.

UTC days, whatever the billing time zone: a period that starts or ends inside a UTC day (a Berlin
month starts at 22:00 or 23:00 UTC the day before) is answered from the rollup for the whole UTC
days and from raw rows (found through the timestamp index) for the partial days at its edges: the
part inside the period when that is at most 12 hours, else the rollup's whole day minus the part
outside. So at most 12 hours of raw rows per edge, 3 hours for a Berlin month. ``totals()`` does
that split; its answer is identical to summing the raw rows over the period.

Durations are summed as whole microseconds (``round(duration_ms * 1000)``) in both paths, so the
sums are exact integers and equal however the rows are grouped.

Retention drops old raw rows (partitions) but keeps the rollup: statements for whole UTC days of an
expired month can still be built from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

ROLLUP_TABLE = "http_analytics_daily"
ROLLUP_SUMS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "duration_us",
    "estimated",
)

# --------------------------------------------------------------------------- schema

SQLITE_MIGRATION: list[str] = [
    f"""CREATE TABLE {ROLLUP_TABLE} (
        day               TEXT NOT NULL,      -- UTC 'YYYY-MM-DD'
        user_email        TEXT NOT NULL,
        team              TEXT NOT NULL,
        model             TEXT NOT NULL,
        requests          INTEGER NOT NULL,
        prompt_tokens     INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        total_tokens      INTEGER NOT NULL,
        cached_tokens     INTEGER NOT NULL,
        duration_us       INTEGER NOT NULL,   -- Σ round(duration_ms × 1000)
        estimated         INTEGER NOT NULL,   -- rows with estimated usage
        PRIMARY KEY (day, user_email, team, model)
    )""",
    # Fires only for rows actually inserted (ON CONFLICT DO NOTHING skips replays).
    f"""CREATE TRIGGER http_analytics_rollup AFTER INSERT ON http_analytics
    BEGIN
        INSERT INTO {ROLLUP_TABLE} VALUES (
            substr(NEW.timestamp, 1, 10), NEW.user_email, NEW.team, NEW.model, 1,
            NEW.prompt_tokens, NEW.completion_tokens, NEW.total_tokens, NEW.cached_tokens,
            CAST(ROUND(NEW.duration_ms * 1000) AS INTEGER), CASE WHEN NEW.estimated THEN 1 ELSE 0 END
        )
        ON CONFLICT (day, user_email, team, model) DO UPDATE SET
            requests = requests + 1,
            prompt_tokens = prompt_tokens + excluded.prompt_tokens,
            completion_tokens = completion_tokens + excluded.completion_tokens,
            total_tokens = total_tokens + excluded.total_tokens,
            cached_tokens = cached_tokens + excluded.cached_tokens,
            duration_us = duration_us + excluded.duration_us,
            estimated = estimated + excluded.estimated;
    END""",
    # Rows written before this version.
    f"""INSERT INTO {ROLLUP_TABLE}
    SELECT substr(timestamp, 1, 10), user_email, team, model, COUNT(*), SUM(prompt_tokens),
        SUM(completion_tokens), SUM(total_tokens), SUM(cached_tokens),
        SUM(CAST(ROUND(duration_ms * 1000) AS INTEGER)), SUM(CASE WHEN estimated THEN 1 ELSE 0 END)
    FROM http_analytics GROUP BY 1, 2, 3, 4""",
]

PG_ROLLUP_DDL: list[str] = [
    f"""CREATE TABLE {ROLLUP_TABLE} (
        day               DATE NOT NULL,      -- UTC day
        user_email        TEXT NOT NULL,
        team              TEXT NOT NULL,
        model             TEXT NOT NULL,
        requests          BIGINT NOT NULL,
        prompt_tokens     BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        total_tokens      BIGINT NOT NULL,
        cached_tokens     BIGINT NOT NULL,
        duration_us       BIGINT NOT NULL,    -- Σ round(duration_ms × 1000)
        estimated         BIGINT NOT NULL,    -- rows with estimated usage
        PRIMARY KEY (day, user_email, team, model)
    )""",
    # A statement-level trigger sees the statement's inserted rows as a transition table: one
    # aggregate per batch (or per COPY), not one upsert per row. Rows skipped by ON CONFLICT are
    # not in it. Sorted so concurrent writers lock rollup rows in the same order (no deadlocks).
    f"""CREATE FUNCTION chargeback_rollup_add() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO {ROLLUP_TABLE} AS d
        SELECT (n.timestamp AT TIME ZONE 'UTC')::date, n.user_email, n.team, n.model, COUNT(*),
            SUM(n.prompt_tokens), SUM(n.completion_tokens), SUM(n.total_tokens), SUM(n.cached_tokens),
            SUM(round(n.duration_ms * 1000)::bigint), COUNT(*) FILTER (WHERE n.estimated)
        FROM new_rows n GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        ON CONFLICT (day, user_email, team, model) DO UPDATE SET
            requests = d.requests + EXCLUDED.requests,
            prompt_tokens = d.prompt_tokens + EXCLUDED.prompt_tokens,
            completion_tokens = d.completion_tokens + EXCLUDED.completion_tokens,
            total_tokens = d.total_tokens + EXCLUDED.total_tokens,
            cached_tokens = d.cached_tokens + EXCLUDED.cached_tokens,
            duration_us = d.duration_us + EXCLUDED.duration_us,
            estimated = d.estimated + EXCLUDED.estimated;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER http_analytics_rollup AFTER INSERT ON http_analytics
        REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION chargeback_rollup_add()""",
]

# --------------------------------------------------------------------------- reading


@dataclass
class Totals:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    duration_us: int = 0
    estimated: int = 0

    def add(self, values: Sequence[Any], sign: int = 1) -> None:
        for name, v in zip(ROLLUP_SUMS, values, strict=True):
            setattr(self, name, getattr(self, name) + sign * int(v or 0))


Key = tuple[str, str, str]  # (team, user_email, model)

_SUMS_RAW = (
    "COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0),"
    " COALESCE(SUM(total_tokens), 0), COALESCE(SUM(cached_tokens), 0), {duration},"
    " COALESCE(SUM(CASE WHEN estimated THEN 1 ELSE 0 END), 0)"
)
_DURATION = {
    "sqlite": "COALESCE(SUM(CAST(ROUND(duration_ms * 1000) AS INTEGER)), 0)",
    "postgresql": "COALESCE(SUM(round(duration_ms * 1000)::bigint), 0)",
}
_SUMS_ROLLUP = ", ".join(f"SUM({c})" for c in ROLLUP_SUMS)


def _utc(value: datetime) -> datetime:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


def _midnight(d: date) -> datetime:
    return datetime.combine(d, time(), tzinfo=UTC)


Range = tuple[datetime | None, datetime | None]
HALF_DAY = timedelta(hours=12)


@dataclass
class Plan:
    """How to answer [since, until): rollup days [first, end) (None: unbounded), plus the raw rows
    in ``plus``, minus the raw rows in ``minus``. ``use_rollup`` is False when no whole day helps."""

    first: date | None
    end: date | None
    plus: list[Range]
    minus: list[Range]
    use_rollup: bool = True


def split_period(since: datetime | None, until: datetime | None) -> Plan:
    """Whole UTC days from the rollup; a partial day at an edge from its raw rows when the part inside
    the period is at most 12 hours, else as the rollup's whole day minus the raw rows of the part
    outside. A Berlin month then reads 3 hours of raw rows (2 at the start, 1 at the end), not two
    days; the sums are integers, so subtracting is exact."""
    s = _utc(since) if since is not None else None
    u = _utc(until) if until is not None else None
    if s is not None and u is not None and (s.date() == u.date() or u <= s):
        return Plan(None, None, [(since, until)] if u > s else [], [], use_rollup=False)
    plus: list[Range] = []
    minus: list[Range] = []
    first = end = None
    if s is not None:
        d0 = s.date()
        if s == _midnight(d0):
            first = d0
        elif _midnight(d0 + timedelta(days=1)) - s <= HALF_DAY:
            first = d0 + timedelta(days=1)
            plus.append((s, _midnight(first)))
        else:
            first = d0
            minus.append((_midnight(d0), s))
    if u is not None:
        d1 = u.date()
        if u == _midnight(d1):
            end = d1
        elif u - _midnight(d1) <= HALF_DAY:
            end = d1
            plus.append((_midnight(d1), u))
        else:
            end = d1 + timedelta(days=1)
            minus.append((u, _midnight(end)))
    return Plan(first, end, plus, minus)


def _raw_into(store: Any, out: dict[Key, Totals], ranges: list[Range], sign: int) -> None:
    ph = store.placeholder
    conds, params = [], []
    for lo, hi in ranges:
        parts = []
        if lo is not None:
            parts.append(f"timestamp >= {ph}")
            params.append(store.timestamp_param(lo))
        if hi is not None:
            parts.append(f"timestamp < {ph}")
            params.append(store.timestamp_param(hi))
        conds.append("(" + " AND ".join(parts or ["1 = 1"]) + ")")
    sql = (
        "SELECT team, user_email, model, "
        + _SUMS_RAW.format(duration=_DURATION[store.backend])
        + " FROM http_analytics WHERE "
        + " OR ".join(conds)
        + " GROUP BY team, user_email, model"
    )
    for team, user, model, *sums in store.query(sql, params)[1]:
        out.setdefault((str(team), str(user), str(model)), Totals()).add(sums, sign)


def totals(store: Any, since: datetime | None, until: datetime | None) -> dict[Key, Totals]:
    """Sums per (team, user, model) for requests that started in [since, until): exactly what
    summing the raw rows gives, read from the rollup for whole UTC days (see ``split_period``)."""
    ph = store.placeholder
    out: dict[Key, Totals] = {}

    def day_param(d: date) -> Any:
        return d.isoformat() if store.backend == "sqlite" else d

    plan = split_period(since, until)
    if plan.use_rollup and (plan.first is None or plan.end is None or plan.first < plan.end):
        where, params = [], []
        if plan.first is not None:
            where.append(f"day >= {ph}")
            params.append(day_param(plan.first))
        if plan.end is not None:
            where.append(f"day < {ph}")
            params.append(day_param(plan.end))
        sql = (
            f"SELECT team, user_email, model, {_SUMS_ROLLUP} FROM {ROLLUP_TABLE}"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " GROUP BY team, user_email, model"
        )
        for team, user, model, *sums in store.query(sql, params)[1]:
            out.setdefault((str(team), str(user), str(model)), Totals()).add(sums)
    if plan.plus:
        _raw_into(store, out, plan.plus, 1)
    if plan.minus:
        _raw_into(store, out, plan.minus, -1)
        # keys whose only rows lay outside the period
        out = {k: t for k, t in out.items() if t.requests}
    return out


def raw_totals(store: Any, since: datetime | None, until: datetime | None) -> dict[Key, Totals]:
    """The same sums straight from the raw rows (for tests and the benchmark's comparison)."""
    ph = store.placeholder
    where, params = [], []
    if since is not None:
        where.append(f"timestamp >= {ph}")
        params.append(store.timestamp_param(since))
    if until is not None:
        where.append(f"timestamp < {ph}")
        params.append(store.timestamp_param(until))
    sql = (
        "SELECT team, user_email, model, "
        + _SUMS_RAW.format(duration=_DURATION[store.backend])
        + " FROM http_analytics"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " GROUP BY team, user_email, model"
    )
    out: dict[Key, Totals] = {}
    for team, user, model, *sums in store.query(sql, params)[1]:
        out.setdefault((str(team), str(user), str(model)), Totals()).add(sums)
    return out
