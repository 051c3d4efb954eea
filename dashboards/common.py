"""What the three chargeback dashboards share: units, thresholds, links between them, table
transformations, the template variables and the dashboard frame around the rows of panels.

Panels are declared as data (``Row``, ``Panel`` of dashboards/layout.py, re-exported here); their ids
and grid positions are computed, in the order they are declared.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dashboards import modern, selectors
from dashboards.layout import (  # noqa: F401  (re-exported for the dashboard modules)
    CURRENCY,
    DATASOURCE,
    GREEN_ONLY,
    MONEY,
    Panel,
    Row,
    panels_json,
    steps,
)
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


def currency_unit(code: str) -> str:
    code = code.upper()
    if code in GRAFANA_CURRENCY_UNITS:
        return f"currency{code}"
    return f"currency:{code} "


BUDGET_STEPS = steps(("green", None), ("orange", 0.8), ("red", 1.0))
# Note for idle ratios: most of a pool idle means paying for GPUs nobody uses.
IDLE_STEPS = steps(("green", None), ("orange", 0.5), ("red", 0.8))


def column_units(units: dict[str, str]) -> list[dict[str, Any]]:
    """Overrides that give some columns of a table their own unit."""
    return [field_override(name, unit=unit) for name, unit in units.items()]


def field_override(field_name: str, **properties: Any) -> dict[str, Any]:
    """Give one field (column or series) of a panel its own settings, e.g. ``unit=`` or ``decimals=``."""
    return {
        "matcher": {"id": "byName", "options": field_name},
        "properties": [{"id": key, "value": value} for key, value in properties.items()],
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


def merged_columns(labels: dict[str, str], *values: str) -> list[dict[str, Any]]:
    """One table row per label set from several instant queries: ``labels`` renames the label
    columns, ``values`` names the value columns of queries A, B, C, … in turn."""
    rename = {**labels, **{f"Value #{chr(ord('A') + i)}": name for i, name in enumerate(values)}}
    return [merge(), organize(rename=rename)]


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
def list_variable(name: str, label: str, series: str, label_name: str) -> Json:
    """A multi-select variable filled by ``label_values(series, label_name)`` from the ``${datasource}``;
    "All" is ``.*`` so that queries match it with ``=~``."""
    query = f"label_values({series}, {label_name})"
    return modern.query_variable(name, label, query, DATASOURCE, include_all=True, multi=True)


def scope_variables(job_selector: str) -> list[Json]:
    """``$cluster`` and ``$job`` (see dashboards/selectors.py), listed from ``up`` of the dashboard's job."""
    job_scope = f"{job_selector}, {selectors.CLUSTER}" if job_selector else selectors.CLUSTER
    return [
        list_variable("cluster", "Cluster", selectors.up(job_selector), selectors.CLUSTER_LABEL),
        list_variable("job", "Job", selectors.up(job_scope), "job"),
    ]


def links(current: str) -> list[Json]:
    """Links to the two other chargeback dashboards, keeping time range and variables."""
    return [
        modern.dashboard_link(TITLES[key], f"/d/{uid}", f"Open the {TITLES[key]} dashboard")
        for key, uid in UIDS.items()
        if key != current
    ]


def dashboard(
    key: str,
    currency: str,
    description: str,
    rows: Sequence[Row],
    variables: Sequence[Json],
    time_from: str,
) -> Json:
    """The dashboard JSON for a currency. Its time zone is the browser's until build.py sets the
    billing zone."""
    return modern.dashboard(
        uid=UIDS[key],
        title=TITLES[key],
        description=description,
        tags=TAGS,
        panels=panels_json(rows, currency_unit(currency), currency),
        variables=[modern.datasource_variable("datasource", "Data source", "prometheus"), *variables],
        links=links(key),
        time_from=time_from,
        refresh="1m",
        refresh_intervals=["30s", "1m", "5m", "15m", "1h"],
        timezone="browser",
    )


def capacity_used(
    recorded: str, description: str, fill: int = 10, thresholds: Sequence[Json] = GREEN_ONLY
) -> Panel:
    """Weighted tokens per second served by each pool against its configured capacity (on the overview
    and the GPU fleet dashboard; ``recorded``: the selector of the recorded series)."""
    query = (f"pool:chargeback_capacity_utilization:ratio5m{recorded}", "{{pool}}")
    return Panel(
        "Capacity used by pool",
        "timeseries",
        PERCENT_UNIT,
        [query],
        description,
        width=8,
        fill=fill,
        thresholds=thresholds,
    )


# Per-user panels select user!="": with `proxy.metrics_labels: team` the proxies export no user label,
# and such panels stay empty rather than show one nameless "user" per team.
PER_USER_NOTE = (
    " Empty when the proxies run with proxy.metrics_labels: team (no user label, to bound the series):"
    " per-user figures then come from the ledger (chargeback report --source ledger)."
)
