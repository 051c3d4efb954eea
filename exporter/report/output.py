"""Writing a statement to disk: ``DIR/<period>/<method>/`` holds the summary files and a
``teams/`` folder with one file per team and format.

    statement.json        everything (json)
    lines.csv teams.csv pools.csv   (csv; lines.csv has every line of every team and central IT)
    summary.html summary.md         (html, md)
    teams/<team>.{csv,json,html,md}
"""

from __future__ import annotations

import re
from pathlib import Path

from exporter.report.render_csv import render_lines_csv, render_pools_csv, render_team_csv, render_teams_csv
from exporter.report.render_html import render_summary_html, render_team_html
from exporter.report.render_json import render_json, render_team_json
from exporter.report.render_md import render_summary_md, render_team_md
from exporter.report.statement import Statement

FORMATS = ("csv", "json", "html", "md")


def safe_name(name: str) -> str:
    """Team names may hold '/' or ':'; file names may not."""
    return re.sub(r"[^A-Za-z0-9_.@+-]", "_", name)


def parse_formats(text: str) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(
            f"--format: unknown format {', '.join(bad) or '(none)'} (expected a comma-separated list of {', '.join(FORMATS)})"
        )
    return formats


def statement_dir(out: Path, st: Statement) -> Path:
    return out / safe_name(st.period.label) / st.method


def render_files(st: Statement, formats: tuple[str, ...]) -> dict[str, str]:
    """Relative path → content, for every file of the statement in the given formats."""
    files: dict[str, str] = {}
    if "json" in formats:
        files["statement.json"] = render_json(st)
    if "csv" in formats:
        files["lines.csv"] = render_lines_csv(st)
        files["teams.csv"] = render_teams_csv(st)
        files["pools.csv"] = render_pools_csv(st)
    if "html" in formats:
        files["summary.html"] = render_summary_html(st)
    if "md" in formats:
        files["summary.md"] = render_summary_md(st)
    for t in st.teams:
        base = f"teams/{safe_name(t.team)}"
        if "csv" in formats:
            files[f"{base}.csv"] = render_team_csv(st, t)
        if "json" in formats:
            files[f"{base}.json"] = render_team_json(st, t)
        if "html" in formats:
            files[f"{base}.html"] = render_team_html(st, t)
        if "md" in formats:
            files[f"{base}.md"] = render_team_md(st, t)
    return files


def write_statement(st: Statement, out: Path, formats: tuple[str, ...]) -> tuple[Path, list[Path]]:
    """Write every file (replacing earlier runs' files of the same names); returns (dir, paths)."""
    target = statement_dir(out, st)
    written = []
    for rel, content in sorted(render_files(st, formats).items()):
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(content.encode("utf-8"))
        tmp.replace(path)  # readers never see a half-written statement
        written.append(path)
    return target, written
