"""``python -m exporter.sim [simulate-upstream|traffic] ...``: the simulator commands on their own."""

import argparse
import sys

from exporter.sim import cli

parser = argparse.ArgumentParser(prog="chargeback-sim")
sub = parser.add_subparsers(dest="command", required=True)
cli.register(sub)
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
