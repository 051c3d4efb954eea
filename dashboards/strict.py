"""Strict check of dashboard JSON against Grafana's own schema (grafana-foundation-sdk, the Python
models Grafana generates from its CUE schemas; pinned in pyproject's ``test`` extra).

The SDK's decoders read the keys they know and silently skip the rest, and assign values without
checking them, so "strict" is two checks: a round trip (decode the dashboard with the SDK: panels with
their plugin's typed options and field config, Prometheus targets with the Prometheus query model;
encode it again; every key and value of the input must come back unchanged, a key that does not is
unknown to the schema) and a type check of the decoded models against their annotations (enums such
as a legend's ``displayMode``, literals, numbers, strings, lists, nested models). On top of that the shapes Grafana would migrate on import
are refused: legacy keys, ``null`` colours and data sources, a missing ``pluginVersion`` and an old
``schemaVersion``.
"""

from __future__ import annotations

import enum
import json
import sys
import types
import typing
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
    from grafana_foundation_sdk.models import dashboard

    model = {"dashboard": dashboard.Dashboard, "row": dashboard.RowPanel, "panel": dashboard.Panel}[kind]
    try:
        decoded = _decode(kind, data)
        typed = _type_problems(model.from_json(data), "")
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        return [f"{where}: does not decode ({type(exc).__name__}: {exc})"]
    return [f"{where}: {e}" for e in _lost(data, decoded, path) + typed]


def _is_model(hint: Any) -> bool:
    return (
        isinstance(hint, type)
        and callable(getattr(hint, "to_json", None))
        and not issubclass(hint, enum.Enum)
    )


def _type_problems(obj: Any, path: str) -> list[str]:
    """Every attribute of a decoded SDK model checked against the model's type annotations."""
    cls = type(obj)
    hints = typing.get_type_hints(cls.__init__, globalns=vars(sys.modules[cls.__module__]))
    out: list[str] = []
    for name, hint in hints.items():
        if name != "return" and hasattr(obj, name):
            out.extend(_check(getattr(obj, name), hint, f"{path}.{name}" if path else name))
    return out


def _check(value: Any, hint: Any, path: str) -> list[str]:
    if value is None:
        return []
    if (
        hint is Any
        or hint is object
        or (isinstance(hint, type) and not _is_model(hint) and isinstance(value, hint))
    ):
        # untyped in the dashboard model (panel options, custom field config) or an abstract query:
        # the decoder has put the plugin's own model there, check that one
        return _type_problems(value, path) if _is_model(type(value)) else []
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in args if a is not type(None)]
        results = [_check(value, a, path) for a in arms]
        return (
            []
            if any(not r for r in results)
            else results[0]
            if len(arms) == 1
            else [f"{path}: {value!r} fits none of {arms}"]
        )
    if origin is typing.Literal:
        return [] if value in args else [f"{path}: {value!r} is not one of {list(args)}"]
    if origin in (list, dict):
        if not isinstance(value, origin):
            return [f"{path}: {value!r} is not a {origin.__name__}"]
        if origin is list and args:
            return [e for i, item in enumerate(value) for e in _check(item, args[0], f"{path}[{i}]")]
        return []
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        allowed = [m.value for m in hint]
        return (
            []
            if value in allowed or isinstance(value, hint)
            else [f"{path}: {value!r} is not one of {allowed}"]
        )
    if _is_model(hint):
        if isinstance(value, dict):  # kept as raw JSON by the decoder: decode it with its model
            value = hint.from_json(value)
        return (
            _type_problems(value, path)
            if isinstance(value, hint)
            else [f"{path}: {value!r} is not a {hint.__name__}"]
        )
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [f"{path}: {value!r} is not a number"]
    if hint in (str, int, bool):
        ok = isinstance(value, hint) and not (hint is int and isinstance(value, bool))
        return [] if ok else [f"{path}: {value!r} is not a {hint.__name__}"]
    if isinstance(hint, type) and not isinstance(value, hint):
        return [f"{path}: {value!r} is not a {hint.__name__}"]
    return []


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
