"""Build hook: the wheel carries the generated rules and dashboards as package data.

They are generated into the repository's root (``rules/*.yaml``, ``dashboards/*.json``), where
Prometheus, promtool's tests, the Kubernetes generator and Grafana's provisioning read them. Building
the wheel copies them into ``exporter/_assets/`` (see exporter/assets.py, which finds them there with
importlib.resources). Editable installs skip the copy: a checkout reads the root folders directly.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# folder at the root → file pattern; mirrored by exporter/assets.py KINDS and MANIFEST.in
ASSETS = {"rules": "*.yaml", "dashboards": "*.json"}
TARGET = Path("exporter") / "_assets"


class BuildPyWithAssets(build_py):
    """setuptools' build_py, then the generated artefacts copied into the package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for kind, pattern in ASSETS.items():
            sources = sorted(p for p in (ROOT / kind).glob(pattern) if p.is_file())
            if not sources:
                raise SystemExit(
                    f"build_hooks.py: {ROOT / kind}: no {pattern} files to ship; run `make generate`"
                )
            dest = Path(self.build_lib) / TARGET / kind
            dest.mkdir(parents=True, exist_ok=True)
            for src in sources:
                shutil.copyfile(src, dest / src.name)
