"""`chargeback report --source ledger --pool-costs config`: statements from the ledger and the config
alone. Prometheus is a listening socket that must never see a connection; amounts are exact."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
import report_scenario as sc

from exporter.ledger.row import LedgerRow
from exporter.ledger.store import open_store


@pytest.fixture
def trap() -> Iterator[socket.socket]:
    """A 'Prometheus' that accepts TCP connections and records them (none must come)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    s.setblocking(False)
    yield s
    s.close()


def connections(s: socket.socket) -> int:
    n = 0
    while True:
        try:
            conn, _ = s.accept()
        except BlockingIOError:
            return n
        conn.close()
        n += 1


def row(
    rid: str, ts: str, user: str, team: str, model: str, prompt: int, completion: int, ms: float
) -> LedgerRow:
    return LedgerRow(rid, ts, user, team, model, "/v1/chat/completions", 200, prompt, completion,
                     prompt + completion, 0, False, False, ms, None, "k", "http://127.0.0.1:1/v1")  # fmt: skip


ROWS = [
    # Berlin October 2026 = [2026-09-30T22:00Z, 2026-10-31T23:00Z): partial UTC days at both edges
    row("a1", "2026-09-30T22:30:00.000000Z", "ann@corp.test", "alpha", "m-big", 400, 0, 1500.0),
    row("a2", "2026-10-15T06:00:00.000000Z", "ann@corp.test", "alpha", "m-big", 600, 0, 2500.25),
    row("b1", "2026-10-31T22:59:59.999999Z", "bob@corp.test", "beta", "m-big", 3000, 0, 1000.0),
    row("l1", "2026-10-02T10:00:00.000000Z", "al@corp.test", "alpha", "m-small", 100, 100, 750.125),
    # outside the Berlin October: September (Berlin) and November (Berlin)
    row("x1", "2026-09-30T21:59:59.999999Z", "ann@corp.test", "alpha", "m-big", 99999, 0, 1.0),
    row("x2", "2026-10-31T23:00:00.000000Z", "bob@corp.test", "beta", "m-big", 99999, 0, 1.0),
]


run = sc.run


def test_ledger_only_report_without_prometheus_exact_amounts(trap, tmp_path, ledger_url) -> None:
    url = ledger_url  # SQLite and PostgreSQL (tests/conftest.py)
    store = open_store(url)
    assert store.insert_rows(ROWS) == 6
    store.close()
    prom = f"http://127.0.0.1:{trap.getsockname()[1]}"
    cfg = tmp_path / "chargeback.yaml"
    cfg.write_text(sc.config_text(prom, out=str(tmp_path / "st"), ledger_url=url))
    r = run(
        cfg,
        *sc.LEDGER_REPORT,
        "--pool-costs",
        "config",
        "--format",
        "json",
    )
    assert r.returncode == 0, r.stderr
    assert connections(trap) == 0
    st = json.loads((tmp_path / "st/2026-10/token-share/statement.json").read_text())
    # 745 hours in the Berlin October 2026 (DST ends on the 25th): big 2 × 2.50, small 1 × 1.00
    assert st["summary"]["total_pool_cost"] == "4470.00"
    assert st["summary"]["teams"] == {"alpha": "1676.25", "beta": "2793.75", "gamma": "0.00"}
    lines = {(line["user"], line["model"]): line for t in st["teams"] for line in t["lines"]}
    ann, bob, al = (
        lines[("ann@corp.test", "m-big")],
        lines[("bob@corp.test", "m-big")],
        lines[("al@corp.test", "m-small")],
    )
    assert (ann["requests"], ann["prompt_tokens"], ann["request_seconds"]) == (2, 1000, "4.000")
    assert (bob["requests"], bob["prompt_tokens"], bob["request_seconds"]) == (1, 3000, "1.000")
    assert (al["requests"], al["weighted_tokens"], al["request_seconds"]) == (1, "200", "0.750")

    # a pool the config cannot price is refused, naming it; still no connection
    cfg.write_text(
        cfg.read_text().replace("small: {gpu_hourly_cost: 1.00, gpus: 1,", "small: {gpu_hourly_cost: 1.00,")
    )
    r = run(cfg, *sc.LEDGER_REPORT, "--pool-costs", "config")
    assert r.returncode == 2
    assert "pools.small.gpus missing" in r.stderr
    r = run(cfg, "report", "--period", "2026-10", "--pool-costs", "config")
    assert r.returncode == 2 and "--pool-costs config needs --source ledger" in r.stderr
    assert connections(trap) == 0
