"""``chargeback keys ...`` and ``chargeback ledger ...``: the one ``register`` for both commands.

The basic actions are in ``cli``, bulk import and maintenance in ``scale_cli``, which reuses
``cli``'s helpers; registering both from here keeps the imports one way (commands -> scale_cli
-> cli).
"""

from __future__ import annotations

from exporter.ledger import cli, scale_cli


def register(subparsers: cli.SubParsers) -> None:
    ksub, lsub = cli.register(subparsers)
    scale_cli.register_keys(ksub)  # keys import (issue 17)
    scale_cli.register_ledger(lsub)  # ledger maintain (issue 17)
