"""One logger namespace for the whole program: ``chargeback.<component>``.

Every module logs through the logger of its component (``exporter.proxy.server`` → ``chargeback.proxy``,
``exporter.ledger.writer`` → ``chargeback.ledger``, ``exporter.keys`` → ``chargeback.keys``), so log lines
name the part of the product they come from, and one ``logging.getLogger("chargeback")`` reaches them
all. ``--log.level`` (exporter/cliutil.py) sets the level that every one of them inherits.
"""

from __future__ import annotations

import logging

NAMESPACE = "chargeback"
PACKAGE = "exporter"


def component_name(module: str, child: str | None = None) -> str:
    """``chargeback.<component>[.<child>]`` for a module name of the exporter package."""
    parts = module.split(".")
    if parts[0] != PACKAGE or len(parts) < 2:
        raise ValueError(f"{module!r} is not a module of the {PACKAGE} package")
    name = f"{NAMESPACE}.{parts[1]}"
    return f"{name}.{child}" if child else name


def get_logger(module: str, child: str | None = None) -> logging.Logger:
    """The logger of ``module``'s component; call as ``get_logger(__name__)``."""
    return logging.getLogger(component_name(module, child))
