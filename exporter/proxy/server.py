"""Running the proxy: API listener(s) + metrics listener, graceful SIGTERM.

SIGTERM/SIGINT: mark the proxy as draining (health checks turn 503, new requests on kept-alive
connections get 503), close the listening sockets, let in-flight requests finish for up to
``proxy.shutdown_grace_seconds`` (then cancel them: they are recorded as 499), flush the ledger,
stop the metrics listener last (so a final scrape can still see the totals), exit 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

from aiohttp import web

from exporter.config import Config, parse_listen
from exporter.proxy.app import ProxyState, create_app, create_metrics_app, create_state
from exporter.webconfig import WebConfig, protect, ssl_context

log = logging.getLogger("chargeback.proxy")

GC_GEN0_THRESHOLD = 20_000  # CPython's default is 700 allocations


def _scheme(cfg: WebConfig | None) -> str:
    return cfg.scheme if cfg else "http"


async def serve(
    cfg: Config,
    listen: tuple[str, ...] | None = None,
    metrics_listen: str | None = None,
    state: ProxyState | None = None,
    stop: asyncio.Event | None = None,
    web_config: WebConfig | None = None,
    metrics_web_config: WebConfig | None = None,
) -> int:
    """``web_config``: TLS (and response headers) for the API listeners; its ``basic_auth_users``
    do not apply there, because API clients send their API key in the same Authorization header.
    ``metrics_web_config``: TLS, basic auth and headers for the metrics listener."""
    state = state or create_state(cfg)
    listen = listen or cfg.proxy.listen
    metrics_listen = metrics_listen or cfg.proxy.metrics_listen
    grace = cfg.proxy.shutdown_grace_seconds
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    if web_config is not None and web_config.users:
        log.info(
            "%s: basic_auth_users protect the metrics listener only; API clients authenticate with API keys",
            web_config.path,
        )
    api = web.AppRunner(
        protect(create_app(state, ledger_close_timeout=max(grace, 5.0)), web_config, basic_auth=False),
        handle_signals=False,
        access_log=None,
        shutdown_timeout=grace,
        handler_cancellation=True,
    )
    metrics = web.AppRunner(
        protect(create_metrics_app(state), metrics_web_config),
        handle_signals=False,
        access_log=None,
        shutdown_timeout=2,
    )
    await api.setup()
    await metrics.setup()
    try:
        for addr in listen:
            host, port = parse_listen(addr, "proxy.listen", cfg.path)
            await web.TCPSite(
                api, host, port, backlog=1024, reuse_address=True, ssl_context=ssl_context(web_config)
            ).start()
            log.info("proxy API listening on %s://%s:%d", _scheme(web_config), host, port)
        host, port = parse_listen(metrics_listen, "proxy.metrics_listen", cfg.path)
        await web.TCPSite(
            metrics, host, port, reuse_address=True, ssl_context=ssl_context(metrics_web_config)
        ).start()
        log.info("proxy metrics listening on %s://%s:%d/metrics", _scheme(metrics_web_config), host, port)
        # Everything loaded at start (config, modules, the key cache) is long-lived: move it out of
        # the collector's sight, and collect the young generation less often (requests allocate
        # many short-lived objects; almost none of them form cycles).
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
        print("chargeback proxy ready", flush=True)
        await stop.wait()
        log.info("shutting down: draining %d in-flight request(s) (grace %.1fs)", state.inflight, grace)
    finally:
        state.draining = True
        await api.cleanup()  # stops listening, waits for in-flight (≤ grace), then flushes the ledger
        stats = state.ledger.stats()
        log.info(
            "ledger flushed: %d rows written, %d queued, %d spooled",
            stats.rows_written,
            stats.queue_rows,
            stats.spooled_rows,
        )
        await metrics.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0
