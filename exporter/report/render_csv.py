"""CSV for finance: one row per statement line, plus team and pool tables. Fixed column order,
'\\n' line endings, amounts as fixed-point text in the currency's minor unit (machine-readable:
no locale grouping).

A team's own statement (``teams/<team>.csv``) ends with a totals row, ``kind`` = ``total``;
``lines.csv`` (every line of every team) has none, so its charge column sums to the pool cost.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

from exporter.report.money import fmt_decimal, fmt_money
from exporter.report.statement import Statement, TeamStatement, fmt_qty, unit_price

LINE_COLUMNS = [
    "period", "period_start", "period_end", "currency", "method", "team", "business_unit", "cost_center",
    "kind", "user", "model", "pool", "description", "requests", "prompt_tokens", "completion_tokens",
    "cached_prompt_tokens", "weighted_tokens", "request_seconds", "charge",
]  # fmt: skip
TEAM_COLUMNS = [
    "period", "currency", "method", "team", "business_unit", "cost_center", "requests", "prompt_tokens",
    "completion_tokens", "cached_prompt_tokens", "weighted_tokens", "request_seconds", "idle_share", "total",
    "budget", "budget_used_percent", "over_budget", "statement_number", "issue_date", "previous_period",
    "previous_total", "price_per_million_weighted_tokens",
]  # fmt: skip
POOL_COLUMNS = [
    "period", "currency", "pool", "cost", "cost_source", "gpus", "gpu_hours", "busy_hours", "idle_hours",
    "idle_cost", "weighted_tokens", "recovered",
]  # fmt: skip


def _write(columns: list[str], rows: Iterable[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows(rows)
    return buf.getvalue()


def _line_rows(st: Statement, teams: Iterable[TeamStatement]) -> Iterable[list[str]]:
    p = st.period
    for t in teams:
        for line in t.lines:
            d = line.as_dict(st.minor_units)
            yield [
                p.label, p.start.isoformat(), p.end.isoformat(), st.currency, st.method, t.team, t.business_unit,
                t.cost_center, line.kind, line.user, line.model, line.pool, line.description, str(line.requests),
                str(line.prompt_tokens), str(line.completion_tokens), str(line.cached_tokens), d["weighted_tokens"],
                d["request_seconds"], d["charge"],
            ]  # fmt: skip


def render_lines_csv(st: Statement, include_central: bool = True) -> str:
    teams = [*st.teams, st.central] if include_central else st.teams
    return _write(LINE_COLUMNS, _line_rows(st, teams))


def render_team_csv(st: Statement, t: TeamStatement) -> str:
    p, u = st.period, t.usage_totals()
    total = [
        p.label, p.start.isoformat(), p.end.isoformat(), st.currency, st.method, t.team, t.business_unit,
        t.cost_center, "total", "", "", "", f"statement {st.number(t.team)}", str(u["requests"]),
        str(u["prompt_tokens"]), str(u["completion_tokens"]), str(u["cached_prompt_tokens"]),
        fmt_qty(u["weighted_tokens"]), fmt_decimal(u["request_seconds"], 3), fmt_money(t.total, st.minor_units),
    ]  # fmt: skip
    return _write(LINE_COLUMNS, [*_line_rows(st, [t]), total])


def render_teams_csv(st: Statement) -> str:
    m = st.minor_units
    rows = []
    for t in [*st.teams, st.central]:
        u = t.usage_totals()
        used = t.budget_used_percent
        rows.append([
            st.period.label, st.currency, st.method, t.team, t.business_unit, t.cost_center, str(u["requests"]),
            str(u["prompt_tokens"]), str(u["completion_tokens"]), str(u["cached_prompt_tokens"]),
            fmt_qty(u["weighted_tokens"]), fmt_decimal(u["request_seconds"], 3), fmt_money(t.idle_share, m),
            fmt_money(t.total, m), "" if t.budget is None else fmt_money(t.budget, m), "" if used is None else str(used),
            "true" if t.over_budget else "false", st.number(t.team), st.issue_date.isoformat() if st.issue_date else "",
            "" if st.previous is None else st.previous.period.label,
            "" if (before := st.previous_total(t.team)) is None else fmt_money(before, m),
            "" if (price := unit_price(t.total, t.weighted_tokens)) is None or t is st.central else fmt_decimal(price, 6),
        ])  # fmt: skip
    return _write(TEAM_COLUMNS, rows)


def render_pools_csv(st: Statement) -> str:
    m = st.minor_units
    rows = [
        [
            st.period.label,
            st.currency,
            p.name,
            fmt_money(p.cost, m),
            p.cost_source,
            str(p.gpus),
            fmt_decimal(p.gpu_hours, 3),
            fmt_decimal(p.busy_hours, 3),
            fmt_decimal(p.idle_hours, 3),
            fmt_money(p.idle_cost, m) if p.idle_known else "",
            fmt_qty(p.weighted_tokens),
            fmt_money(p.recovered, m),
        ]
        for p in st.pools
    ]
    return _write(POOL_COLUMNS, rows)
