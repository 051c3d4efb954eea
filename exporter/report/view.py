"""What people read on a statement: the document as a list of typed blocks (headings, tables,
paragraphs…) with figures already formatted for the locale. The HTML and Markdown renderers only
turn blocks into markup, so both show the same figures in the same order. CSV and JSON keep
machine-readable numbers and build their own rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from exporter.report.money import hours_places
from exporter.report.statement import GLOSSARY, Statement, TeamStatement, change_percent, unit_price


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    numeric: set[int]  # right-aligned columns
    totals: list[str] | None = None  # the totals row, if any
    over: set[int] = field(default_factory=set)  # indexes of rows to highlight (over budget)
    name: str = ""  # what the table holds ("lines", "teams", "pools"): a class for HTML styling


@dataclass
class Heading:
    level: int  # 1: the document's title, 2: a section
    text: str


@dataclass
class Meta:
    pairs: list[tuple[str, str]]  # (label, value)


@dataclass
class Paragraph:
    text: str
    style: Literal["", "total", "ok", "over"] = ""  # "ok" / "over": within / over budget


@dataclass
class Chart:
    """Horizontal bars; only HTML draws them (Markdown has no pictures, its tables say the same)."""

    title: str
    items: list[tuple[str, Decimal]]
    fmt: Callable[[Decimal], str]


@dataclass
class Bullets:
    """A section that is a titled list. ``section=False``: in Markdown a run-in label
    ("Method parameters:") instead of a heading, as on a team statement."""

    title: str
    items: list[str]
    section: bool = True


@dataclass
class Definitions:
    title: str
    items: Sequence[tuple[str, str]]  # (term, explanation)


Block = Heading | Meta | Paragraph | Chart | Table | Bullets | Definitions


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
    return Table([*header, "weighted", "seconds", "charge"], rows, set(range(4, 11)), totals, name="lines")


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
        "teams",
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
    return Table([*header, "recovered"], rows, {1, 3, 4, 5, 6, 7, 8}, totals, name="pools")


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


def _by_amount(items: list[tuple[str, Decimal]]) -> list[tuple[str, Decimal]]:
    return sorted(items, key=lambda kv: (-kv[1], kv[0]))


def team_document(st: Statement, t: TeamStatement) -> list[Block]:
    """One team's statement, top to bottom."""
    doc: list[Block] = [
        Heading(1, f"Chargeback statement: {t.team}"),
        Meta(meta(st, t)),
        Paragraph(f"Total: {st.cash(t.total)}", "total"),
    ]
    budget = budget_line(st, t)
    if budget:
        doc.append(Paragraph(budget, "over" if t.over_budget else "ok"))
    if t.idle_share:
        doc.append(Paragraph(f"Of which idle GPU capacity: {st.cash(t.idle_share)}"))
    by_user: dict[str, Decimal] = {}
    for line in t.lines:
        key = line.user or line.description
        by_user[key] = by_user.get(key, Decimal(0)) + line.charge
    doc += [
        Heading(2, "This period against the previous one"),
        team_comparison(st, t),
        Chart("Spend by user", _by_amount(list(by_user.items())), st.cash),
        Heading(2, "Lines"),
        team_lines(st, t) if t.lines else Paragraph("No usage in this period."),
        Bullets("Method parameters", method_params(st.params), section=False),
        Definitions("Glossary", GLOSSARY),
    ]
    return doc


def summary_document(st: Statement) -> list[Block]:
    """The summary for central IT, top to bottom."""
    doc: list[Block] = [
        Heading(1, "Chargeback summary"),
        Meta(meta(st, None)),
        Meta(summary_figures(st)),
        Chart("Spend by team", _by_amount([(t.team, t.total) for t in st.teams]), st.cash),
        Heading(2, "Teams"),
        summary_teams(st),
        Heading(2, "Pools"),
        summary_pools(st),
    ]
    if st.central.lines:
        doc += [Heading(2, "Central IT"), central_lines(st)]
    doc += [
        Bullets("Method parameters", method_params(st.params)),
        Bullets("Notes", list(st.notes)),
        Definitions("Glossary", GLOSSARY),
    ]
    return doc
