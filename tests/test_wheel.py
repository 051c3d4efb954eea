"""The wheel is the product: it carries the rules and dashboards, and none of the test kit.

The wheel is built from a copy of the sources (so the checkout gets no build/ or egg-info), unpacked,
and imported ahead of the editable install from a directory outside the repository: the rules are
then found by the same function ``chargeback demo`` uses, inside the unpacked package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from exporter import assets

REPO = Path(__file__).resolve().parent.parent
SOURCES = ["pyproject.toml", "README.md", "MANIFEST.in", "build_hooks.py", "exporter", "rules", "dashboards"]
TEST_KIT = ("fakenvml", "ledger/testing", "report/testdata", "support/", "tests/", "build_hooks")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copyfile(path, src / name)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(base / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = (base / "dist").glob("llm_chargeback-*.whl")
    return built


def _shipped(kind: str, pattern: str) -> dict[str, bytes]:
    return {f"exporter/_assets/{kind}/{p.name}": p.read_bytes() for p in sorted((REPO / kind).glob(pattern))}


@pytest.mark.slow
def test_wheel_carries_rules_and_dashboards_but_no_test_kit(wheel: Path) -> None:
    expected = _shipped("rules", "*.yaml") | _shipped("dashboards", "*.json")
    assert sorted(expected) == [
        "exporter/_assets/dashboards/chargeback-gpu-fleet.json",
        "exporter/_assets/dashboards/chargeback-overview.json",
        "exporter/_assets/dashboards/chargeback-team.json",
        "exporter/_assets/rules/chargeback-alerts.yaml",
        "exporter/_assets/rules/chargeback-recording.yaml",
    ]
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert {n: zf.read(n) for n in names if n.startswith("exporter/_assets/")} == expected
    assert [n for n in names if any(k in n for k in TEST_KIT)] == []
    assert [n for n in names if n.endswith(".py") and not n.startswith("exporter/")] == []
    assert "exporter/stack.py" in names and "exporter/assets.py" in names


@pytest.mark.slow
def test_installed_wheel_finds_its_rules_and_dashboards(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    elsewhere = tmp_path / "elsewhere"  # no rules/ or dashboards/ beside the working directory
    elsewhere.mkdir()
    probe = (
        "import json, exporter\n"
        "from exporter import assets, stack\n"
        "print(json.dumps({'package': exporter.__file__,"
        " 'rules': [str(p) for p in stack.rule_files()],"
        " 'dashboards': [str(p) for p in assets.asset_files('dashboards')]}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    packaged = site / "exporter" / "_assets"
    assert found["package"] == str(site / "exporter" / "__init__.py")
    assert found["rules"] == [
        str(packaged / "rules" / "chargeback-alerts.yaml"),
        str(packaged / "rules" / "chargeback-recording.yaml"),
    ]
    assert found["dashboards"] == [
        str(packaged / "dashboards" / name)
        for name in ("chargeback-gpu-fleet.json", "chargeback-overview.json", "chargeback-team.json")
    ]


def test_checkout_reads_the_repository_folders() -> None:
    assert assets.asset_dir("rules") == REPO / "rules"
    assert [p.name for p in assets.asset_files("rules")] == [
        "chargeback-alerts.yaml",
        "chargeback-recording.yaml",
    ]


def test_missing_assets_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assets, "CHECKOUT", tmp_path)
    with pytest.raises(assets.AssetsMissing, match=r"no dashboards found: neither .*_assets/dashboards"):
        assets.asset_files("dashboards")
    with pytest.raises(ValueError, match="unknown asset kind 'alerts': expected one of rules, dashboards"):
        assets.asset_dir("alerts")
