"""``chargeback gpu-exporter``: serve per-GPU utilisation and cost for Prometheus."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from ssl import SSLContext

from aiohttp import web
from prometheus_client import CollectorRegistry

from exporter.cliutil import add_server_flags, config_from_args, setup_logging
from exporter.config import ConfigError, parse_listen
from exporter.gpu.backend import Backend
from exporter.gpu.collector import GpuCollector
from exporter.gpu.server import make_app
from exporter.gpu.simulated import DEFAULT_PATTERN, SimPattern, SimulatedBackend
from exporter.listener import QuietAppRunner
from exporter.logs import get_logger
from exporter.webconfig import load_web_config, protect, ssl_context

log = get_logger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "gpu-exporter",
        help="export GPU utilisation, idle time, energy and cost (NVML) for Prometheus",
        description="Serve /metrics with per-GPU utilisation, busy/idle seconds, power, energy and hourly "
        "cost. Default port 9842 (gpu_exporter.listen in the config).",
    )
    add_server_flags(
        p,
        "address to serve /metrics on (default: gpu_exporter.listen from the config, 0.0.0.0:9842)",
        web_config_help="TLS and basic auth for /metrics (exporter-toolkit web config: tls_server_config, "
        "basic_auth_users)",
    )
    p.add_argument(
        "--simulate",
        type=int,
        default=0,
        metavar="N",
        help="export N simulated GPUs with a scripted utilisation pattern instead of reading NVML",
    )
    p.add_argument(
        "--simulate-pattern",
        default=DEFAULT_PATTERN,
        metavar="SPEC",
        help=f"utilisation of the simulated GPUs (default: {DEFAULT_PATTERN}): GPU i runs at levels[i] for the "
        "first duty×period seconds of every period, idle otherwise",
    )
    p.set_defaults(func=run)


def build_backend(args: argparse.Namespace) -> Backend:
    if args.simulate:
        return SimulatedBackend(args.simulate, SimPattern.parse(args.simulate_pattern))
    from exporter.gpu.nvml import NvmlBackend  # imports pynvml only when it is needed

    return NvmlBackend()


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    cfg = config_from_args(args)
    try:
        host, port = parse_listen(
            args.listen or cfg.gpu_exporter.listen, "--web.listen-address", "command line"
        )
        if args.simulate < 0:
            raise ValueError("--simulate N needs N ≥ 1")
        web_cfg = load_web_config(args.web_config_file)
        backend = build_backend(args)
    except (ConfigError, ValueError) as exc:  # WebConfigError is a ValueError
        print(f"chargeback gpu-exporter: {exc}", file=sys.stderr)
        return 2
    collector = GpuCollector(backend, cfg.gpu_exporter, cfg.pools)
    registry = CollectorRegistry()
    registry.register(collector)
    # One collection before serving: logs NVML trouble and unmapped GPUs right at start.
    for _ in collector.collect():
        pass
    scheme = web_cfg.scheme if web_cfg else "http"
    log.info("GPU exporter (%s) serving %s://%s:%d/metrics", backend.description, scheme, host, port)
    try:
        asyncio.run(_serve(protect(make_app(registry, collector), web_cfg), host, port, ssl_context(web_cfg)))
    except OSError as exc:
        print(f"chargeback gpu-exporter: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(app: web.Application, host: str, port: int, ssl: SSLContext | None) -> None:
    """Serve until SIGTERM/SIGINT, through the listener that never logs or echoes a refused request
    (its Authorization header may carry a scraper's basic-auth password)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = QuietAppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl).start()
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """``python -m exporter.gpu.cli``: the gpu-exporter subcommand on its own."""
    parser = argparse.ArgumentParser(prog="chargeback")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
