"""Helpers for tests that need a real ledger database (also used by the proxy's end-to-end tests).

``temp_pg_database()`` creates a throw-away PostgreSQL database and drops it afterwards;
``block_pg_database()`` / ``unblock_pg_database()`` simulate an outage for real: new connections
are refused and existing ones are terminated, exactly what a client sees when the server goes away.
``VERBATIM_SQL`` is the issue's ledger query, word for word; ``async_wait_for`` polls a condition
from async tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from exporter.ledger.row import LedgerRow

PG_ADMIN_URL = os.environ.get("CHARGEBACK_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")

VERBATIM_SQL = """SELECT user_email, model, SUM(total_tokens) as total_tokens_sum, SUM(prompt_tokens) as prompt_tokens_sum, SUM(completion_tokens) as output_tokens_sum
FROM public.http_analytics
GROUP BY model, user_email
ORDER BY total_tokens_sum DESC;"""


def write_ledger_config(path: Path, url: str, users: Mapping[str, str]) -> Path:
    """The smallest config the ``keys``/``ledger`` commands accept: one model, the teams of ``users``
    (user → team), written to ``path``."""
    teams = "\n".join(f"  {t}: {{}}" for t in dict.fromkeys(users.values()))
    listed = "\n".join(f"  {u}: {t}" for u, t in users.items())
    path.write_text(
        "currency: EUR\n"
        "pools:\n  p: {gpu_hourly_cost: 1, gpus: 1}\n"
        "models:\n  m0: {upstreams: [http://127.0.0.1:9/v1], pool: p}\n"
        f"teams:\n{teams}\nusers:\n{listed}\nledger:\n  url: {url}\n"
    )
    return path


# The header of `chargeback ledger summary` and the columns of LedgerStore.summary(), as users see them.
SUMMARY_COLUMNS = [
    "user_email",
    "team",
    "model",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "estimated",
]


async def async_wait_for(
    predicate: Callable[[], object], limit: float = 20.0, what: str = "condition"
) -> None:
    """Poll until predicate() is true; the deadline only guards against hanging, it asserts no timing."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _with_db(url: str, dbname: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + dbname))


def _admin() -> Any:
    import psycopg

    return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)


def pg_available() -> str | None:
    """None when the test PostgreSQL answers, else the reason it does not."""
    try:
        with _admin():
            return None
    except Exception as exc:
        return f"PostgreSQL at {PG_ADMIN_URL} unavailable: {exc}"


@contextlib.contextmanager
def temp_pg_database(prefix: str = "cb_test") -> Iterator[str]:
    """A fresh, empty database for one test; yields its URL and drops it afterwards."""
    name = f"{prefix}_{secrets.token_hex(5)}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_db(PG_ADMIN_URL, name)
    finally:
        with _admin() as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def pg_database_or_skip(prefix: str = "cb_test") -> Iterator[str]:
    """``temp_pg_database`` when the test PostgreSQL answers; the calling test is skipped otherwise."""
    import pytest

    reason = pg_available()
    if reason:
        pytest.skip(reason)
    with temp_pg_database(prefix) as url:
        yield url


def _dbname(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def block_pg_database(url: str) -> None:
    """Outage: refuse new connections to the database and terminate the open ones."""
    name = _dbname(url)
    with _admin() as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )


def unblock_pg_database(url: str) -> None:
    with _admin() as conn:
        conn.execute(f'ALTER DATABASE "{_dbname(url)}" ALLOW_CONNECTIONS true')


def make_row(i: int, **overrides: Any) -> LedgerRow:
    """A deterministic row: user u{i%3}, model m{i%2}, prompt 10+i%7, completion 3+i%5."""
    prompt, completion = 10 + i % 7, 3 + i % 5
    values: dict[str, Any] = {
        "request_id": f"req-{i:08d}",
        "timestamp": f"2024-05-{1 + i % 28:02d}T10:00:{i % 60:02d}.000123Z",
        "user_email": f"u{i % 3}@corp.example",
        "team": "research" if i % 3 != 2 else "support",
        "model": f"m{i % 2}",
        "endpoint": "/v1/chat/completions",
        "status_code": 200,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cached_tokens": i % 4,
        "estimated": i % 10 == 0,
        "stream": i % 2 == 1,
        "duration_ms": 12.5,
        "ttft_ms": 3.25 if i % 2 == 1 else None,
        "api_key_id": f"key_{i % 3}",
        "upstream": "http://127.0.0.1:1/v1",
    }
    values.update(overrides)
    return LedgerRow(**values)
