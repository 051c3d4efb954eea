"""Shared fixtures.

``proxy_env`` (session scope) starts two simulators and one proxy as real processes with an SQLite
ledger and keys for a pool of users; tests take users from it with ``fresh_users`` so each test sees
counters that start at zero for its own users (exact assertions without deltas). The process helpers
live in ``exporter/sim/harness.py`` (``proxy_stack``, ``read_metrics``, ``metric``, ``ledger_rows``,
``wait_for_rows``) and can be used directly for tests that need their own stack.

Shared-stack models:
- ``sim-small``, ``sim-large``: served by the first simulator, open to every team;
- ``sim-restricted``: research only (support gets 403);
- ``sim-rr``: upstreams [sim, a refused port, sim1] (round-robin, skipping the dead one);
- ``sim-dead``: only a refused port (502).
Proxy limits: ``max_body_bytes`` 65536, ``upstream_timeout_seconds`` 1.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.ledger import pg_database_or_skip

from exporter.sim.harness import Stack, proxy_stack
from exporter.stack import free_port

POOL_SIZE = 48
TEAMS = ("research", "support")


def pool_users() -> dict[str, str]:
    return {f"user{i:02d}@corp.example": TEAMS[i % 2] for i in range(POOL_SIZE)}


@pytest.fixture(scope="session")
def proxy_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("proxy-env")
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with proxy_stack(
        workdir,
        users={**pool_users(), "override@corp.example": "research"},
        models=("sim-small", "sim-large"),
        extra_upstreams={
            "sim-restricted": ["{sim}"],
            "sim-rr": ["{sim}", dead, "{sim1}"],
            "sim-dead": [dead],
        },
        allowed_teams={"sim-restricted": ["research"]},
        config_users={"override@corp.example": "support"},  # the config's team wins over the key's
        proxy={"max_body_bytes": 65536, "upstream_timeout_seconds": 1},
        extra_sims=1,
    ) as stack:
        yield stack


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/ledger.db"
        return
    with pg_database_or_skip() as url:
        yield url


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database (skipped when the test server is not there)."""
    with pg_database_or_skip() as url:
        yield url


_counter = itertools.count()


@pytest.fixture
def fresh_users(proxy_env: Stack) -> Callable[..., list[str]]:
    """fresh_users(n, team=None) → n pool users nobody else used (their counters start at zero)."""

    def take(n: int, team: str | None = None) -> list[str]:
        out: list[str] = []
        while len(out) < n:
            i = next(_counter)
            if i >= POOL_SIZE:
                raise RuntimeError("user pool exhausted: raise POOL_SIZE in tests/conftest.py")
            if team is None or TEAMS[i % 2] == team:
                out.append(f"user{i:02d}@corp.example")
        return out

    return take
