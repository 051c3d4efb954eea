"""A simulator and a proxy config document pointing at it, for tests that start proxies themselves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from exporter.sim.harness import DEFAULT_MODELS, proxy_config, start_simulator
from exporter.stack import ManagedProcess


def simulated_proxy_doc(
    workdir: Path, models: Sequence[str] = DEFAULT_MODELS, **config: Any
) -> tuple[ManagedProcess, str, dict[str, Any]]:
    """Start a simulator serving ``models``; return it, the SQLite ledger URL in ``workdir`` and a
    proxy config document (``proxy_config`` with ``config``) whose models all go to it."""
    sim = start_simulator(workdir, models=list(models))
    doc = proxy_config(upstreams={m: [f"{sim.url}/v1"] for m in models}, workdir=workdir, **config)
    return sim, doc["ledger"]["url"], doc
