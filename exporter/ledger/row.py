"""One ledger row: everything recorded about one request that went through the proxy.

The fields are ``http_analytics``'s columns (``schema.HTTP_ANALYTICS``), in the same order (the
journal writes them positionally); tests/test_ledger_schema.py holds the two together.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from exporter.ledger.schema import HTTP_ANALYTICS


@dataclass(frozen=True, slots=True)
class LedgerRow:
    request_id: str  # unique; the proxy's X-Request-Id
    timestamp: str  # request start, UTC, ISO 8601 with microseconds and 'Z'
    user_email: str
    team: str
    model: str
    endpoint: str  # e.g. /v1/chat/completions
    status_code: int  # HTTP status returned to the client; 499 = client went away
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int
    estimated: bool  # usage estimated by the proxy (upstream reported none)
    stream: bool
    duration_ms: float
    ttft_ms: float | None  # time to first token (streams) / first byte
    api_key_id: str
    upstream: str  # base URL that served it ('' when not forwarded)
    error: str = ""  # short reason for failures, '' on success
    # How the usage was counted: 'upstream' (the server's own usage), 'tokenize' (the server's
    # tokenizer, after the response), 'estimate' (characters / 4), '' (nothing was served).
    usage_source: str = ""
    usage_reason: str = ""  # why the usage is not the upstream's own ('' when it is)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LedgerRow:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


COLUMNS: tuple[str, ...] = HTTP_ANALYTICS.names
