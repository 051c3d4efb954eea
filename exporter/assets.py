"""Where the rule files and dashboards the package ships are found.

They are written once, at the repository's root (``rules/*.yaml`` by ``rules/generate.py``,
``dashboards/*.json`` by ``dashboards/build.py``). Building the wheel copies them into the package as
``exporter/_assets/rules`` and ``exporter/_assets/dashboards`` (``build_hooks.py``), so an installed
``chargeback demo`` finds them with :mod:`importlib.resources`. A checkout (the editable install the
Makefile makes) has no such copy and reads the repository's own folders instead.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PACKAGED = "_assets"  # the folder inside the package that the wheel build fills
CHECKOUT = Path(__file__).resolve().parent.parent  # the repository root, when running from a checkout
KINDS = {"rules": "*.yaml", "dashboards": "*.json"}


class AssetsMissing(FileNotFoundError):
    """Neither the installed package nor a checkout holds the rules or dashboards."""


def asset_dir(kind: str) -> Path:
    """The folder holding the shipped ``kind`` ("rules" or "dashboards"): the package's copy first."""
    if kind not in KINDS:
        raise ValueError(f"unknown asset kind {kind!r}: expected one of {', '.join(KINDS)}")
    packaged = resources.files("exporter") / PACKAGED / kind
    if packaged.is_dir():
        # A wheel unpacks onto the file system, so the traversable is a real directory that
        # Prometheus can be pointed at.
        return Path(str(packaged))
    checkout = CHECKOUT / kind
    if checkout.is_dir():
        return checkout
    raise AssetsMissing(
        f"no {kind} found: neither {packaged} (installed package) nor {checkout} (checkout) exists; "
        "reinstall llm-chargeback from a wheel built with its build hooks"
    )


def asset_files(kind: str) -> list[Path]:
    """The shipped rule files (recording and alerting, not their tests) or dashboards (Grafana JSON
    models), sorted by name."""
    return sorted(p for p in asset_dir(kind).glob(KINDS[kind]) if p.is_file())
