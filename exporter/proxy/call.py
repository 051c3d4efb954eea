"""``Call``: what is known about one request while the proxy serves it. Its own module so that the
application (exporter/proxy/app.py) and the relay (exporter/proxy/relay.py) share it without
importing each other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from exporter.config import Model
from exporter.proxy.usage import Usage


@dataclass(slots=True)
class Call:
    """What is known about one request; turned into a ledger row and counters at the end."""

    request_id: str
    started: float
    timestamp: str
    endpoint: str
    user: str = ""
    team: str = ""
    api_key_id: str = ""
    model_name: str = ""  # as requested (ledger)
    model: Model | None = None  # configured model (metrics labels)
    status: int = 0
    stream: bool = False
    usage: Usage | None = None
    estimated: bool = False
    prompt_chars: int = 0
    delivered_chars: int = 0
    upstream: str = ""
    error: str = ""
    first_byte: float | None = None
    forwarded: bool = False
    usage_reason: str = ""  # why usage was not the upstream's own (ledger usage_reason)
    body: dict[str, Any] | None = None  # the parsed request, for a prompt estimate when usage is missing
    complete: bool = False  # the stream's end marker reached the client: a close after it is no 499
    usage_source: str = ""  # set when usage was counted by the proxy's tokenize fallback
    texts: list[str] | None = None  # delivered text, kept only for models with usage_fallback: tokenize
