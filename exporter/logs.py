"""One logger namespace for the whole program: ``chargeback.<component>``.

Every module logs through the logger of its component (``exporter.proxy.server`` → ``chargeback.proxy``,
``exporter.ledger.writer`` → ``chargeback.ledger``, ``exporter.keys`` → ``chargeback.keys``), so log lines
name the part of the product they come from, and one ``logging.getLogger("chargeback")`` reaches them
all. ``--log.level`` (exporter/cliutil.py) sets the level that every one of them inherits.
"""

from __future__ import annotations

import logging
import sys

NAMESPACE = "chargeback"
PACKAGE = "exporter"


def component_name(module: str, child: str | None = None) -> str:
    """``chargeback.<component>[.<child>]`` for a module name of the exporter package."""
    if module == "__main__":
        # run as ``python -m exporter.gpu.cli``: the module's real name is in its spec
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if spec is None:
            return NAMESPACE
        module = spec.name
    parts = module.split(".")
    if parts[0] != PACKAGE or len(parts) < 2:
        raise ValueError(f"{module!r} is not a module of the {PACKAGE} package")
    name = f"{NAMESPACE}.{parts[1]}"
    return f"{name}.{child}" if child else name


def get_logger(module: str, child: str | None = None) -> logging.Logger:
    """The logger of ``module``'s component; call as ``get_logger(__name__)``."""
    return logging.getLogger(component_name(module, child))
