"""HTML for email and print: self-contained, inline styles, an inline SVG bar chart, no JavaScript.

Laid out to fit an A4 page's width (794 CSS px at 96 dpi, less the margins): small table type,
a chart that scales with the page, long names that wrap. ``tests/test_report_screenshot.py``
renders both documents in headless Chromium and checks that nothing overflows.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from html import escape
from typing import assert_never

from exporter.report import view
from exporter.report.statement import Statement, TeamStatement

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


def _table(t: view.Table) -> str:
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
    attr = f' class="{t.name}"' if t.name else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody>{foot}</table>"


_PARAGRAPH_CLASS = {"total": "total", "ok": "budget ok", "over": "budget over"}


def _block(block: view.Block) -> str:
    match block:
        case view.Heading():
            return f"<h{block.level}>{escape(block.text)}</h{block.level}>"
        case view.Meta():
            rows = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in block.pairs)
            return f'<table class="meta"><tbody>{rows}</tbody></table>'
        case view.Paragraph():
            cls = _PARAGRAPH_CLASS.get(block.style)
            return (f'<p class="{cls}">' if cls else "<p>") + f"{escape(block.text)}</p>"
        case view.Chart():
            return bar_chart(block.title, block.items, block.fmt)
        case view.Table():
            return _table(block)
        case view.Bullets():
            if not block.items:
                return ""
            items = "".join(f"<li>{escape(i)}</li>" for i in block.items)
            # a section's heading even where Markdown makes it a run-in label (block.section)
            return f"<h2>{escape(block.title)}</h2><ul>{items}</ul>"
        case view.Definitions():
            items = "".join(f"<dt>{escape(term)}</dt><dd>{escape(text)}</dd>" for term, text in block.items)
            return f"<h2>{escape(block.title)}</h2><dl>{items}</dl>"
        case _:
            assert_never(block)


def _doc(title: str, doc: list[view.Block]) -> str:
    body = "\n".join(p for b in doc if (p := _block(b)))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def render_team_html(st: Statement, t: TeamStatement) -> str:
    return _doc(f"Chargeback {t.team} {st.period.title}", view.team_document(st, t))


def render_summary_html(st: Statement) -> str:
    return _doc(f"Chargeback summary {st.period.title}", view.summary_document(st))
