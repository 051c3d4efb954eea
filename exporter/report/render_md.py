"""Markdown (also fine in a terminal): the summary for central IT and one section per team."""

from __future__ import annotations

from typing import Any

from exporter.report.money import fmt_decimal
from exporter.report.statement import Statement, TeamStatement, fmt_qty


def _table(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> list[str]:
    right = right if right is not None else set(range(1, len(header)))
    out = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|",
    ]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def _params(params: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(params):
        if k == "pools":
            continue
        v = params[k]
        if isinstance(v, dict):
            out += _params(v, f"{prefix}{k}.")
        elif isinstance(v, list):
            out.append(
                f"- {prefix}{k}: "
                + "; ".join(
                    ", ".join(f"{a}={b}" for a, b in sorted(x.items())) if isinstance(x, dict) else str(x)
                    for x in v
                )
            )
        else:
            out.append(f"- {prefix}{k}: {v}")
    return out


def header(st: Statement) -> list[str]:
    p = st.period
    return [
        f"Period {p.label} ({p.start.isoformat()} to {p.end.isoformat()}, {p.timezone}), "
        f"method **{st.method}**, currency {st.currency}, quantities from {st.source}.",
    ]


def render_team_md(st: Statement, t: TeamStatement, level: int = 1) -> str:
    h = "#" * level
    out = [f"{h} Chargeback statement: {t.team}", ""]
    out += [*header(st), ""]
    if t.business_unit or t.cost_center:
        out += [f"Business unit: {t.business_unit or '-'}; cost center: {t.cost_center or '-'}", ""]
    out.append(f"**Total: {st.money(t.total)} {st.currency}**")
    if t.budget is not None:
        out.append(f"Budget: {st.money(t.budget)} {st.currency} ({t.budget_used_percent} % used)")
    if t.idle_share:
        out.append(f"Of which idle GPU capacity: {st.money(t.idle_share)} {st.currency}")
    out.append("")
    rows = [
        [
            line.user or line.description,
            line.model,
            line.pool,
            line.kind,
            str(line.requests),
            str(line.prompt_tokens),
            str(line.completion_tokens),
            str(line.cached_tokens),
            fmt_qty(line.weighted_tokens),
            fmt_decimal(line.request_seconds, 3),
            st.money(line.charge),
        ]
        for line in t.lines
    ]
    if rows:
        out += _table(
            [
                "user / item",
                "model",
                "pool",
                "kind",
                "requests",
                "prompt",
                "completion",
                "cached",
                "weighted",
                "seconds",
                "charge",
            ],
            rows,
            right=set(range(4, 11)),
        )
    else:
        out.append("No usage in this period.")
    params = _params(st.params)
    if params:
        out += ["", "Method parameters:", "", *params]
    return "\n".join(out) + "\n"


def render_summary_md(st: Statement) -> str:
    m = st.money
    out = ["# Chargeback summary", "", *header(st), ""]
    out += [
        f"- Total pool cost: {m(st.total_pool_cost)} {st.currency}",
        f"- Recovered from teams: {m(st.recovered)} {st.currency}",
        f"- Kept by central IT (unrecovered): {m(st.unrecovered)} {st.currency}",
        f"- Idle GPU cost: {m(st.idle_cost)} {st.currency}",
        "",
        "## Teams",
        "",
    ]
    rows = []
    for t in [*st.teams, st.central]:
        u = t.usage_totals()
        rows.append([
            t.team, t.business_unit, t.cost_center, str(u["requests"]), fmt_qty(u["weighted_tokens"]),
            m(t.idle_share), m(t.total), "" if t.budget is None else m(t.budget),
            "" if t.budget_used_percent is None else f"{t.budget_used_percent} %",
        ])  # fmt: skip
    out += _table(
        [
            "team",
            "business unit",
            "cost center",
            "requests",
            "weighted tokens",
            "idle share",
            "total",
            "budget",
            "used",
        ],
        rows,
        right={3, 4, 5, 6, 7, 8},
    )
    out += ["", "## Pools", ""]
    prows = [
        [
            p.name,
            m(p.cost),
            p.cost_source,
            str(p.gpus),
            fmt_decimal(p.gpu_hours, 1),
            fmt_decimal(p.idle_hours, 1),
            m(p.idle_cost) if p.idle_known else "n/a",
            fmt_qty(p.weighted_tokens),
            m(p.recovered),
        ]
        for p in st.pools
    ]
    out += _table(
        [
            "pool",
            "cost",
            "source",
            "GPUs",
            "GPU hours",
            "idle hours",
            "idle cost",
            "weighted tokens",
            "recovered",
        ],
        prows,
        right={1, 3, 4, 5, 6, 7, 8},
    )
    if st.central.lines:
        out += ["", "## Central IT", ""]
        out += _table(
            ["item", "pool", "amount"],
            [[line.description, line.pool, m(line.charge)] for line in st.central.lines],
            right={2},
        )
    params = _params(st.params)
    if params:
        out += ["", "## Method parameters", "", *params]
    if st.notes:
        out += ["", "## Notes", "", *[f"- {n}" for n in st.notes]]
    return "\n".join(out) + "\n"


def render_md(st: Statement) -> str:
    """Everything in one document: the summary, then each team."""
    parts = [render_summary_md(st)]
    parts += [render_team_md(st, t, level=2) for t in st.teams]
    return "\n".join(parts)
