"""Running the proxy: API listener(s) + metrics listener, graceful SIGTERM.

SIGTERM/SIGINT: mark the proxy as draining (health checks turn 503, requests on kept-alive
connections get 503 ``shutting_down``), close the listening sockets, let in-flight requests finish
for up to ``proxy.shutdown_grace_seconds`` (counted once). Then streams still running are ended with
a final SSE error event, anything else is cancelled, and both are recorded as 503 "cut by proxy
shutdown". The ledger gets what is left of the grace period (at least 2 s) to write its queue; rows
the database did not take stay in the journal for the next start. The metrics listener stops last
(so a final scrape can still see the totals). Exit code 0, or 1 when a row could be neither
written nor journaled (e.g. the disk was full while the database was down).
"""

from __future__ import annotations

import asyncio
import gc
import signal
import time

from aiohttp import web

from exporter.config import Config, parse_listen
from exporter.listener import QuietAppRunner
from exporter.logs import get_logger
from exporter.proxy.app import ProxyState, create_app, create_metrics_app, create_state
from exporter.proxy.fastlane import FastLane, FastSite
from exporter.proxy.redact import install_log_redaction
from exporter.webconfig import WebConfig, protect, ssl_context

log = get_logger(__name__)

GC_GEN0_THRESHOLD = 20_000  # CPython's default is 700 allocations
CUT_WAIT_SECONDS = 1.0  # after the grace period: how long cut streams get to send their error event
CANCEL_WAIT_SECONDS = 1.0  # then: how long aiohttp waits for cancelled handlers


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
    install_log_redaction(cfg.models.values())  # before anything can log a credential
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
    # The API endpoints' POSTs are served by the fast lane; it hands everything else to aiohttp.
    lane = FastLane(state, dict(web_config.headers) if web_config is not None else None)
    api_app = protect(create_app(state, ledger_close_timeout=max(grace, 5.0)), web_config, basic_auth=False)
    api_app.on_shutdown.append(lambda _app: lane.shutdown(CANCEL_WAIT_SECONDS))
    api = QuietAppRunner(
        api_app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=CANCEL_WAIT_SECONDS,  # the grace period itself is spent in _drain
        handler_cancellation=True,
    )
    metrics = QuietAppRunner(
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
            await FastSite(
                api, lane, host, port, backlog=1024, reuse_address=True, ssl_context=ssl_context(web_config)
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
        await _drain(state, api, grace)
        await api.cleanup()  # cancels what is left (≤ 1 s), then closes the ledger and the keys
        stats = state.ledger.stats()
        log.info(
            "ledger closed: %d rows written, %d left in the journal for the next start, %d lost",
            stats.rows_written,
            getattr(stats, "journal_rows", 0),
            getattr(stats, "rows_lost", 0),
        )
        await metrics.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    if getattr(stats, "rows_lost", 0):
        log.critical("%d ledger rows could be neither written nor journaled; exiting 1", stats.rows_lost)
        return 1
    return 0


async def _drain(state: ProxyState, api: web.AppRunner, grace: float) -> None:
    """Stop listening and wait (once, at most ``grace``) for in-flight requests; then end streams."""
    started = time.monotonic()
    state.draining = True
    state.shutdown_deadline = started + grace
    for site in list(api.sites):
        await site.stop()  # no new connections; open keep-alive ones stay, and their requests get 503
    # Polling: the counters are plain ints the handlers update; 20 ms is nothing next to a drain.
    while state.inflight > 0 and time.monotonic() < state.shutdown_deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    if state.inflight > 0:
        state.cutting = True
        n = state.streams.cut_all()
        log.warning(
            "grace period of %.1fs over: ending %d stream(s) and cancelling %d other request(s)",
            grace,
            n,
            max(state.inflight - n, 0),
        )
        cut_deadline = time.monotonic() + CUT_WAIT_SECONDS
        while len(state.streams) and time.monotonic() < cut_deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
