"""What people read on a statement, as rows of text: shared by the HTML and Markdown renderers so
both show the same figures (locale-formatted) in the same order. CSV and JSON keep machine-readable
numbers and build their own rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from exporter.report.money import hours_places
from exporter.report.statement import Statement, TeamStatement, change_percent, unit_price


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    numeric: set[int]  # right-aligned columns
    totals: list[str] | None = None  # the totals row, if any
    over: set[int] = field(default_factory=set)  # indexes of rows to highlight (over budget)


def _pct(st: Statement, value: Decimal | None) -> str:
    """A change in percent, signed, with the locale's decimal sign: ``+116,0 %``."""
    if value is None:
        return ""
    return f"{'+' if value > 0 else ''}{st.num(value, 1)}\u00a0%"


def _used(st: Statement, t: TeamStatement) -> str:
    return "" if t.budget_used_percent is None else f"{st.num(t.budget_used_percent, 1)}\u00a0%"


def _price(st: Statement, price: Decimal | None) -> str:
    return "" if price is None else st.cash(price)


def meta(st: Statement, t: TeamStatement | None) -> list[tuple[str, str]]:
    """(label, value) pairs of the statement's header block."""
    p = st.period
    rows = [
        ("Statement no.", st.number(t.team if t else None)),
        ("Issue date", st.issue_date.isoformat() if st.issue_date else ""),
        ("Period", f"{p.title} — {p.start.isoformat()} to {p.end.isoformat()} (end exclusive)"),
    ]
    if t is not None:
        if t.business_unit or t.cost_center:
            rows.append(("Business unit / cost center", f"{t.business_unit or '-'} / {t.cost_center or '-'}"))
        rows.append(("Sent to", ", ".join(t.billing_contacts) or "(no billing contacts configured)"))
    rows.append(("Method", f"{st.method} · currency {st.currency} · quantities from {st.source}"))
    if st.billing_contact:
        rows.append(("Questions", st.billing_contact))
    return [(k, v) for k, v in rows if v]


def budget_line(st: Statement, t: TeamStatement) -> str:
    if t.budget is None:
        return ""
    used = _used(st, t)
    text = f"budget {st.cash(t.budget)}" + (f", {used} used" if used else "")
    if t.over_budget:
        return f"Over budget by {st.cash(t.total - t.budget)}: {text}"
    return f"Within budget: {text}"


def team_comparison(st: Statement, t: TeamStatement) -> Table:
    """This period against the previous one: charge, weighted tokens, price per 1M."""
    prev = st.previous
    price = unit_price(t.total, t.weighted_tokens)
    if prev is None:
        return Table(
            ["", st.period.title],
            [
                ["Charge", st.cash(t.total)],
                ["Weighted tokens", st.num(t.weighted_tokens)],
                ["Price per 1M weighted tokens", _price(st, price)],
            ],
            {1},
        )
    before = prev.totals.get(t.team, Decimal(0))
    before_tokens = prev.weighted_tokens.get(t.team, Decimal(0))
    before_price = unit_price(before, before_tokens)
    return Table(
        ["", st.period.title, prev.period.title, "change"],
        [
            ["Charge", st.cash(t.total), st.cash(before), _pct(st, change_percent(t.total, before))],
            [
                "Weighted tokens",
                st.num(t.weighted_tokens),
                st.num(before_tokens),
                _pct(st, change_percent(t.weighted_tokens, before_tokens)),
            ],
            [
                "Price per 1M weighted tokens",
                _price(st, price),
                _price(st, before_price),
                ""
                if price is None or before_price is None
                else _pct(st, change_percent(price, before_price)),
            ],
        ],
        {1, 2, 3},
    )


def team_lines(st: Statement, t: TeamStatement) -> Table:
    rows = [
        [
            line.user or line.description,
            line.model,
            line.pool,
            line.kind,
            st.num(line.requests),
            st.num(line.prompt_tokens),
            st.num(line.completion_tokens),
            st.num(line.cached_tokens),
            st.num(line.weighted_tokens),
            st.num(line.request_seconds, 1),
            st.cash(line.charge),
        ]
        for line in t.lines
    ]
    u = t.usage_totals()
    totals = [
        "Total",
        "",
        "",
        "",
        st.num(u["requests"]),
        st.num(u["prompt_tokens"]),
        st.num(u["completion_tokens"]),
        st.num(u["cached_prompt_tokens"]),
        st.num(u["weighted_tokens"]),
        st.num(u["request_seconds"], 1),
        st.cash(t.total),
    ]
    header = ["user / item", "model", "pool", "kind", "requests", "prompt", "completion", "cached"]
    return Table([*header, "weighted", "seconds", "charge"], rows, set(range(4, 11)), totals)


def summary_teams(st: Statement) -> Table:
    rows: list[list[str]] = []
    over: set[int] = set()
    everyone = [*st.teams, st.central]
    for i, t in enumerate(everyone):
        u = t.usage_totals()
        before = st.previous_total(t.team)
        used = _used(st, t)
        if t.over_budget:
            over.add(i)
            used += " over"
        rows.append([
            t.team, t.cost_center, st.num(u["weighted_tokens"]), st.cash(t.idle_share), st.cash(t.total),
            "" if before is None else st.cash(before),
            "" if before is None else _pct(st, change_percent(t.total, before)),
            _price(st, unit_price(t.total, t.weighted_tokens)) if t.lines and t is not st.central else "",
            "" if t.budget is None else st.cash(t.budget), used,
        ])  # fmt: skip
    weighted = sum((t.weighted_tokens for t in st.teams), Decimal(0))
    prev_total = None if st.previous is None else st.previous.total_pool_cost
    totals = [
        "Total", "", st.num(weighted),
        st.cash(sum((t.idle_share for t in everyone), Decimal(0))), st.cash(st.total_pool_cost),
        "" if prev_total is None else st.cash(prev_total),
        "" if prev_total is None else _pct(st, change_percent(st.total_pool_cost, prev_total)),
        _price(st, unit_price(st.recovered, weighted)),
        st.cash(sum((t.budget for t in everyone if t.budget is not None), Decimal(0))), "",
    ]  # fmt: skip
    header = ["team", "cost center", "weighted tokens", "idle share", "total", "previous", "change"]
    return Table(
        [*header, "per 1M weighted tokens", "budget", "budget used"],
        rows,
        {2, 3, 4, 5, 6, 7, 8, 9},
        totals,
        over,
    )


def summary_pools(st: Statement) -> Table:
    def hours(h: Decimal) -> str:
        return st.num(h, hours_places(h))

    rows = [
        [
            p.name,
            st.cash(p.cost),
            p.cost_source,
            st.num(p.gpus),
            hours(p.gpu_hours),
            hours(p.idle_hours) if p.idle_known else "n/a",
            st.cash(p.idle_cost) if p.idle_known else "n/a",
            st.num(p.weighted_tokens),
            st.cash(p.recovered),
        ]
        for p in st.pools
    ]
    gpu_hours = sum((p.gpu_hours for p in st.pools), Decimal(0))
    idle_hours = sum((p.idle_hours for p in st.pools if p.idle_known), Decimal(0))
    known = any(p.idle_known for p in st.pools)
    totals = [
        "Total", st.cash(st.total_pool_cost), "", st.num(sum(p.gpus for p in st.pools)), hours(gpu_hours),
        hours(idle_hours) if known else "n/a", st.cash(st.idle_cost) if known else "n/a", st.num(sum((p.weighted_tokens for p in st.pools), Decimal(0))),
        st.cash(sum((p.recovered for p in st.pools), Decimal(0))),
    ]  # fmt: skip
    header = ["pool", "cost", "source", "GPUs", "GPU hours", "idle hours", "idle cost", "weighted tokens"]
    return Table([*header, "recovered"], rows, {1, 3, 4, 5, 6, 7, 8}, totals)


def summary_figures(st: Statement) -> list[tuple[str, str]]:
    rows = [
        ("Total pool cost", st.cash(st.total_pool_cost)),
        ("Recovered from teams", st.cash(st.recovered)),
        ("Kept by central IT (unrecovered)", st.cash(st.unrecovered)),
        ("Idle GPU cost", st.cash(st.idle_cost)),
    ]
    if st.previous is not None:
        p = st.previous
        change = _pct(st, change_percent(st.total_pool_cost, p.total_pool_cost))
        rows.append(
            (
                f"Previous period ({p.period.title})",
                f"pool cost {st.cash(p.total_pool_cost)}, recovered {st.cash(p.recovered)}"
                + (f"; pool cost {change}" if change else ""),
            )
        )
    return rows


def central_lines(st: Statement) -> Table:
    """What central IT keeps (unrecovered pool costs), line by line."""
    return Table(
        ["item", "pool", "amount"],
        [[line.description, line.pool, st.cash(line.charge)] for line in st.central.lines],
        {2},
        ["Total", "", st.cash(st.central.total)],
    )


def method_params(params: dict[str, Any], prefix: str = "") -> list[str]:
    """The method's parameters as ``name: value`` lines, nested keys dotted (pools have their own table)."""
    out = []
    for k in sorted(params):
        if k == "pools":
            continue
        v = params[k]
        if isinstance(v, dict):
            out += method_params(v, f"{prefix}{k}.")
        elif isinstance(v, list):
            out.append(
                f"{prefix}{k}: "
                + "; ".join(
                    ", ".join(f"{a}={b}" for a, b in sorted(x.items())) if isinstance(x, dict) else str(x)
                    for x in v
                )
            )
        else:
            out.append(f"{prefix}{k}: {v}")
    return out
