"""The health endpoints every listener of the program answers, in Prometheus's style.

- ``GET /-/healthy``: 200 while the process runs and serves HTTP (liveness).
- ``GET /-/ready``: 200 when it accepts work, 503 otherwise, e.g. while the proxy drains (readiness).
- ``GET /healthz``: the proxy's older name for readiness, kept as an alias of ``/-/ready``.

No key is needed; on a listener with a web config (exporter/webconfig.py) they sit behind its TLS
and basic auth like every other path.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

HEALTHY_PATH = "/-/healthy"
READY_PATH = "/-/ready"
LEGACY_READY_PATH = "/healthz"


def _always_ready(request: web.Request) -> str | None:
    return None


def add_health_routes(
    app: web.Application, not_ready: Callable[[web.Request], str | None] = _always_ready
) -> None:
    """Add the three routes to ``app``. ``not_ready`` returns why the listener is not ready, or None."""

    async def healthy(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def ready(request: web.Request) -> web.Response:
        reason = not_ready(request)
        if reason is not None:
            return web.Response(status=503, text=f"{reason}\n")
        return web.Response(text="ok\n")

    app.router.add_get(HEALTHY_PATH, healthy)
    app.router.add_get(READY_PATH, ready)
    app.router.add_get(LEGACY_READY_PATH, ready)
