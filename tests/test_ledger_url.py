"""The one ledger URL parser (exporter/ledger/url.py) behind the config check, the stores and the
command-line tools."""

from __future__ import annotations

import re

import pytest

from exporter.ledger.store import StoreError, open_store
from exporter.ledger.url import SQLITE_MEMORY, LedgerUrlError, parse_ledger_url


def test_each_form_parses() -> None:
    rel = parse_ledger_url("sqlite:///data/ledger.db?busy_timeout_ms=100")
    assert (rel.backend, rel.path, rel.memory, rel.options) == (
        "sqlite",
        "data/ledger.db",
        False,
        {"busy_timeout_ms": "100"},
    )
    assert parse_ledger_url("sqlite:////var/lib/ledger.db").path == "/var/lib/ledger.db"
    mem = parse_ledger_url("sqlite://:memory:")
    assert (mem.path, mem.memory) == (SQLITE_MEMORY, True)
    pg = parse_ledger_url("postgres://u:pw@db:5432/chargeback")
    assert (pg.backend, pg.url) == ("postgresql", "postgresql://u:pw@db:5432/chargeback")
    assert parse_ledger_url("postgresql://db/x").url == "postgresql://db/x"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:ledger.db", "bad SQLite ledger URL 'sqlite:ledger.db': expected sqlite:///relative.db"),
        ("sqlite:///", "bad SQLite ledger URL"),
        ("mysql://u:secret@db/x", "unsupported ledger URL 'mysql://u:***@db/x': expected sqlite:///PATH"),
    ],
)
def test_bad_urls_are_named_without_their_password(url: str, message: str) -> None:
    with pytest.raises(LedgerUrlError, match="^" + re.escape(message)):
        parse_ledger_url(url)
    with pytest.raises(StoreError) as err:  # the stores refuse it with the same words
        open_store(url)
    assert message in str(err.value)
    assert "secret" not in str(err.value)
