"""HTML for email: self-contained, inline styles, an inline SVG bar chart, no JavaScript."""

from __future__ import annotations

from decimal import Decimal
from html import escape

from exporter.report.money import fmt_decimal
from exporter.report.render_md import _params
from exporter.report.statement import Statement, TeamStatement, fmt_qty

STYLE = (
    "body{font-family:Helvetica,Arial,sans-serif;color:#222;max-width:960px}"
    "table{border-collapse:collapse;margin:8px 0}"
    "th,td{border:1px solid #ccc;padding:4px 8px;font-size:13px}"
    "th{background:#f0f0f0;text-align:left}"
    "td.n{text-align:right;font-variant-numeric:tabular-nums}"
    ".total{font-size:18px;font-weight:bold}"
    ".muted{color:#666;font-size:12px}"
)


def bar_chart(title: str, items: list[tuple[str, Decimal]], currency: str, minor: int) -> str:
    """Horizontal bars, one per item, widths proportional to the amounts (largest = full width)."""
    items = [(k, v) for k, v in items if v > 0]
    if not items:
        return ""
    row_h, label_w, bar_w = 22, 220, 460
    height = row_h * len(items) + 30
    top = max(v for _, v in items)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 120}" height="{height}" role="img" '
        f'aria-label="{escape(title)}">',
        f'<text x="0" y="16" font-size="14" font-weight="bold" font-family="Helvetica,Arial,sans-serif">{escape(title)}</text>',
    ]
    for i, (label, value) in enumerate(items):
        y = 26 + i * row_h
        w = (value / top * bar_w).quantize(Decimal("0.1"))
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 14}" font-size="12" text-anchor="end" '
            f'font-family="Helvetica,Arial,sans-serif">{escape(label)}</text>'
            f'<rect x="{label_w}" y="{y + 2}" width="{w}" height="{row_h - 6}" fill="#4a7bb7"/>'
            f'<text x="{label_w + w + 6}" y="{y + 14}" font-size="12" font-family="Helvetica,Arial,sans-serif">'
            f"{fmt_decimal(value, minor)} {escape(currency)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _table(header: list[str], rows: list[list[str]], numeric: set[int]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{escape(c)}</td>' if i in numeric else f"<td>{escape(c)}</td>"
            for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _doc(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def _period_line(st: Statement) -> str:
    p = st.period
    return (
        f'<p class="muted">Period {escape(p.label)} ({escape(p.start.isoformat())} to {escape(p.end.isoformat())}, '
        f"{escape(p.timezone)}) · method <b>{escape(st.method)}</b> · currency {escape(st.currency)} · "
        f"quantities from {escape(st.source)}</p>"
    )


def _params_html(st: Statement) -> str:
    items = _params(st.params)
    if not items:
        return ""
    return "<h3>Method parameters</h3><ul>" + "".join(f"<li>{escape(i[2:])}</li>" for i in items) + "</ul>"


def render_team_html(st: Statement, t: TeamStatement) -> str:
    m = st.money
    parts = [f"<h1>Chargeback statement: {escape(t.team)}</h1>", _period_line(st)]
    if t.business_unit or t.cost_center:
        parts.append(
            f"<p>Business unit: {escape(t.business_unit or '-')} · cost center: {escape(t.cost_center or '-')}</p>"
        )
    parts.append(f'<p class="total">Total: {m(t.total)} {escape(st.currency)}</p>')
    if t.budget is not None:
        parts.append(f"<p>Budget {m(t.budget)} {escape(st.currency)}: {t.budget_used_percent} % used</p>")
    if t.idle_share:
        parts.append(f"<p>Of which idle GPU capacity: {m(t.idle_share)} {escape(st.currency)}</p>")
    by_user: dict[str, Decimal] = {}
    for line in t.lines:
        key = line.user or line.description
        by_user[key] = by_user.get(key, Decimal(0)) + line.charge
    parts.append(
        bar_chart(
            "Spend by user",
            sorted(by_user.items(), key=lambda kv: (-kv[1], kv[0])),
            st.currency,
            st.minor_units,
        )
    )
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
            m(line.charge),
        ]
        for line in t.lines
    ]
    if rows:
        parts.append(
            _table(
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
                set(range(4, 11)),
            )
        )
    else:
        parts.append("<p>No usage in this period.</p>")
    parts.append(_params_html(st))
    return _doc(f"Chargeback {t.team} {st.period.label}", "\n".join(p for p in parts if p))


def render_summary_html(st: Statement) -> str:
    m = st.money
    cur = escape(st.currency)
    parts = [
        "<h1>Chargeback summary</h1>",
        _period_line(st),
        "<ul>"
        f"<li>Total pool cost: <b>{m(st.total_pool_cost)} {cur}</b></li>"
        f"<li>Recovered from teams: {m(st.recovered)} {cur}</li>"
        f"<li>Kept by central IT (unrecovered): {m(st.unrecovered)} {cur}</li>"
        f"<li>Idle GPU cost: {m(st.idle_cost)} {cur}</li></ul>",
        bar_chart(
            "Spend by team",
            sorted(((t.team, t.total) for t in st.teams), key=lambda kv: (-kv[1], kv[0])),
            st.currency,
            st.minor_units,
        ),
    ]
    rows = []
    for t in [*st.teams, st.central]:
        u = t.usage_totals()
        rows.append([
            t.team, t.business_unit, t.cost_center, str(u["requests"]), fmt_qty(u["weighted_tokens"]), m(t.idle_share),
            m(t.total), "" if t.budget is None else m(t.budget),
            "" if t.budget_used_percent is None else f"{t.budget_used_percent} %",
        ])  # fmt: skip
    parts.append("<h2>Teams</h2>")
    parts.append(
        _table(
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
            {3, 4, 5, 6, 7, 8},
        )
    )
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
    parts.append("<h2>Pools</h2>")
    parts.append(
        _table(
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
            {1, 3, 4, 5, 6, 7, 8},
        )
    )
    if st.central.lines:
        parts.append("<h2>Central IT</h2>")
        parts.append(
            _table(
                ["item", "pool", "amount"],
                [[line.description, line.pool, m(line.charge)] for line in st.central.lines],
                {2},
            )
        )
    parts.append(_params_html(st))
    if st.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in st.notes) + "</ul>")
    return _doc(f"Chargeback summary {st.period.label}", "\n".join(p for p in parts if p))
