"""Serving ``/metrics``: the one place every listener (proxy metrics, GPU exporter) builds its scrape
response, gzip-compressed when the scraper sends ``Accept-Encoding: gzip`` (as Prometheus does, and
as prometheus_client's own exposition answers it).

A proxy with tens of thousands of per-user series exposes tens of megabytes of text that gzip cuts
about twentyfold. Rendering and compressing both run in a worker thread: neither may block the
event loop that forwards requests.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable
from concurrent.futures import Executor

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

# Level 1: the exposition is so repetitive that the fastest level already makes it ~20x smaller;
# levels 6 and 9 save another 10-25 % for 4x and 25x the CPU time of every scrape
# (bench/bench_series.py measures it; prometheus_client's own exposition uses 9).
GZIP_LEVEL = 1


def gzip_accepted(accept_encoding: str | None) -> bool:
    """Whether an ``Accept-Encoding`` header allows gzip (``gzip`` or ``*`` without ``q=0``)."""
    for item in (accept_encoding or "").split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() not in ("gzip", "*"):
            continue
        q = params.strip().lower()
        if q.startswith("q="):
            try:
                if float(q[2:]) <= 0:
                    continue
            except ValueError:
                continue
        return True
    return False


def encode(body: bytes, accept_encoding: str | None) -> tuple[bytes, dict[str, str]]:
    """The body to send and the response headers for an exposition ``body``."""
    headers = {"Content-Type": CONTENT_TYPE_LATEST, "Vary": "Accept-Encoding"}
    if gzip_accepted(accept_encoding):
        headers["Content-Encoding"] = "gzip"
        return gzip.compress(body, compresslevel=GZIP_LEVEL), headers
    return body, headers


async def metrics_response(
    request: web.Request, render: Callable[[], bytes], executor: Executor | None = None
) -> web.Response:
    """Render the exposition with ``render`` and encode it as the scraper asked, off the event loop."""
    accept = request.headers.get("Accept-Encoding")

    def work() -> tuple[bytes, dict[str, str]]:
        return encode(render(), accept)

    body, headers = await asyncio.get_running_loop().run_in_executor(executor, work)
    return web.Response(body=body, headers=headers)
