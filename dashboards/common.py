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

import attr
from grafanalib.core import (
    BarGauge,
    Dashboard,
    DashboardLink,
    GridPos,
    RowPanel,
    Stat,
    Table,
    Target,
    Template,
    Templating,
    Time,
    TimePicker,
    TimeSeries,
)

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


@attr.s
class PromTarget(Target):
    """A Prometheus query in today's Grafana form (``range``/``instant`` and ``editorMode``), always
    pointing at the ``${datasource}`` variable."""

    def to_json_data(self) -> dict[str, Any]:
        data: dict[str, Any] = super().to_json_data()
        data["range"] = not self.instant
        data["editorMode"] = "code"
        return data


def target(
    expr: str, legend: str = "", ref: str = "A", instant: bool = False, table: bool = False
) -> PromTarget:
    return PromTarget(
        expr=expr,
        legendFormat=legend,
        refId=ref,
        instant=instant,
        format="table" if table else "time_series",
        intervalFactor=1,
        datasource=DATASOURCE,
    )


def targets(*specs: tuple[str, str], instant: bool = False, table: bool = False) -> list[PromTarget]:
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
    tgts: Sequence[PromTarget],
    stacked: bool = False,
    fill: int = 10,
    legend_calcs: Sequence[str] = ("lastNotNull", "max"),
    max_value: int | None = None,
    overrides: Sequence[dict[str, Any]] = (),
    draw_style: str = "line",
    links: Sequence[dict[str, Any]] = (),
    thresholds: Sequence[dict[str, Any]] = GREEN_ONLY,
) -> TimeSeries:
    return TimeSeries(
        id=id,
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=list(tgts),
        unit=unit,
        stacking={"mode": "normal", "group": "A"} if stacked else {"mode": "none", "group": "A"},
        fillOpacity=fill,
        drawStyle=draw_style,
        legendDisplayMode="table",
        legendPlacement="bottom",
        legendCalcs=list(legend_calcs),
        tooltipMode="multi",
        tooltipSort="desc",
        valueMin=0,
        valueMax=max_value,
        overrides=list(overrides),
        links=list(links),
        thresholds=list(thresholds),
        maxDataPoints=None,
    )


def stat(
    id: int,
    title: str,
    description: str,
    unit: str,
    tgts: Sequence[PromTarget],
    thresholds: Sequence[dict[str, Any]] = GREEN_ONLY,
    decimals: int | None = None,
    mappings: Sequence[dict[str, Any]] = (),
    graph: bool = True,
    text_mode: str = "auto",
) -> Stat:
    return Stat(
        id=id,
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=list(tgts),
        format=unit,
        decimals=decimals,
        thresholds=list(thresholds),
        mappings=list(mappings),
        reduceCalc="lastNotNull",
        graphMode="area" if graph else "none",
        colorMode="value",
        textMode=text_mode,
        noValue="no data",
        maxDataPoints=None,
    )


def bargauge(
    id: int,
    title: str,
    description: str,
    unit: str,
    tgts: Sequence[PromTarget],
    max_value: float | None = None,
    thresholds: Sequence[dict[str, Any]] = GREEN_ONLY,
    links: Sequence[dict[str, Any]] = (),
) -> BarGauge:
    # grafanalib's BarGauge still writes Grafana 6 ``options.fieldOptions``; the field config of
    # today's bar gauge (unit, min, max, thresholds, links) is set through extraJson.
    defaults: dict[str, Any] = {
        "unit": unit,
        "min": 0,
        "thresholds": {"mode": "absolute", "steps": list(thresholds)},
        "color": {"mode": "thresholds"},
        "links": list(links),
    }
    if max_value is not None:
        defaults["max"] = max_value
    return BarGauge(
        id=id,
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=list(tgts),
        format=unit,
        displayMode="gradient",
        orientation="horizontal",
        thresholds=[],
        maxDataPoints=None,
        extraJson={
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "showUnfilled": True,
                "minVizHeight": 10,
                "minVizWidth": 0,
                "valueMode": "color",
                "namePlacement": "auto",
                "sizing": "auto",
            },
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
    tgts: Sequence[PromTarget],
    transformations: Sequence[dict[str, Any]] = (),
    overrides: Sequence[dict[str, Any]] = (),
    sort_by: str | None = None,
    links: Sequence[dict[str, Any]] = (),
) -> Table:
    return Table(
        id=id,
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=list(tgts),
        unit=unit,
        transformations=list(transformations),
        overrides=list(overrides),
        filterable=True,
        thresholds=list(GREEN_ONLY),
        maxDataPoints=None,
        extraJson={"options": {"sortBy": [{"displayName": sort_by, "desc": True}] if sort_by else []}}
        | ({"fieldConfig": {"defaults": {"links": list(links)}}} if links else {}),
    )


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
def datasource_variable() -> Template:
    return Template(
        name="datasource",
        label="Data source",
        query="prometheus",
        type="datasource",
        default="default",  # Grafana's default Prometheus data source until the user picks one
        refresh=1,
        regex="",
    )


def query_variable(
    name: str,
    label: str,
    metric: str,
    label_name: str,
    include_all: bool = False,
    multi: bool = False,
) -> Template:
    """A variable filled by ``label_values(metric, label)`` from the ``${datasource}``."""
    return Template(
        name=name,
        label=label,
        query=f"label_values({metric}, {label_name})",
        type="query",
        dataSource=DATASOURCE,
        includeAll=include_all,
        allValue=".*" if include_all else None,
        multi=multi,
        refresh=2,  # on time-range change: new teams/users/GPUs appear without a reload
        regex="",
        default="$__all" if include_all else None,
    )


def links(current: str) -> list[DashboardLink]:
    """Links to the two other chargeback dashboards, keeping time range and variables."""
    out = []
    for key, uid in UIDS.items():
        if key == current:
            continue
        out.append(
            DashboardLink(
                type="link",
                title=TITLES[key],
                uri=f"/d/{uid}",
                icon="dashboard",
                keepTime=True,
                includeVars=True,
                tooltip=f"Open the {TITLES[key]} dashboard",
            )
        )
    return out


@dataclass
class Layout:
    """Places panels left to right on Grafana's 24-column grid, wrapping to a new line when full."""

    x: int = 0
    y: int = 0
    line_height: int = 0
    panels: list[Any] = field(default_factory=list)

    def row(self, id: int, title: str) -> None:
        self.newline()
        self.panels.append(
            RowPanel(
                id=id, title=title, dataSource=DATASOURCE, gridPos=GridPos(h=1, w=GRID_WIDTH, x=0, y=self.y)
            )
        )
        self.y += 1

    def add(self, panel: Any, w: int, h: int) -> None:
        if w > GRID_WIDTH:
            raise ValueError(f"panel {panel.title!r} is wider than the grid ({w} > {GRID_WIDTH})")
        if self.x + w > GRID_WIDTH:
            self.newline()
        self.panels.append(attr.evolve(panel, gridPos=GridPos(h=h, w=w, x=self.x, y=self.y)))
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
    variables: Sequence[Template],
    time_from: str,
    refresh: str = "1m",
) -> Dashboard:
    return Dashboard(
        title=TITLES[key],
        uid=UIDS[key],
        description=description,
        tags=list(TAGS),
        panels=list(layout.panels),
        templating=Templating(list=[datasource_variable(), *variables]),
        links=links(key),
        time=Time(time_from, "now"),
        timePicker=TimePicker(
            refreshIntervals=["30s", "1m", "5m", "15m", "1h"],
            timeOptions=["1h", "6h", "24h", "7d", "30d"],
        ),
        refresh=refresh,
        timezone="browser",
        graphTooltip=1,
        schemaVersion=39,
        editable=True,
        version=1,
    )


# Per-user panels select user!="": with `proxy.metrics_labels: team` the proxies export no user label,
# and such panels stay empty rather than show one nameless "user" per team.
PER_USER_NOTE = (
    " Empty when the proxies run with proxy.metrics_labels: team (no user label, to bound the series):"
    " per-user figures then come from the ledger (chargeback report --source ledger)."
)
