"""The health endpoints (exporter/health.py) and the one logger namespace (exporter/logs.py)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from exporter.health import HEALTHY_PATH, LEGACY_READY_PATH, READY_PATH, add_health_routes
from exporter.logs import component_name, get_logger

PACKAGE = Path(__file__).resolve().parent.parent / "exporter"


async def test_ready_turns_503_while_not_ready_and_healthy_stays_200() -> None:
    reason: list[str] = []
    app = web.Application()
    add_health_routes(app, lambda request: reason[0] if reason else None)
    async with TestClient(TestServer(app)) as client:
        for path in (HEALTHY_PATH, READY_PATH, LEGACY_READY_PATH):
            answer = await client.get(path)
            assert (answer.status, await answer.text()) == (200, "ok\n"), path
        reason.append("shutting down")
        answers = {path: await client.get(path) for path in (HEALTHY_PATH, READY_PATH, LEGACY_READY_PATH)}
        assert {p: (a.status, await a.text()) for p, a in answers.items()} == {
            "/-/healthy": (200, "ok\n"),
            "/-/ready": (503, "shutting down\n"),
            "/healthz": (503, "shutting down\n"),
        }


def test_proxy_listeners_answer_503_on_ready_while_draining() -> None:
    """The proxy's API and metrics apps share this check (tests/test_proxy.py asks both listeners)."""
    from exporter.proxy import app as proxy_app

    class Draining:
        draining = True

    request = type("R", (), {"app": {proxy_app.STATE: Draining()}})()
    assert proxy_app._not_ready(request) == "shutting down"  # type: ignore[arg-type]
    Draining.draining = False
    assert proxy_app._not_ready(request) is None  # type: ignore[arg-type]


def test_logger_names_are_one_namespace() -> None:
    assert component_name("exporter.proxy.server") == "chargeback.proxy"
    assert component_name("exporter.ledger.writer") == "chargeback.ledger"
    assert component_name("exporter.keys") == "chargeback.keys"
    assert component_name("exporter.proxy.usage_count", "tokenize") == "chargeback.proxy.tokenize"
    assert get_logger("exporter.gpu.collector").name == "chargeback.gpu"
    # python -m exporter.gpu.cli: the module runs as __main__ and still logs as chargeback.gpu
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import runpy; runpy.run_module('exporter.gpu.cli', run_name='__main__')",
            "--help",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    with pytest.raises(ValueError, match="not a module of the exporter package"):
        component_name("dashboards.build")


def test_no_module_names_its_own_logger() -> None:
    """Every module logs through exporter/logs.py, so no name outside chargeback.* can appear."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "logs.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "getLogger":
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert offenders == []


@pytest.mark.parametrize(
    "argv",
    [
        ["keys", "list"],
        ["keys", "create", "--user", "a@corp.example"],
        ["keys", "rotate", "key_x"],
        ["keys", "revoke", "key_x"],
        ["keys", "import", "users.csv", "--out", "tokens.csv"],
        ["ledger", "query", "SELECT 1"],
        ["ledger", "summary"],
        ["ledger", "maintain"],
    ],
)
def test_keys_and_ledger_take_log_level(argv: list[str]) -> None:
    from exporter.cli import build_parser

    full = [*argv, "--log.level", "debug"]
    assert build_parser(full).parse_args(full).log_level == "debug"
    assert build_parser(argv).parse_args(argv).log_level == "info"
