"""HTML for email and print: self-contained, inline styles, an inline SVG bar chart, no JavaScript.

Laid out to fit an A4 page's width (794 CSS px at 96 dpi, less the margins): small table type,
a chart that scales with the page, long names that wrap. ``tests/test_report_screenshot.py``
renders both documents in headless Chromium and checks that nothing overflows.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from html import escape

from exporter.report.statement import GLOSSARY, Statement, TeamStatement
from exporter.report.view import (
    Table,
    budget_line,
    central_lines,
    meta,
    method_params,
    summary_figures,
    summary_pools,
    summary_teams,
    team_comparison,
    team_lines,
)

STYLE = (
    "@page{size:A4;margin:12mm}"
    "body{font-family:Helvetica,Arial,sans-serif;color:#222;max-width:960px;margin:8px;font-size:13px}"
    "h1{font-size:22px;margin:8px 0}h2{font-size:16px;margin:18px 0 6px}"
    "table{border-collapse:collapse;margin:6px 0}"
    "th,td{border:1px solid #ccc;padding:3px 5px;font-size:11px;overflow-wrap:break-word}"
    "th{background:#f0f0f0;text-align:left}"
    "td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}td.n{white-space:nowrap}"
    "tfoot td{font-weight:bold;background:#f7f7f7;border-top:2px solid #888}"
    "table.meta td{border:none;padding:1px 8px 1px 0;font-size:12px}"
    "table.meta td:first-child{color:#666}"
    ".total{font-size:18px;font-weight:bold;margin:10px 0 4px}"
    ".budget{padding:4px 8px;display:inline-block;border-radius:3px;font-size:13px}"
    ".ok{background:#e8f3e8;color:#1d5e20}"
    ".over{background:#fde2e1;color:#9b1c1c;font-weight:bold}"
    "tr.over td{background:#fde2e1;color:#9b1c1c}"
    ".muted{color:#666;font-size:12px}"
    "dl{font-size:12px}dt{font-weight:bold}dd{margin:0 0 6px 16px}"
    "svg{max-width:100%;height:auto}"
)


def bar_chart(title: str, items: list[tuple[str, Decimal]], fmt: Callable[[Decimal], str]) -> str:
    """Horizontal bars, one per item, widths proportional to the amounts (largest = full width).
    The SVG has a viewBox and scales down with the page; ``fmt`` formats an amount."""
    items = [(k, v) for k, v in items if v > 0]
    if not items:
        return ""
    row_h, label_w, bar_w = 22, 200, 380
    width, height = label_w + bar_w + 130, row_h * len(items) + 30
    top = max(v for _, v in items)
    font = 'font-family="Helvetica,Arial,sans-serif"'
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f'<text x="0" y="16" font-size="14" font-weight="bold" {font}>{escape(title)}</text>',
    ]
    for i, (label, value) in enumerate(items):
        y = 26 + i * row_h
        w = (value / top * bar_w).quantize(Decimal("0.1"))
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 14}" font-size="12" text-anchor="end" {font}>{escape(label)}</text>'
            f'<rect x="{label_w}" y="{y + 2}" width="{w}" height="{row_h - 6}" fill="#4a7bb7"/>'
            f'<text x="{label_w + w + 6}" y="{y + 14}" font-size="12" {font}>{escape(fmt(value))}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _cell(tag: str, text: str, numeric: bool) -> str:
    cls = ' class="n"' if numeric else ""
    return f"<{tag}{cls}>{escape(text)}</{tag}>"


def _table(t: Table, cls: str = "") -> str:
    head = "".join(_cell("th", h, i in t.numeric) for i, h in enumerate(t.header))
    body = "".join(
        ('<tr class="over">' if r in t.over else "<tr>")
        + "".join(_cell("td", c, i in t.numeric) for i, c in enumerate(row))
        + "</tr>"
        for r, row in enumerate(t.rows)
    )
    foot = ""
    if t.totals is not None:
        foot = (
            '<tfoot><tr class="totals">'
            + "".join(_cell("td", c, i in t.numeric) for i, c in enumerate(t.totals))
            + "</tr></tfoot>"
        )
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody>{foot}</table>"


def _meta(pairs: list[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in pairs)
    return f'<table class="meta"><tbody>{rows}</tbody></table>'


def _doc(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def _params_html(st: Statement) -> str:
    items = method_params(st.params)
    if not items:
        return ""
    return "<h2>Method parameters</h2><ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>"


def _glossary() -> str:
    return (
        "<h2>Glossary</h2><dl>"
        + "".join(f"<dt>{escape(term)}</dt><dd>{escape(text)}</dd>" for term, text in GLOSSARY)
        + "</dl>"
    )


def render_team_html(st: Statement, t: TeamStatement) -> str:
    parts = [f"<h1>Chargeback statement: {escape(t.team)}</h1>", _meta(meta(st, t))]
    parts.append(f'<p class="total">Total: {escape(st.cash(t.total))}</p>')
    budget = budget_line(st, t)
    if budget:
        parts.append(f'<p class="budget {"over" if t.over_budget else "ok"}">{escape(budget)}</p>')
    if t.idle_share:
        parts.append(f"<p>Of which idle GPU capacity: {escape(st.cash(t.idle_share))}</p>")
    parts.append("<h2>This period against the previous one</h2>")
    parts.append(_table(team_comparison(st, t)))
    by_user: dict[str, Decimal] = {}
    for line in t.lines:
        key = line.user or line.description
        by_user[key] = by_user.get(key, Decimal(0)) + line.charge
    parts.append(bar_chart("Spend by user", sorted(by_user.items(), key=lambda kv: (-kv[1], kv[0])), st.cash))
    parts.append("<h2>Lines</h2>")
    if t.lines:
        parts.append(_table(team_lines(st, t), "lines"))
    else:
        parts.append("<p>No usage in this period.</p>")
    parts.append(_params_html(st))
    parts.append(_glossary())
    return _doc(f"Chargeback {t.team} {st.period.title}", "\n".join(p for p in parts if p))


def render_summary_html(st: Statement) -> str:
    parts = [
        "<h1>Chargeback summary</h1>",
        _meta(meta(st, None)),
        _meta(summary_figures(st)),
        bar_chart(
            "Spend by team",
            sorted(((t.team, t.total) for t in st.teams), key=lambda kv: (-kv[1], kv[0])),
            st.cash,
        ),
        "<h2>Teams</h2>",
        _table(summary_teams(st), "teams"),
        "<h2>Pools</h2>",
        _table(summary_pools(st), "pools"),
    ]
    if st.central.lines:
        parts.append("<h2>Central IT</h2>")
        parts.append(_table(central_lines(st)))
    parts.append(_params_html(st))
    if st.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in st.notes) + "</ul>")
    parts.append(_glossary())
    return _doc(f"Chargeback summary {st.period.title}", "\n".join(p for p in parts if p))
