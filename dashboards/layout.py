"""Dashboards as data: a dashboard is a list of ``Row``s of ``Panel``s (title, kind, unit, queries,
description and a few display options); ``panels_json`` turns them into Grafana's panel JSON.

Nothing here is numbered by hand. Ids follow the visible order (each row, then its panels), and the
grid position comes from a 24-column flow: panels fill a line left to right, wrap to a new line when
the next one does not fit, and every row starts a new line below the tallest panel above it.

Panels are declared once, for every currency: ``MONEY`` stands for the currency's Grafana unit and
``{currency}`` in a description or title for its ISO code, both filled in by ``panels_json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from dashboards import modern
from dashboards.modern import Json

GRID_WIDTH = 24
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

MONEY = "{money}"  # the unit of money panels: currency_unit(currency) once the currency is known
CURRENCY = "{currency}"  # in descriptions: the ISO code of the currency

Kind = Literal["timeseries", "stat", "bargauge", "table"]
# A query: its expression alone, or (expression, legend).
Query = str | tuple[str, str]


def steps(*pairs: tuple[str, float | None]) -> list[dict[str, Any]]:
    """Threshold steps in Grafana's field-config form: the first step has value null."""
    return [{"color": color, "value": value} for color, value in pairs]


GREEN_ONLY = steps(("green", None))


@dataclass(frozen=True)
class Panel:
    """One panel. ``width`` and ``height`` default to the row's; the query shape follows the kind:
    time series and stats plot a range, bar gauges read an instant, tables an instant table."""

    title: str
    kind: Kind
    unit: str
    queries: Sequence[Query]
    description: str
    width: int | None = None
    height: int | None = None
    thresholds: Sequence[Json] = tuple(GREEN_ONLY)
    max_value: float | None = None
    decimals: int | None = None
    links: Sequence[Json] = ()
    overrides: Sequence[Json] = ()
    stacked: bool = False  # timeseries: stack the series
    fill: int = 10  # timeseries: fill opacity under the lines
    graph: bool = True  # stat: sparkline behind the value
    mappings: Sequence[Json] = ()  # stat: value → text
    transformations: Sequence[Json] = ()  # table
    sort_by: str | None = None  # table: column sorted descending


# Height of a panel when neither it nor its row gives one: a stat is a single figure.
HEIGHTS: dict[str, int] = {"stat": 4}
DEFAULT_HEIGHT = 8


@dataclass(frozen=True)
class Row:
    """A titled row; its panels take ``width`` and ``height`` unless they give their own (without a
    height anywhere: ``HEIGHTS`` by kind, else ``DEFAULT_HEIGHT``)."""

    title: str
    panels: Sequence[Panel] = field(default_factory=tuple)
    width: int = 12
    height: int | None = None


def _target(query: Query, index: int, kind: Kind) -> Json:
    expr, legend = (query, "") if isinstance(query, str) else query
    instant = kind in ("bargauge", "table")
    return modern.prometheus_target(expr, DATASOURCE, legend, chr(ord("A") + index), instant, kind == "table")


# What differs between the kinds besides the options: colour mode, a floor at 0, per-field display
# settings, and the text shown without data.
_FIELD_STYLE: dict[str, Json] = {
    "timeseries": {"color_mode": "palette-classic", "min_value": 0},
    "stat": {"color_mode": "thresholds", "no_value": "no data"},
    "bargauge": {"color_mode": "thresholds", "min_value": 0},
    "table": {
        "color_mode": "thresholds",
        "custom": {"align": "auto", "cellOptions": {"type": "auto"}, "filterable": True, "inspect": False},
    },
}


def _timeseries_custom(p: Panel) -> Json:
    return {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": p.fill,
        "gradientMode": "none",
        "showPoints": "never",
        "spanNulls": False,
        "axisPlacement": "auto",
        "stacking": {"mode": "normal" if p.stacked else "none", "group": "A"},
        "thresholdsStyle": {"mode": "off"},
    }


def _options(p: Panel) -> Json:
    if p.kind == "timeseries":
        return {
            "legend": modern.legend(("lastNotNull", "max")),
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    if p.kind == "stat":
        return {
            "reduceOptions": modern.reduce_options(),
            "graphMode": "area" if p.graph else "none",
            "colorMode": "value",
            "justifyMode": "auto",
            "textMode": "auto",
            "orientation": "auto",
            "wideLayout": True,
            "showPercentChange": False,
        }
    if p.kind == "bargauge":
        # Without max_value each bar is scaled to the largest value shown.
        return {
            "reduceOptions": modern.reduce_options(),
            "displayMode": "gradient",
            "orientation": "horizontal",
            "showUnfilled": True,
            "valueMode": "color",
            "namePlacement": "auto",
            "sizing": "auto",
            "minVizWidth": 8,
            "minVizHeight": 16,
            "maxVizHeight": 300,
        }
    return {
        "showHeader": True,
        "cellHeight": "sm",
        "footer": {"show": False, "reducer": ["sum"], "countRows": False},
        "sortBy": [{"displayName": p.sort_by, "desc": True}] if p.sort_by else [],
    }


def panel_json(p: Panel, id: int, money: str, currency: str) -> Json:
    """One panel's JSON (without ``gridPos``) for a currency."""
    style = dict(_FIELD_STYLE[p.kind])
    if p.kind == "timeseries":
        style["custom"] = _timeseries_custom(p)
    defaults = modern.field_defaults(
        money if p.unit == MONEY else p.unit,
        steps=p.thresholds,
        max_value=p.max_value,
        decimals=p.decimals,
        links=p.links,
        mappings=p.mappings,
        **style,
    )
    return modern.panel(
        p.kind,
        id,
        p.title.replace(CURRENCY, currency),
        p.description.replace(CURRENCY, currency),
        DATASOURCE,
        [_target(q, i, p.kind) for i, q in enumerate(p.queries)],
        defaults,
        _options(p),
        overrides=p.overrides,
        transformations=p.transformations,
    )


def panels_json(rows: Sequence[Row], money: str, currency: str) -> list[Json]:
    """Every row and panel with its id (1, 2, … in visible order) and its place on the grid."""
    out: list[Json] = []
    x = y = line_height = 0
    for row in rows:
        y += line_height  # a row starts below the tallest panel of the line above
        out.append(modern.row(len(out) + 1, row.title, {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y}))
        x, y, line_height = 0, y + 1, 0
        for p in row.panels:
            w = p.width or row.width
            h = p.height or row.height or HEIGHTS.get(p.kind, DEFAULT_HEIGHT)
            if w > GRID_WIDTH:
                raise ValueError(f"panel {p.title!r} is wider than the grid ({w} > {GRID_WIDTH})")
            if x + w > GRID_WIDTH:  # wrap
                x, y, line_height = 0, y + line_height, 0
            grid = {"h": h, "w": w, "x": x, "y": y}
            out.append({**panel_json(p, len(out) + 1, money, currency), "gridPos": grid})
            x, line_height = x + w, max(line_height, h)
    return out
