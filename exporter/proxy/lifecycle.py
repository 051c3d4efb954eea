"""What the proxy does for durability around a request, and at shutdown.

* ``journal_begin``: when a response starts, the request is journaled (a *begin* record), so that
  even a ``kill -9`` in the middle of a stream leaves a trace the next start records.
* ``Streams``: the streams in progress. When the grace period runs out, ``cut_all`` ends each of
  them: the relay then calls ``shutdown_cut`` to send the client a final SSE error event and record
  the request with status 503 and reason ``stream cut by proxy shutdown`` (not 499: the client did
  not go away).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from exporter.ledger.row import LedgerRow
from exporter.ledger.validate import storable_text
from exporter.proxy.errors import error_body
from exporter.proxy.redact import public_url

if TYPE_CHECKING:
    import aiohttp

    from exporter.proxy.upstream_client import UpstreamResponse

SHUTDOWN_STATUS = 503
SHUTDOWN_REASON = "stream cut by proxy shutdown"
CRASH_REASON = "the proxy stopped before the response finished (recorded from the journal)"


def journal_begin(ledger: Any, call: Any, status: int) -> None:
    """Journal the start of a response (no-op for a ledger without ``begin``)."""
    begin = getattr(ledger, "begin", None)
    if begin is None:
        return
    begin(
        LedgerRow(
            request_id=call.request_id,
            timestamp=call.timestamp,
            user_email=call.user,
            team=call.team,
            model=storable_text(call.model_name, 200),  # same text as the final row
            endpoint=call.endpoint,
            status_code=status,
            prompt_tokens=0,
            completion_tokens=0,
            total_tokens=0,
            cached_tokens=0,
            estimated=True,
            stream=call.stream,
            duration_ms=0.0,
            ttft_ms=None,
            api_key_id=call.api_key_id,
            upstream=public_url(call.upstream),  # never the URL's userinfo
            error=CRASH_REASON,
            usage_source="estimate",
            usage_reason=CRASH_REASON,
        )
    )


class Streams:
    """Upstream responses of the streams in progress, by request id."""

    def __init__(self) -> None:
        self._open: dict[str, aiohttp.ClientResponse | UpstreamResponse] = {}
        self.cut: set[str] = set()

    def __len__(self) -> int:
        return len(self._open)

    def add(self, request_id: str, upstream: aiohttp.ClientResponse | UpstreamResponse) -> None:
        self._open[request_id] = upstream

    def discard(self, request_id: str) -> None:
        self._open.pop(request_id, None)
        self.cut.discard(request_id)

    def cut_all(self) -> int:
        """End every stream: closing its upstream makes the relay's read fail at once."""
        n = 0
        for rid, upstream in list(self._open.items()):
            self.cut.add(rid)
            with contextlib.suppress(Exception):
                upstream.close()
            n += 1
        return n


def shutdown_cut(streams: Streams, call: Any) -> bytes | None:
    """For the relay, when reading the upstream failed: if shutdown cut this stream, record it as
    such and return the SSE error event to send; None when the failure was the upstream's own."""
    if call.request_id not in streams.cut:
        return None
    call.status = SHUTDOWN_STATUS
    call.error = SHUTDOWN_REASON
    return b"data: " + error_body(SHUTDOWN_REASON, "service_unavailable", "shutting_down") + b"\n\n"
