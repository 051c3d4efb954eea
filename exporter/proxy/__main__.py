"""``python -m exporter.proxy``: the ``chargeback proxy`` subcommand on its own."""

import argparse
import sys

from exporter.proxy import cli

parser = argparse.ArgumentParser(prog="chargeback-proxy")
sub = parser.add_subparsers(dest="command", required=True)
cli.register(sub)
args = parser.parse_args(["proxy", *sys.argv[1:]])
sys.exit(args.func(args))
