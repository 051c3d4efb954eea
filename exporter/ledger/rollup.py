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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from exporter.ledger.schema import HTTP_ANALYTICS_DAILY, Dialect, create_table

ROLLUP_TABLE = HTTP_ANALYTICS_DAILY.name
ROLLUP_SUMS = tuple(c for c in HTTP_ANALYTICS_DAILY.names if c not in HTTP_ANALYTICS_DAILY.primary_key)

# --------------------------------------------------------------------------- schema


def _row_values(dialect: Dialect, p: str) -> list[str]:
    """Each rollup sum's value for one raw row, whose columns are prefixed with ``p`` ('NEW.', 'n.')."""
    duration = (
        f"CAST(ROUND({p}duration_ms * 1000) AS INTEGER)"
        if dialect == "sqlite"
        else f"round({p}duration_ms * 1000)::bigint"
    )
    special = {
        "requests": "1",
        "duration_us": duration,
        "estimated": f"CASE WHEN {p}estimated THEN 1 ELSE 0 END",
    }
    return [special.get(name, f"{p}{name}") for name in ROLLUP_SUMS]


def raw_sums(dialect: Dialect, p: str = "") -> str:
    """The rollup's sums aggregated over raw rows (0, not NULL, over no rows)."""
    return ", ".join("COUNT(*)" if v == "1" else f"COALESCE(SUM({v}), 0)" for v in _row_values(dialect, p))


def _day(dialect: Dialect, p: str = "") -> str:
    return (
        f"substr({p}timestamp, 1, 10)" if dialect == "sqlite" else f"({p}timestamp AT TIME ZONE 'UTC')::date"
    )


def _upsert(alias: str) -> str:
    """Adds a conflicting row's sums to the existing one's."""
    key = ", ".join(HTTP_ANALYTICS_DAILY.primary_key)
    sets = ",\n        ".join(f"{c} = {alias}.{c} + excluded.{c}" for c in ROLLUP_SUMS)
    return f"ON CONFLICT ({key}) DO UPDATE SET\n        {sets}"


def _group(p: str = "") -> str:
    """The rollup key's columns after ``day`` (user, team, model) from raw rows prefixed with ``p``."""
    return ", ".join(f"{p}{c}" for c in HTTP_ANALYTICS_DAILY.primary_key[1:])


def ddl(dialect: Dialect) -> list[str]:
    """The rollup table and the trigger that keeps it (created before any raw row is loaded)."""
    if dialect == "sqlite":
        # Fires only for rows actually inserted (ON CONFLICT DO NOTHING skips replays).
        trigger = [
            f"""CREATE TRIGGER http_analytics_rollup AFTER INSERT ON http_analytics
    BEGIN
        INSERT INTO {ROLLUP_TABLE} VALUES (
            {_day("sqlite", "NEW.")}, {_group("NEW.")}, {", ".join(_row_values("sqlite", "NEW."))}
        )
        {_upsert(ROLLUP_TABLE)};
    END"""
        ]
    else:
        # A statement-level trigger sees the statement's inserted rows as a transition table: one
        # aggregate per batch (or per COPY), not one upsert per row. Rows skipped by ON CONFLICT are
        # not in it. Sorted so concurrent writers lock rollup rows in the same order (no deadlocks).
        trigger = [
            f"""CREATE FUNCTION chargeback_rollup_add() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO {ROLLUP_TABLE} AS d
        SELECT {_day("postgresql", "n.")}, {_group("n.")}, {raw_sums("postgresql", "n.")}
        FROM new_rows n GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        {_upsert("d")};
        RETURN NULL;
    END $$""",
            """CREATE TRIGGER http_analytics_rollup AFTER INSERT ON http_analytics
        REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION chargeback_rollup_add()""",
        ]
    return [*create_table(HTTP_ANALYTICS_DAILY, dialect), *trigger]


def sqlite_upgrade() -> list[str]:
    """Version 4 on SQLite: the rollup, then the sums of the rows written before it."""
    return [
        *ddl("sqlite"),
        f"""INSERT INTO {ROLLUP_TABLE}
    SELECT {_day("sqlite")}, {_group()}, {raw_sums("sqlite")}
    FROM http_analytics GROUP BY 1, 2, 3, 4""",
    ]


# --------------------------------------------------------------------------- reading


@dataclass
class Totals:
    """One group's sums: the rollup's sum columns, in their order (``add`` takes them positionally)."""

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


def _where(column: str, ranges: list[tuple[Any, Any]], param: Callable[[Any], Any]) -> tuple[str, list[Any]]:
    """' WHERE (column >= ? AND column < ?) OR ...' for [lo, hi) ranges (None: unbounded), and its
    parameters; no condition at all when a range is unbounded at both ends."""
    conds, params = [], []
    for lo, hi in ranges:
        parts = []
        for value, op in ((lo, ">="), (hi, "<")):
            if value is not None:
                parts.append(f"{column} {op} ?")
                params.append(param(value))
        if not parts:
            return "", []
        conds.append(" AND ".join(parts))
    return " WHERE " + " OR ".join(f"({c})" for c in conds), params


def _sums_into(
    store: Any, out: dict[Key, Totals], sums: str, table: str, where: tuple[str, list[Any]], sign: int = 1
) -> None:
    sql = f"SELECT team, user_email, model, {sums} FROM {table}{where[0]} GROUP BY team, user_email, model"
    for team, user, model, *values in store.select(sql, where[1]):
        out.setdefault((str(team), str(user), str(model)), Totals()).add(values, sign)


def _raw_into(store: Any, out: dict[Key, Totals], ranges: list[Range], sign: int = 1) -> None:
    where = _where("timestamp", ranges, store.timestamp_param)
    _sums_into(store, out, raw_sums(store.backend), "http_analytics", where, sign)


def totals(store: Any, since: datetime | None, until: datetime | None) -> dict[Key, Totals]:
    """Sums per (team, user, model) for requests that started in [since, until): exactly what
    summing the raw rows gives, read from the rollup for whole UTC days (see ``split_period``)."""
    out: dict[Key, Totals] = {}
    plan = split_period(since, until)
    if plan.use_rollup and (plan.first is None or plan.end is None or plan.first < plan.end):
        where = _where("day", [(plan.first, plan.end)], store.day_param)
        _sums_into(store, out, _SUMS_ROLLUP, ROLLUP_TABLE, where)
    if plan.plus:
        _raw_into(store, out, plan.plus, 1)
    if plan.minus:
        _raw_into(store, out, plan.minus, -1)
        # keys whose only rows lay outside the period
        out = {k: t for k, t in out.items() if t.requests}
    return out


def raw_totals(store: Any, since: datetime | None, until: datetime | None) -> dict[Key, Totals]:
    """The same sums straight from the raw rows (for tests and the benchmark's comparison)."""
    out: dict[Key, Totals] = {}
    _raw_into(store, out, [(since, until)])
    return out
