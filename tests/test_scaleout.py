"""Scale-out: two proxy processes share one PostgreSQL ledger; totals stay exact.

The traffic is split across both replicas; the ledger (one table for both), the sum of both
replicas' counters and the usage the clients received must agree to the token.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support.ledger import pg_available, temp_pg_database

from exporter.sim.harness import ledger_rows, metric, proxy_stack, read_metrics, start_proxy, wait_for_rows
from exporter.sim.traffic import run_traffic

pytestmark = pytest.mark.skipif(pg_available() is not None, reason=str(pg_available()))

USERS = {
    "ann@corp.example": "research",
    "ben@corp.example": "research",
    "cid@corp.example": "support",
    "dee@corp.example": "support",
}


def test_two_proxies_one_postgresql_exact_totals(tmp_path: Path) -> None:
    with (
        temp_pg_database("cb_scaleout") as pg_url,
        proxy_stack(tmp_path, users=USERS, ledger_url=pg_url) as stack,
    ):
        second = start_proxy(tmp_path, stack.config_path, name="proxy-2")
        try:
            half = sorted(USERS)
            first_users = {u: stack.tokens[u] for u in half[:2] + half[2:3]}
            second_users = {u: stack.tokens[u] for u in half[1:2] + half[3:]}  # ben uses both replicas
            r1 = asyncio.run(
                run_traffic(stack.api_url, first_users, ["sim-small", "sim-large"], 8, 0.5, seed=11)
            )
            r2 = asyncio.run(
                run_traffic(second.url, second_users, ["sim-small", "sim-large"], 8, 0.5, seed=12)
            )
            assert not r1.errors and not r2.errors
            expected_requests = r1.requests + r2.requests
            rows = wait_for_rows(pg_url, expected_requests)
            assert len(rows) == expected_requests == 40

            m1, m2 = read_metrics(stack.metrics_url), read_metrics(second.metrics_url)
            for user in USERS:
                for model in ("sim-small", "sim-large"):
                    want_p = r1.total_for(user, model).prompt_tokens + r2.total_for(user, model).prompt_tokens
                    want_c = (
                        r1.total_for(user, model).completion_tokens
                        + r2.total_for(user, model).completion_tokens
                    )
                    got_p = sum(
                        metric(m, "chargeback_prompt_tokens_total", user=user, model=model) for m in (m1, m2)
                    )
                    got_c = sum(
                        metric(m, "chargeback_completion_tokens_total", user=user, model=model)
                        for m in (m1, m2)
                    )
                    assert (got_p, got_c) == (want_p, want_c), (user, model)
                    user_rows = [r for r in ledger_rows(pg_url, user_email=user, model=model)]
                    assert sum(r["prompt_tokens"] for r in user_rows) == want_p
                    assert sum(r["completion_tokens"] for r in user_rows) == want_c
            # ben's requests went through both replicas and are all in the one ledger
            ben = ledger_rows(pg_url, user_email="ben@corp.example")
            assert len(ben) == 16
            assert len({r["request_id"] for r in rows}) == len(rows)
        finally:
            assert second.stop() == 0
