"""HTTP side of the GPU exporter: ``/metrics`` and a small landing page at ``/``.

Scrapes run in a small thread pool: collecting waits on NVML (bounded, but still blocking) and
must never block the event loop.
"""

from __future__ import annotations

import html
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from exporter import __version__
from exporter.exposition import metrics_response
from exporter.gpu.collector import GpuCollector
from exporter.health import add_health_routes

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>chargeback GPU exporter</title></head>
<body>
<h1>chargeback GPU exporter</h1>
<p>Per-GPU utilisation, busy and idle seconds, power, energy and hourly cost for chargeback.</p>
<ul>
<li><a href="/metrics">/metrics</a></li>
</ul>
<p>Backend: {backend}<br>Version: {version}</p>
</body></html>
"""

REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)
EXECUTOR_KEY = web.AppKey("executor", ThreadPoolExecutor)


def make_app(registry: CollectorRegistry, collector: GpuCollector) -> web.Application:
    app = web.Application()
    app[REGISTRY_KEY] = registry
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gpu-scrape")
    app[EXECUTOR_KEY] = executor

    async def metrics(request: web.Request) -> web.Response:
        return await metrics_response(request, lambda: generate_latest(registry), executor)

    async def index(request: web.Request) -> web.Response:
        page = _PAGE.format(backend=html.escape(collector.backend.description), version=__version__)
        return web.Response(text=page, content_type="text/html")

    async def on_cleanup(app: web.Application) -> None:
        executor.shutdown(wait=False, cancel_futures=True)
        collector.close()

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)
    add_health_routes(app)
    app.on_cleanup.append(on_cleanup)
    return app
