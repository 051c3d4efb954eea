"""What the three chargeback dashboards share: the datasource variable, units, links between them,
panel builders that always set a unit, a description and the ``${datasource}`` reference, and a small
grid layout so that panels never overlap.

Every builder takes an explicit panel ``id``: ids stay stable when panels are added elsewhere, so
links to ``viewPanel=<id>`` keep working across regenerations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dashboards import modern, selectors
from dashboards.modern import Json

# Default currency of the generated JSON (the example config uses EUR). ``build.py --currency USD``
# regenerates the dashboards for another ISO 4217 code.
DEFAULT_CURRENCY = "EUR"

# Grafana ships named units for these currencies; any other code is shown with Grafana's custom
# ``currency:<symbol>`` unit, which prefixes the value with the code.
GRAFANA_CURRENCY_UNITS = frozenset(
    [
        "USD",
        "GBP",
        "EUR",
        "JPY",
        "RUB",
        "UAH",
        "BRL",
        "DKK",
        "ISK",
        "NOK",
        "SEK",
        "CZK",
        "CHF",
        "PLN",
        "BTC",
        "ZAR",
        "INR",
        "KRW",
        "IDR",
        "PHP",
        "VND",
    ]
)

# Units (Grafana unit ids)
PERCENT_UNIT = "percentunit"  # 0..1 shown as 0..100 %
BYTES = "bytes"
WATTS = "watt"
JOULES = "joule"
SECONDS = "s"
TOKENS = "short"  # token counts and token rates
REQUESTS_PER_SECOND = "reqps"
CELSIUS = "celsius"
NONE = "none"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

TAGS = ["chargeback"]

# uid → title of the three dashboards; the links between them are built from this.
UIDS = {
    "overview": "chargeback-overview",
    "team": "chargeback-team",
    "gpu_fleet": "chargeback-gpu-fleet",
}
TITLES = {
    "overview": "Chargeback overview",
    "team": "Chargeback team",
    "gpu_fleet": "Chargeback GPU fleet",
}

GRID_WIDTH = 24


def currency_unit(code: str) -> str:
    code = code.upper()
    if code in GRAFANA_CURRENCY_UNITS:
        return f"currency{code}"
    return f"currency:{code} "


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False, table: bool = False) -> Json:
    """A Prometheus query on the ``${datasource}`` variable (range unless ``instant``)."""
    return modern.prometheus_target(expr, DATASOURCE, legend, ref, instant, table)


def targets(*specs: tuple[str, str], instant: bool = False, table: bool = False) -> list[Json]:
    """(expr, legend) pairs → targets A, B, C, …"""
    return [
        target(expr, legend, ref=chr(ord("A") + i), instant=instant, table=table)
        for i, (expr, legend) in enumerate(specs)
    ]


def steps(*pairs: tuple[str, float | None]) -> list[dict[str, Any]]:
    """Threshold steps in Grafana's field-config form: the first step has value null."""
    return [{"color": color, "value": value} for color, value in pairs]


GREEN_ONLY = steps(("green", None))
BUDGET_STEPS = steps(("green", None), ("orange", 0.8), ("red", 1.0))
# Note for idle ratios: most of a pool idle means paying for GPUs nobody uses.
IDLE_STEPS = steps(("green", None), ("orange", 0.5), ("red", 0.8))


def timeseries(
    id: int,
    title: str,
    description: str,
    unit: str,
    tgts: Sequence[Json],
    stacked: bool = False,
    fill: int = 10,
    legend_calcs: Sequence[str] = ("lastNotNull", "max"),
    max_value: float | None = None,
    overrides: Sequence[dict[str, Any]] = (),
    draw_style: str = "line",
    links: Sequence[dict[str, Any]] = (),
    thresholds: Sequence[dict[str, Any]] = GREEN_ONLY,
    decimals: int | None = None,
) -> Json:
    custom = {
        "drawStyle": draw_style,
        "lineWidth": 1,
        "fillOpacity": fill,
        "gradientMode": "none",
        "showPoints": "never",
        "spanNulls": False,
        "axisPlacement": "auto",
        "stacking": {"mode": "normal" if stacked else "none", "group": "A"},
        "thresholdsStyle": {"mode": "off"},
    }
    return modern.panel(
        "timeseries",
        id,
        title,
        description,
        DATASOURCE,
        tgts,
        modern.field_defaults(
            unit,
            steps=thresholds,
            color_mode="palette-classic",
            min_value=0,
            max_value=max_value,
            decimals=decimals,
            links=links,
            custom=custom,
        ),
        {
            "legend": modern.legend(legend_calcs),
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        overrides=overrides,
    )


def stat(
    id: int,
    title: str,
    description: str,
    unit: str,
    tgts: Sequence[Json],
    thresholds: Sequence[dict[str, Any]] = GREEN_ONLY,
    decimals: int | None = None,
    mappings: Sequence[dict[str, Any]] = (),
    graph: bool = True,
    text_mode: str = "auto",
) -> Json:
    return modern.panel(
        "stat",
        id,
        title,
        description,
        DATASOURCE,
        tgts,
        modern.field_defaults(
            unit,
            steps=thresholds,
            color_mode="thresholds",
            decimals=decimals,
            mappings=mappings,
            no_value="no data",
        ),
        {
            "reduceOptions": modern.reduce_options(),
            "graphMode": "area" if graph else "none",
            "colorMode": "value",
            "justifyMode": "auto",
            "textMode": text_mode,
            "orientation": "auto",
            "wideLayout": True,
            "showPercentChange": False,
        },
    )


def bargauge(
    id: int,
    title: str,
    description: str,
    unit: str,
    tgts: Sequence[Json],
    max_value: float | None = None,
    thresholds: Sequence[dict[str, Any]] = GREEN_ONLY,
    links: Sequence[dict[str, Any]] = (),
    decimals: int | None = None,
) -> Json:
    """A horizontal bar per series. Without ``max_value`` each bar is scaled to the largest value
    shown (Grafana computes the max from the data when the field config has none)."""
    return modern.panel(
        "bargauge",
        id,
        title,
        description,
        DATASOURCE,
        tgts,
        modern.field_defaults(
            unit,
            steps=thresholds,
            color_mode="thresholds",
            min_value=0,
            max_value=max_value,
            decimals=decimals,
            links=links,
        ),
        {
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
        },
    )


def unit_override(field_name: str, unit: str) -> dict[str, Any]:
    """Give one field (column or series) of a panel its own unit."""
    return {
        "matcher": {"id": "byName", "options": field_name},
        "properties": [{"id": "unit", "value": unit}],
    }


def table(
    id: int,
    title: str,
    description: str,
    unit: str,
    tgts: Sequence[Json],
    transformations: Sequence[dict[str, Any]] = (),
    overrides: Sequence[dict[str, Any]] = (),
    sort_by: str | None = None,
    links: Sequence[dict[str, Any]] = (),
    decimals: int | None = None,
) -> Json:
    return modern.panel(
        "table",
        id,
        title,
        description,
        DATASOURCE,
        tgts,
        modern.field_defaults(
            unit,
            steps=GREEN_ONLY,
            color_mode="thresholds",
            decimals=decimals,
            links=links,
            custom={"align": "auto", "cellOptions": {"type": "auto"}, "filterable": True, "inspect": False},
        ),
        {
            "showHeader": True,
            "cellHeight": "sm",
            "footer": {"show": False, "reducer": ["sum"], "countRows": False},
            "sortBy": [{"displayName": sort_by, "desc": True}] if sort_by else [],
        },
        overrides=overrides,
        transformations=transformations,
    )


def decimals_override(field_name: str, decimals: int) -> dict[str, Any]:
    """Give one field (column or series) of a panel its own number of decimals."""
    return {
        "matcher": {"id": "byName", "options": field_name},
        "properties": [{"id": "decimals", "value": decimals}],
    }


# Table transformations
def merge() -> dict[str, Any]:
    """Join several instant table queries on their common labels, one column per query."""
    return {"id": "merge", "options": {}}


def organize(exclude: Sequence[str] = ("Time",), rename: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "id": "organize",
        "options": {
            "excludeByName": {name: True for name in exclude},
            "indexByName": {},
            "renameByName": dict(rename or {}),
        },
    }


def matrix(rows: str, columns: str, value: str = "Value") -> dict[str, Any]:
    """Pivot a long table into rows × columns (Grafana's "grouping to matrix")."""
    return {
        "id": "groupingToMatrix",
        "options": {"rowField": rows, "columnField": columns, "valueField": value, "emptyValue": "null"},
    }


def data_link(title: str, dashboard: str, params: str = "") -> dict[str, Any]:
    """A link from a value to another chargeback dashboard, keeping the time range and datasource."""
    url = f"/d/{UIDS[dashboard]}?${{__url_time_range}}&${{datasource:queryparam}}"
    if params:
        url += "&" + params
    return {"title": title, "url": url, "targetBlank": False}


# Template variables
def datasource_variable() -> Json:
    return modern.datasource_variable("datasource", "Data source", "prometheus")


def query_variable(
    name: str,
    label: str,
    metric: str,
    label_name: str,
    include_all: bool = False,
    multi: bool = False,
) -> Json:
    """A variable filled by ``label_values(metric, label)`` from the ``${datasource}``; "All" is ``.*``
    so that queries match it with ``=~``."""
    return modern.query_variable(
        name,
        label,
        f"label_values({metric}, {label_name})",
        DATASOURCE,
        include_all=include_all,
        multi=multi,
    )


def scope_variables(job_selector: str) -> list[Json]:
    """``$cluster`` and ``$job`` (see dashboards/selectors.py), listed from ``up`` of the dashboard's job."""
    return [
        query_variable(
            "cluster",
            "Cluster",
            selectors.up(job_selector),
            selectors.CLUSTER_LABEL,
            include_all=True,
            multi=True,
        ),
        query_variable(
            "job",
            "Job",
            selectors.up(f"{job_selector}, {selectors.CLUSTER}" if job_selector else selectors.CLUSTER),
            "job",
            include_all=True,
            multi=True,
        ),
    ]


def links(current: str) -> list[Json]:
    """Links to the two other chargeback dashboards, keeping time range and variables."""
    return [
        modern.dashboard_link(TITLES[key], f"/d/{uid}", f"Open the {TITLES[key]} dashboard")
        for key, uid in UIDS.items()
        if key != current
    ]


@dataclass
class Layout:
    """Places panels left to right on Grafana's 24-column grid, wrapping to a new line when full."""

    x: int = 0
    y: int = 0
    line_height: int = 0
    panels: list[Json] = field(default_factory=list)

    def row(self, id: int, title: str) -> None:
        self.newline()
        self.panels.append(modern.row(id, title, {"h": 1, "w": GRID_WIDTH, "x": 0, "y": self.y}))
        self.y += 1

    def add(self, panel: Json, w: int, h: int) -> None:
        if w > GRID_WIDTH:
            raise ValueError(f"panel {panel['title']!r} is wider than the grid ({w} > {GRID_WIDTH})")
        if self.x + w > GRID_WIDTH:
            self.newline()
        self.panels.append({**panel, "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y}})
        self.x += w
        self.line_height = max(self.line_height, h)

    def newline(self) -> None:
        if self.x:
            self.y += self.line_height
        self.x = 0
        self.line_height = 0


def dashboard(
    key: str,
    description: str,
    layout: Layout,
    variables: Sequence[Json],
    time_from: str,
    refresh: str = "1m",
) -> Json:
    """The dashboard JSON. Its time zone is the browser's until build.py sets the billing zone."""
    return modern.dashboard(
        uid=UIDS[key],
        title=TITLES[key],
        description=description,
        tags=TAGS,
        panels=layout.panels,
        variables=[datasource_variable(), *variables],
        links=links(key),
        time_from=time_from,
        refresh=refresh,
        refresh_intervals=["30s", "1m", "5m", "15m", "1h"],
        timezone="browser",
    )


# Per-user panels select user!="": with `proxy.metrics_labels: team` the proxies export no user label,
# and such panels stay empty rather than show one nameless "user" per team.
PER_USER_NOTE = (
    " Empty when the proxies run with proxy.metrics_labels: team (no user label, to bound the series):"
    " per-user figures then come from the ledger (chargeback report --source ledger)."
)
