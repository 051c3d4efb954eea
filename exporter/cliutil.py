"""Small helpers shared by every subcommand's argument parser."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from exporter.config import Config, ConfigError, load_config

DEFAULT_CONFIG_FILE = os.environ.get("CHARGEBACK_CONFIG", "chargeback.yaml")


def add_config_flag(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument(
        "--config.file",
        dest="config_file",
        default=None if required else DEFAULT_CONFIG_FILE,
        required=required,
        metavar="PATH",
        help=f"configuration file (default: $CHARGEBACK_CONFIG or {DEFAULT_CONFIG_FILE})",
    )


def add_log_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log.level",
        dest="log_level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level (default: info)",
    )


def add_server_flags(
    parser: argparse.ArgumentParser,
    listen_help: str,
    *,
    repeatable_listen: bool = False,
    reads_config: bool = True,
) -> None:
    """The flags of a long-running server subcommand (proxy, gpu-exporter, simulate-upstream):
    ``--config.file`` when it reads the config, ``--log.level`` and ``--web.listen-address``
    (``args.listen``: None when not given, a list when repeatable)."""
    if reads_config:
        add_config_flag(parser)
    add_log_flag(parser)
    parser.add_argument(
        "--web.listen-address",
        dest="listen",
        action="append" if repeatable_listen else "store",
        default=None,
        metavar="HOST:PORT",
        help=listen_help,
    )


def setup_logging(level: str = "info") -> None:
    """Log to stderr at ``level``; every logger of the program (``chargeback.*``, exporter/logs.py)
    and of its libraries inherits it."""
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """Load the config named by --config.file; exits with status 2 and the error on failure."""
    try:
        return load_config(args.config_file)
    except ConfigError as exc:
        print(f"chargeback: config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
