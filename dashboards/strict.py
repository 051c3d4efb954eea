"""Strict check of dashboard JSON against Grafana's own schema (grafana-foundation-sdk, the Python
models Grafana generates from its CUE schemas; pinned in pyproject's ``test`` extra).

The SDK's decoders read the keys they know and silently skip the rest, so "strict" is a round trip:
decode the dashboard with the SDK (panels with their plugin's typed options and field config,
Prometheus targets with the Prometheus query model), encode it again, and require every key and
value of the input to come back unchanged. A key that does not come back is unknown to the schema,
a value that changes did not fit its type. On top of that the shapes Grafana would migrate on import
are refused: legacy keys, ``null`` colours and data sources, a missing ``pluginVersion`` and an old
``schemaVersion``.
"""

from __future__ import annotations

import json
from typing import Any

from dashboards.modern import PLUGIN_VERSION, SCHEMA_VERSION

# Grafana < 7 keys that trigger panel or dashboard migrations when present.
LEGACY_DASHBOARD_KEYS = frozenset({"rows", "style", "hideControls", "sharedCrosshair"})
LEGACY_PANEL_KEYS = frozenset({"fieldOptions"})  # anywhere inside a panel
LEGACY_TARGET_KEYS = frozenset({"step"})
NULL_FORBIDDEN = frozenset({"color", "datasource"})


def _decode(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """Decode with the SDK model of ``kind`` and encode again."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import dashboard

    model = {"dashboard": dashboard.Dashboard, "row": dashboard.RowPanel, "panel": dashboard.Panel}[kind]
    out: dict[str, Any] = json.loads(json.dumps(model.from_json(data), cls=JSONEncoder))
    return out


def _roundtrip_problems(kind: str, data: dict[str, Any], where: str, path: str) -> list[str]:
    try:
        decoded = _decode(kind, data)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        return [f"{where}: does not decode ({type(exc).__name__}: {exc})"]
    return [f"{where}: {e}" for e in _lost(data, decoded, path)]


def _same(a: Any, b: Any) -> bool:
    # the SDK writes numbers as floats where the schema says "number"
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return not isinstance(b, bool) and float(a) == float(b)
    return bool(a == b)


def _lost(original: Any, decoded: Any, path: str) -> list[str]:
    """What of ``original`` does not survive the decode (keys lost, values changed)."""
    if isinstance(original, dict):
        if not isinstance(decoded, dict):
            return [f"{path}: decoded as {json.dumps(decoded)[:80]}"]
        out = []
        for key, value in original.items():
            if key not in decoded:
                full = f"{path}.{key}" if path else key
                if value is None:
                    if full != "id":  # the dashboard id: Grafana assigns it on import
                        out.append(f"{full}: null where the schema has a value or nothing")
                else:
                    out.append(f"{full}: not in Grafana's schema")
                continue
            out.extend(_lost(value, decoded[key], f"{path}.{key}" if path else key))
        return out
    if isinstance(original, list):
        if not isinstance(decoded, list) or len(decoded) != len(original):
            return [f"{path}: list decoded as {json.dumps(decoded)[:80]}"]
        return [e for i, item in enumerate(original) for e in _lost(item, decoded[i], f"{path}[{i}]")]
    if not _same(original, decoded):
        return [f"{path}: {json.dumps(original)} decoded as {json.dumps(decoded)}"]
    return []


def _walk(node: Any, path: str) -> list[tuple[str, str, Any]]:
    """(path, key, value) of every key in the document."""
    out: list[tuple[str, str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            out.append((path, key, value))
            out.extend(_walk(value, f"{path}.{key}" if path else key))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            out.extend(_walk(item, f"{path}[{i}]"))
    return out


def _panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dash.get("panels", []):
        out.append(p)
        out.extend(p.get("panels") or [])
    return out


def problems(dash: dict[str, Any]) -> list[str]:
    """Everything that keeps Grafana from taking the dashboard as it is; [] when strictly valid."""
    from grafana_foundation_sdk.cog import runtime
    from grafana_foundation_sdk.cog.plugins import register_default_plugins

    register_default_plugins()
    out: list[str] = []
    if dash.get("schemaVersion") != SCHEMA_VERSION:
        out.append(f"schemaVersion is {dash.get('schemaVersion')!r}, not {SCHEMA_VERSION}")
    out.extend(f"{key}: legacy dashboard key" for key in sorted(LEGACY_DASHBOARD_KEYS & set(dash)))
    for path, key, value in _walk(dash, ""):
        if key in NULL_FORBIDDEN and value is None:
            out.append(f"{path}.{key}: null")
    for p in _panels(dash):
        where = f"panel {p.get('id')} {p.get('title')!r}"
        for path, key, _ in _walk(p, ""):
            if key in LEGACY_PANEL_KEYS:
                out.append(f"{where}: legacy key {path}.{key}")
        if p.get("type") == "row":
            continue
        if p.get("pluginVersion") != PLUGIN_VERSION:
            out.append(f"{where}: pluginVersion is {p.get('pluginVersion')!r}, not {PLUGIN_VERSION!r}")
        runtime_config = runtime.panelcfg_config(str(p.get("type")))
        if runtime_config is None:
            out.append(f"{where}: panel type {p.get('type')!r} has no schema in grafana-foundation-sdk")
        for t in p.get("targets", []):
            for key in sorted(LEGACY_TARGET_KEYS & set(t)):
                out.append(f"{where}: target {t.get('refId')}: legacy key {key}")
            ds = t.get("datasource") or p.get("datasource") or {}
            if ds.get("type") != "prometheus":
                out.append(f"{where}: target {t.get('refId')} is not a Prometheus query: {ds!r}")
    # Panels one by one, so that one panel that does not decode does not hide the others.
    out.extend(_roundtrip_problems("dashboard", {**dash, "panels": []}, "dashboard", ""))
    for p in _panels(dash):
        kind = "row" if p.get("type") == "row" else "panel"
        out.extend(_roundtrip_problems(kind, p, f"panel {p.get('id')} {p.get('title')!r}", ""))
    return out
