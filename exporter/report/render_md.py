"""Markdown (also fine in a terminal): the summary for central IT and one section per team."""

from __future__ import annotations

from typing import assert_never

from exporter.report import view
from exporter.report.statement import Statement, TeamStatement


def _table(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> list[str]:
    right = right if right is not None else set(range(1, len(header)))
    out = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|",
    ]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def _view_table(t: view.Table) -> list[str]:
    rows = [[f"**{c}**" if r in t.over and c else c for c in row] for r, row in enumerate(t.rows)]
    if t.totals is not None:
        rows.append([f"**{c}**" if c else "" for c in t.totals])
    return _table(t.header, rows, right=t.numeric)


def _block(block: view.Block, level: int) -> list[str]:
    """The block's lines; ``level`` is the heading level of the document's title."""
    h = "#" * (level + 1)  # a section's heading
    match block:
        case view.Heading():
            return [f"{'#' * (level + block.level - 1)} {block.text}"]
        case view.Meta():
            return [f"- {k}: {v}" for k, v in block.pairs]
        case view.Paragraph():
            return [f"**{block.text}**" if block.style in ("total", "over") else block.text]
        case view.Chart():
            return []
        case view.Table():
            return _view_table(block)
        case view.Bullets():
            if not block.items:
                return []
            title = f"{h} {block.title}" if block.section else f"{block.title}:"
            return [title, "", *[f"- {i}" for i in block.items]]
        case view.Definitions():
            return [f"{h} {block.title}", "", *[f"- **{term}**: {text}" for term, text in block.items]]
        case _:
            assert_never(block)


def _render(doc: list[view.Block], level: int = 1) -> str:
    """Blocks separated by a blank line."""
    return "\n\n".join("\n".join(lines) for b in doc if (lines := _block(b, level))) + "\n"


def render_team_md(st: Statement, t: TeamStatement, level: int = 1) -> str:
    return _render(view.team_document(st, t), level)


def render_summary_md(st: Statement) -> str:
    return _render(view.summary_document(st))


def render_md(st: Statement) -> str:
    """Everything in one document: the summary, then each team."""
    parts = [render_summary_md(st)]
    parts += [render_team_md(st, t, level=2) for t in st.teams]
    return "\n".join(parts)
