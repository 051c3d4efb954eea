"""The ``proxy:`` section of the config file."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import PlainValidator

from exporter.schema import Listen, Positive, Seconds, Section, StrList, choice, fail, number, section

DEFAULT_PROXY_LISTEN = "0.0.0.0:8080"
DEFAULT_PROXY_METRICS_LISTEN = "0.0.0.0:9841"
# proxy.metrics_labels: "user" labels the usage counters {user, team, model}; "team" leaves the user
# label out ({team, model}: series bounded by teams × models), per-user figures then come from the ledger.
METRICS_LABELS = ("user", "team")


def _listens(value: Any) -> tuple[str, ...]:
    items = StrList.__metadata__[0].func(value)  # type: ignore[attr-defined]
    if not items:
        return (DEFAULT_PROXY_LISTEN,)
    for i, item in enumerate(items):
        try:
            Listen.__metadata__[0].func(item)  # type: ignore[attr-defined]
        except Exception as exc:
            fail(str(exc.context["message"]), f"[{i}]")  # type: ignore[attr-defined]
    return items


@section
class ProxyConfig(Section):
    listen: Annotated[tuple[str, ...], PlainValidator(_listens)] = (DEFAULT_PROXY_LISTEN,)
    metrics_listen: Listen = DEFAULT_PROXY_METRICS_LISTEN
    max_body_bytes: Positive = 10 * 1024 * 1024
    connect_timeout_seconds: Seconds = 10.0
    upstream_timeout_seconds: Seconds = 600.0
    shutdown_grace_seconds: Annotated[float, number()] = 30.0
    key_refresh_seconds: Annotated[float, number(minimum=0.1)] = 2.0
    metrics_labels: Annotated[str, choice(*METRICS_LABELS)] = "user"
