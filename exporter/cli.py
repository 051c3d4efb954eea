"""The ``chargeback`` command. Each subcommand lives next to the code it drives and registers
itself through a ``register(subparsers)`` function."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from exporter import __version__
from exporter.cliutil import add_config_flag, config_from_args, setup_logging

# module → it registers one or more subcommands
SUBCOMMAND_MODULES = (
    "exporter.proxy.cli",  # proxy
    "exporter.ledger.commands",  # keys, ledger
    "exporter.gpu.cli",  # gpu-exporter
    "exporter.report.cli",  # report, compare
    "exporter.sim.cli",  # simulate-upstream, traffic
    "exporter.alertmanager_config",  # alertmanager-config
    "exporter.limits.cli",  # usage
)


def _config_check(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    print(
        f"{args.config_file}: ok ({len(cfg.pools)} pools, {len(cfg.models)} models, "
        f"{len(cfg.teams)} teams, {len(cfg.users)} users)"
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    # imported on use: the demo pulls in the openai SDK, which would slow every other command
    from exporter.demo import run

    return run(args)


def _register_demo(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="run the whole stack locally with simulated GPUs and traffic")
    p.add_argument(
        "--workdir", default="demo-output", help="where configs, logs, ledger, mail and statements go"
    )
    p.add_argument(
        "--traffic-seconds", type=float, default=60.0, help="how long to send traffic (default 60)"
    )
    p.add_argument(
        "--keep-running",
        dest="keep_running",
        action="store_true",
        default=None,
        help="keep the stack up after the statements until Ctrl-C (default when run in a terminal)",
    )
    p.add_argument("--no-keep-running", dest="keep_running", action="store_false")
    p.set_defaults(func=_demo)


# Commands whose module is the only one imported when they are run: `keys create` is called once per
# user by provisioning scripts, so it should not pay for importing aiohttp, the reporter and the rest.
FAST_COMMANDS = {"keys": "exporter.ledger.commands", "ledger": "exporter.ledger.commands"}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chargeback", description="Chargeback for self-hosted LLM inference."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    add_config_flag(check)
    check.set_defaults(func=_config_check)
    command = next((a for a in (argv or ()) if not a.startswith("-")), None)
    modules = (FAST_COMMANDS[command],) if command in FAST_COMMANDS else SUBCOMMAND_MODULES
    for name in modules:
        importlib.import_module(name).register(sub)
    _register_demo(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "log_level", None):
        # Every subcommand with --log.level (exporter/cliutil.py add_log_flag) logs at that level.
        setup_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
