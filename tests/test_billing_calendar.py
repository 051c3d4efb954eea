"""The billing month in the config's time zone, at fixed instants (never today's date), and the
gauges the proxy exports from it."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporter.billing_calendar import BillingMonthCollector, month_bounds, month_bounds_unix

BERLIN = ZoneInfo("Europe/Berlin")


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@pytest.mark.parametrize(
    ("now", "start", "end"),
    [
        # 30 Nov 23:30 UTC is already 1 Dec 00:30 in Berlin (CET, UTC+1)
        ("2026-11-30T23:30:00+00:00", "2026-11-30T23:00:00+00:00", "2026-12-31T23:00:00+00:00"),
        # one second before Berlin's December starts: still November
        ("2026-11-30T22:59:59+00:00", "2026-10-31T23:00:00+00:00", "2026-11-30T23:00:00+00:00"),
        # the instant December starts belongs to December
        ("2026-11-30T23:00:00+00:00", "2026-11-30T23:00:00+00:00", "2026-12-31T23:00:00+00:00"),
        # October has 31 days and 1 hour in Berlin: it starts in summer time (UTC+2) and ends in winter time
        ("2026-10-15T12:00:00+00:00", "2026-09-30T22:00:00+00:00", "2026-10-31T23:00:00+00:00"),
        # March: starts in winter time, ends in summer time (30 days and 23 hours)
        ("2027-03-31T21:59:59+00:00", "2027-02-28T23:00:00+00:00", "2027-03-31T22:00:00+00:00"),
        # New Year: 31 Dec 23:00 UTC is 1 Jan 00:00 in Berlin
        ("2026-12-31T23:00:00+00:00", "2026-12-31T23:00:00+00:00", "2027-01-31T23:00:00+00:00"),
    ],
)
def test_berlin_month_bounds(now: str, start: str, end: str) -> None:
    assert month_bounds_unix(BERLIN, _ts(now)) == (int(_ts(start)), int(_ts(end)))


def test_bounds_are_local_midnights() -> None:
    start, end = month_bounds(BERLIN, _ts("2026-10-15T12:00:00+00:00"))
    assert (start.isoformat(), end.isoformat()) == ("2026-10-01T00:00:00+02:00", "2026-11-01T00:00:00+01:00")
    assert (end.astimezone(UTC) - start.astimezone(UTC)).total_seconds() == 31 * 86400 + 3600


def test_utc_zone() -> None:
    assert month_bounds_unix(ZoneInfo("UTC"), _ts("2026-02-14T08:00:00+00:00")) == (
        int(_ts("2026-02-01T00:00:00+00:00")),
        int(_ts("2026-03-01T00:00:00+00:00")),
    )


def test_collector_exports_both_gauges_from_the_injected_clock() -> None:
    now = [_ts("2026-11-30T22:59:59+00:00")]
    registry = CollectorRegistry()
    registry.register(BillingMonthCollector(BERLIN, clock=lambda: now[0]))
    text = generate_latest(registry).decode()
    assert 'chargeback_billing_month_start_timestamp_seconds{timezone="Europe/Berlin"} 1.7934876e+09' in text
    assert 'chargeback_billing_month_end_timestamp_seconds{timezone="Europe/Berlin"} 1.7960796e+09' in text
    now[0] = _ts("2026-11-30T23:00:00+00:00")  # the next scrape sees December
    text = generate_latest(registry).decode()
    assert 'chargeback_billing_month_start_timestamp_seconds{timezone="Europe/Berlin"} 1.7960796e+09' in text
