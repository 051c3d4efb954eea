"""The ``chargeback`` command. Each subcommand lives next to the code it drives and registers
itself through a ``register(subparsers)`` function."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from exporter import __version__
from exporter.cliutil import add_config_flag, config_from_args

# module → it registers one or more subcommands
SUBCOMMAND_MODULES = (
    "exporter.proxy.cli",  # proxy
    "exporter.ledger.cli",  # keys, ledger
    "exporter.gpu.cli",  # gpu-exporter
    "exporter.report.cli",  # report, compare
    "exporter.sim.cli",  # simulate-upstream, traffic
    "exporter.demo",  # demo
)


def _config_check(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    print(
        f"{args.config_file}: ok ({len(cfg.pools)} pools, {len(cfg.models)} models, "
        f"{len(cfg.teams)} teams, {len(cfg.users)} users)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chargeback", description="Chargeback for self-hosted LLM inference.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    add_config_flag(check)
    check.set_defaults(func=_config_check)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
