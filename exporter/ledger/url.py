"""The one parser of ledger URLs (``ledger.url``, ``ledger.query_url``, ``--ledger.url``).

``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` (SQLAlchemy's convention),
``sqlite://:memory:`` (tests), or ``postgresql://user:pass@host:port/db`` (also ``postgres://``).
A SQLite URL may carry options (``?busy_timeout_ms=10000``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs

from exporter.ledger.backend import redact_url

SQLITE_MEMORY = "file:chargeback-ledger-memory?mode=memory&cache=shared"


class LedgerUrlError(ValueError):
    """A URL that names no ledger we can open (the message redacts any password)."""


@dataclass(frozen=True)
class LedgerUrl:
    url: str  # as given, postgres:// spelled postgresql://
    backend: str  # "sqlite" | "postgresql"
    path: str = ""  # SQLite: the file, or the shared-memory URI
    memory: bool = False
    options: dict[str, str] = field(default_factory=dict)


def parse_ledger_url(url: str) -> LedgerUrl:
    if url.startswith("sqlite:"):
        rest = url[len("sqlite:") :]
        query = ""
        if "?" in rest:
            rest, query = rest.split("?", 1)
        opts = {k: v[-1] for k, v in parse_qs(query).items()}
        if rest in ("//:memory:", "///:memory:"):
            return LedgerUrl(url, "sqlite", SQLITE_MEMORY, True, opts)
        if not rest.startswith("///") or len(rest) <= 3:
            raise LedgerUrlError(
                f"bad SQLite ledger URL {url!r}: expected sqlite:///relative.db or sqlite:////absolute.db"
            )
        return LedgerUrl(url, "sqlite", rest[3:], False, opts)
    if url.startswith("postgres://"):
        return LedgerUrl("postgresql://" + url[len("postgres://") :], "postgresql")
    if url.startswith("postgresql://"):
        return LedgerUrl(url, "postgresql")
    raise LedgerUrlError(
        f"unsupported ledger URL {redact_url(url)!r}: expected sqlite:///PATH or postgresql://..."
    )
