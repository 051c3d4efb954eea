"""Markdown (also fine in a terminal): the summary for central IT and one section per team."""

from __future__ import annotations

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


def _table(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> list[str]:
    right = right if right is not None else set(range(1, len(header)))
    out = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|",
    ]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def _view_table(t: Table) -> list[str]:
    rows = [[f"**{c}**" if r in t.over and c else c for c in row] for r, row in enumerate(t.rows)]
    if t.totals is not None:
        rows.append([f"**{c}**" if c else "" for c in t.totals])
    return _table(t.header, rows, right=t.numeric)


def _meta(pairs: list[tuple[str, str]]) -> list[str]:
    return [f"- {k}: {v}" for k, v in pairs]


def _glossary(level: int) -> list[str]:
    return ["", f"{'#' * level} Glossary", "", *[f"- **{term}**: {text}" for term, text in GLOSSARY]]


def render_team_md(st: Statement, t: TeamStatement, level: int = 1) -> str:
    h = "#" * level
    out = [f"{h} Chargeback statement: {t.team}", "", *_meta(meta(st, t)), ""]
    out.append(f"**Total: {st.cash(t.total)}**")
    budget = budget_line(st, t)
    if budget:
        out += ["", f"**{budget}**" if t.over_budget else budget]
    if t.idle_share:
        out += ["", f"Of which idle GPU capacity: {st.cash(t.idle_share)}"]
    out += ["", f"{h}# This period against the previous one", "", *_view_table(team_comparison(st, t)), ""]
    out += [f"{h}# Lines", ""]
    if t.lines:
        out += _view_table(team_lines(st, t))
    else:
        out.append("No usage in this period.")
    params = method_params(st.params)
    if params:
        out += ["", "Method parameters:", "", *[f"- {p}" for p in params]]
    out += _glossary(level + 1)
    return "\n".join(out) + "\n"


def render_summary_md(st: Statement) -> str:
    out = ["# Chargeback summary", "", *_meta(meta(st, None)), "", *_meta(summary_figures(st)), ""]
    out += ["## Teams", "", *_view_table(summary_teams(st))]
    out += ["", "## Pools", "", *_view_table(summary_pools(st))]
    if st.central.lines:
        out += ["", "## Central IT", ""]
        out += _view_table(central_lines(st))
    params = method_params(st.params)
    if params:
        out += ["", "## Method parameters", "", *[f"- {p}" for p in params]]
    if st.notes:
        out += ["", "## Notes", "", *[f"- {n}" for n in st.notes]]
    out += _glossary(2)
    return "\n".join(out) + "\n"


def render_md(st: Statement) -> str:
    """Everything in one document: the summary, then each team."""
    parts = [render_summary_md(st)]
    parts += [render_team_md(st, t, level=2) for t in st.teams]
    return "\n".join(parts)
