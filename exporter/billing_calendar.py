"""The billing calendar: where the current billing month starts and ends in the config's
``timezone:``.

PromQL only knows UTC months (``month()``, ``day_of_month()``), while statements cut periods in
the billing time zone. The proxy exports the current billing month's bounds as gauges (computed
here, at scrape time), and the recording rules take month-to-date and the month's remaining hours
from them, so budget alerts and statements agree on when a month begins.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter import contract


def month_bounds(tz: ZoneInfo, now: float) -> tuple[datetime, datetime]:
    """Start and end (exclusive) of the calendar month in ``tz`` that contains the instant ``now``
    (Unix seconds), as aware datetimes in ``tz``. Midnight always exists at a month's first day in
    the zones that matter here; zoneinfo resolves the rare zone where it does not (fold=0)."""
    local = datetime.fromtimestamp(now, tz)
    start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if start.month == 12:
        end = start.replace(year=start.year + 1, month=1)
    else:
        end = start.replace(month=start.month + 1)
    return start, end


def month_bounds_unix(tz: ZoneInfo, now: float) -> tuple[int, int]:
    """:func:`month_bounds` as Unix seconds (UTC instants)."""
    start, end = month_bounds(tz, now)
    return int(start.astimezone(UTC).timestamp()), int(end.astimezone(UTC).timestamp())


class BillingMonthCollector(Collector):
    """``chargeback_billing_month_{start,end}_timestamp_seconds{timezone}`` at scrape time.

    ``clock`` returns Unix seconds; tests pass a fixed one."""

    def __init__(self, tz: ZoneInfo, clock: Callable[[], float] = time.time) -> None:
        self.tz = tz
        self.clock = clock

    def collect(self) -> Iterable[Metric]:
        start, end = month_bounds_unix(self.tz, self.clock())
        for name, value in ((contract.BILLING_MONTH_START, start), (contract.BILLING_MONTH_END, end)):
            g = contract.spec(name).family()
            g.add_metric((str(self.tz.key),), value)
            yield g
