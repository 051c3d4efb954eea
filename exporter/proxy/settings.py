"""The ``proxy:`` section of the config file."""

from __future__ import annotations

from typing import Annotated, Any

from exporter.sections import (
    Listen,
    Positive,
    Seconds,
    Section,
    as_listen,
    as_strings,
    choice,
    fail,
    number,
    plain,
    section,
)

DEFAULT_PROXY_LISTEN = "0.0.0.0:8080"
DEFAULT_PROXY_METRICS_LISTEN = "0.0.0.0:9841"
# proxy.metrics_labels: "user" labels the usage counters {user, team, model}; "team" leaves the user
# label out ({team, model}: series bounded by teams × models), per-user figures then come from the ledger.
METRICS_LABELS = ("user", "team")


def _listens(value: Any) -> tuple[str, ...]:
    items = as_strings(value)
    if not items:
        return (DEFAULT_PROXY_LISTEN,)
    for i, item in enumerate(items):
        try:
            as_listen(item)
        except Exception as exc:
            fail(str(exc.context["message"]), f"[{i}]")
    return items


@section
class ProxyConfig(Section):
    listen: Annotated[tuple[str, ...], plain(_listens)] = (DEFAULT_PROXY_LISTEN,)
    metrics_listen: Listen = DEFAULT_PROXY_METRICS_LISTEN
    max_body_bytes: Positive = 10 * 1024 * 1024
    connect_timeout_seconds: Seconds = 10.0
    upstream_timeout_seconds: Seconds = 600.0
    shutdown_grace_seconds: Annotated[float, number()] = 30.0
    key_refresh_seconds: Annotated[float, number(minimum=0.1)] = 2.0
    metrics_labels: Annotated[str, choice(*METRICS_LABELS)] = "user"
