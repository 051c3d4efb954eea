"""The ``ledger:`` section of the config file (docs/ledger.md)."""

from __future__ import annotations

from typing import Annotated

from exporter.ledger.url import LedgerUrlError, parse_ledger_url
from exporter.sections import (
    Positive,
    Seconds,
    Section,
    Str,
    checked_string,
    describe,
    number,
    plain,
    section,
    whole,
)
from exporter.urls import public_url

_ledger_url = checked_string(
    parse_ledger_url,
    LedgerUrlError,
    lambda text: f"expected sqlite:///PATH or postgresql://..., got {describe(public_url(text))}",
)


LedgerUrlText = Annotated[str, plain(_ledger_url)]


@section
class LedgerConfig(Section):
    url: LedgerUrlText = "sqlite:///chargeback-ledger.db"
    batch_size: Positive = 500
    flush_interval_seconds: Seconds = 0.5
    max_queue_rows: Positive = 100_000
    spool_dir: Str = "chargeback-spool"
    retry_seconds: Seconds = 2.0
    # Group commit: the journal (in spool_dir) is fsync'ed this often; a power cut loses at most this.
    journal_fsync_seconds: Annotated[float, number(minimum=0.001, maximum=10.0)] = 0.01
    # Months of raw rows `chargeback ledger maintain` keeps (current month included); None: all.
    retention_months: Annotated[int | None, whole(minimum=1)] = None
    # `chargeback ledger query` connects here when set: a read-only role (docs/ledger.md).
    query_url: LedgerUrlText | None = None
