"""Panel and dashboard JSON in the shape today's Grafana stores it (schema of Grafana ``PLUGIN_VERSION``).

grafanalib writes Grafana 6 shapes (``options.fieldOptions`` on bar gauges, ``rows``, ``style``,
``hideControls``, ``targets[].step``, ``null`` colours …) and no ``pluginVersion``. Grafana then runs
its panel migrations on import, and the bar gauge migration merges the old ``fieldOptions`` over
``fieldConfig``: max becomes 100, thresholds and links are lost. So the dashboards are written here as
plain JSON in the current schema, with ``pluginVersion`` and ``schemaVersion`` set so that Grafana
migrates nothing; ``dashboards/strict.py`` decodes the result with Grafana's own schema models
(grafana-foundation-sdk) and rejects any key the schema does not know.

Every function returns plain ``dict`` data; ``None`` values are never written (Grafana's schema has
no ``null`` for them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# The Grafana release whose panel schemas the JSON follows, and that release's dashboard schema
# version (grafana-foundation-sdk 11.6 / Grafana 11.6: 41). With both set Grafana runs no migration.
PLUGIN_VERSION = "11.6.0"
SCHEMA_VERSION = 41

Json = dict[str, Any]


def _clean(data: Json) -> Json:
    """Drop ``None`` values: an absent key means "Grafana's default"; ``null`` is not in the schema."""
    return {k: v for k, v in data.items() if v is not None}


def thresholds(steps: Sequence[Json]) -> Json:
    return {"mode": "absolute", "steps": [dict(s) for s in steps]}


def field_defaults(
    unit: str,
    *,
    steps: Sequence[Json],
    color_mode: str,
    min_value: float | None = None,
    max_value: float | None = None,
    decimals: int | None = None,
    links: Sequence[Json] = (),
    mappings: Sequence[Json] = (),
    no_value: str | None = None,
    custom: Json | None = None,
) -> Json:
    """``fieldConfig.defaults``: unit, min/max, thresholds, links and colour of every field."""
    return _clean(
        {
            "unit": unit,
            "min": min_value,
            "max": max_value,
            "decimals": decimals,
            "thresholds": thresholds(steps),
            "color": {"mode": color_mode},
            "links": [dict(link) for link in links],
            "mappings": [dict(m) for m in mappings],
            "noValue": no_value,
            "custom": custom,
        }
    )


def panel(
    type: str,
    id: int,
    title: str,
    description: str,
    datasource: Json,
    targets: Sequence[Json],
    defaults: Json,
    options: Json,
    overrides: Sequence[Json] = (),
    transformations: Sequence[Json] = (),
) -> Json:
    """A panel; ``gridPos`` is set by the layout."""
    return {
        "type": type,
        "pluginVersion": PLUGIN_VERSION,
        "id": id,
        "title": title,
        "description": description,
        "datasource": dict(datasource),
        "targets": [dict(t) for t in targets],
        "fieldConfig": {"defaults": defaults, "overrides": [dict(o) for o in overrides]},
        "options": options,
        "transformations": [dict(t) for t in transformations],
    }


def row(id: int, title: str, grid_pos: Json) -> Json:
    return {"type": "row", "id": id, "title": title, "collapsed": False, "gridPos": grid_pos, "panels": []}


def reduce_options(calc: str = "lastNotNull") -> Json:
    return {"calcs": [calc], "fields": "", "values": False}


def legend(calcs: Sequence[str]) -> Json:
    return {"showLegend": True, "displayMode": "table", "placement": "bottom", "calcs": list(calcs)}


def prometheus_target(
    expr: str, datasource: Json, legend_format: str, ref: str, instant: bool, table: bool
) -> Json:
    """A Prometheus query as the query editor saves it in code mode (no legacy ``step``/``intervalFactor``)."""
    return {
        "datasource": dict(datasource),
        "editorMode": "code",
        "expr": expr,
        "format": "table" if table else "time_series",
        "instant": instant,
        "range": not instant,
        "legendFormat": legend_format,
        "refId": ref,
    }


def datasource_variable(name: str, label: str, plugin: str) -> Json:
    """A data source picker; without ``current`` Grafana selects the default data source of the type."""
    return {
        "type": "datasource",
        "name": name,
        "label": label,
        "query": plugin,
        "refresh": 1,
        "regex": "",
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "skipUrlSync": False,
        "options": [],
    }


def query_variable(
    name: str,
    label: str,
    query: str,
    datasource: Json,
    include_all: bool,
    multi: bool,
    all_value: str = ".*",
) -> Json:
    """A variable filled by a Prometheus ``label_values(...)`` query; refreshed on time-range change so
    that new teams, users or GPUs appear without a reload."""
    current = {"selected": True, "text": ["All"], "value": ["$__all"]} if include_all else {}
    return _clean(
        {
            "type": "query",
            "name": name,
            "label": label,
            "query": query,
            "datasource": dict(datasource),
            "refresh": 2,
            "regex": "",
            "sort": 1,
            "hide": 0,
            "includeAll": include_all,
            "allValue": all_value if include_all else None,
            "multi": multi,
            "skipUrlSync": False,
            "current": current,
            "options": [],
        }
    )


def dashboard_link(title: str, url: str, tooltip: str) -> Json:
    return {
        "type": "link",
        "title": title,
        "url": url,
        "icon": "dashboard",
        "tooltip": tooltip,
        "tags": [],
        "asDropdown": False,
        "targetBlank": False,
        "includeVars": True,
        "keepTime": True,
    }


def dashboard(
    *,
    uid: str,
    title: str,
    description: str,
    tags: Sequence[str],
    panels: Sequence[Json],
    variables: Sequence[Json],
    links: Sequence[Json],
    time_from: str,
    refresh: str,
    refresh_intervals: Sequence[str],
    timezone: str,
) -> Json:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": list(tags),
        "id": None,  # the one null Grafana wants: it assigns the numeric id on import
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,  # shared crosshair
        "timezone": timezone,
        "fiscalYearStartMonth": 0,
        "time": {"from": time_from, "to": "now"},
        "timepicker": {"refresh_intervals": list(refresh_intervals)},
        "refresh": refresh,
        "links": list(links),
        "templating": {"list": list(variables)},
        # Grafana adds its built-in "Annotations & Alerts" query itself on load.
        "annotations": {"list": []},
        "panels": list(panels),
    }
