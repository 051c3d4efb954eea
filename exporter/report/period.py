"""Billing periods: calendar months (or explicit ranges) in the configured time zone.

A period is half-open, ``[start, end)``, with both ends as aware datetimes in the billing zone.
October 2026 in Europe/Berlin is 2026-09-30T22:00Z .. 2026-10-31T23:00Z (744 h + the extra hour
when daylight saving time ends), so ``seconds`` is not always 24 × 3600 × days.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo


class PeriodError(ValueError):
    """A period that cannot be parsed or makes no sense (end before start ...)."""


@dataclass(frozen=True)
class Period:
    start: datetime  # aware, in the billing zone
    end: datetime  # aware, in the billing zone; exclusive
    label: str  # "2026-10", or "2026-10-01_2026-10-15" for explicit ranges
    timezone: str

    @property
    def start_ts(self) -> int:
        return int(self.start.timestamp())

    @property
    def end_ts(self) -> int:
        return int(self.end.timestamp())

    @property
    def seconds(self) -> int:
        return self.end_ts - self.start_ts

    @property
    def is_calendar_month(self) -> bool:
        return bool(re.fullmatch(r"\d{4}-\d{2}", self.label))

    def as_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "timezone": self.timezone,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "start_utc": iso_utc(self.start),
            "end_utc": iso_utc(self.end),
            "seconds": self.seconds,
        }


def iso_utc(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def month_period(year: int, month: int, tz: ZoneInfo) -> Period:
    if not 1 <= month <= 12:
        raise PeriodError(f"month must be 01..12, got {month:02d}")
    start = datetime(year, month, 1, tzinfo=tz)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=tz)
    return Period(start, end, f"{year:04d}-{month:02d}", tz.key)


def _parse_point(text: str, tz: ZoneInfo, what: str) -> datetime:
    """A date (midnight in the zone) or a datetime (naive means in the zone)."""
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            d = date.fromisoformat(text)
            return datetime(d.year, d.month, d.day, tzinfo=tz)
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise PeriodError(f"{what}: expected YYYY-MM-DD or an ISO 8601 date-time, got {text!r}") from None
    return dt.replace(tzinfo=tz) if dt.tzinfo is None else dt.astimezone(tz)


def parse_period(
    spec: str | None,
    timezone: str,
    now: datetime | None = None,
    start: str | None = None,
    end: str | None = None,
) -> Period:
    """``2026-10``, ``last-month``, ``month-to-date``, or ``start``/``end`` (``--from``/``--to``).

    ``now`` is only used by the relative forms; month-to-date ends at ``now`` truncated to the
    minute, so two runs in the same minute write the same statements.
    """
    tz = ZoneInfo(timezone)
    now = (now or datetime.now(UTC)).astimezone(tz)
    if start is not None or end is not None:
        if spec not in (None, ""):
            raise PeriodError("give either --period or --from/--to, not both")
        if start is None or end is None:
            raise PeriodError("--from and --to go together")
        s = _parse_point(start, tz, "--from")
        e = _parse_point(end, tz, "--to")
        if e <= s:
            raise PeriodError(f"--to ({e.isoformat()}) must be after --from ({s.isoformat()})")
        label = f"{s.strftime('%Y-%m-%dT%H%M')}_{e.strftime('%Y-%m-%dT%H%M')}"
        if s.time() == e.time() == datetime.min.time():
            label = f"{s.date().isoformat()}_{e.date().isoformat()}"
        return Period(s, e, label, tz.key)
    spec = (spec or "last-month").strip()
    if spec == "last-month":
        first = datetime(now.year, now.month, 1, tzinfo=tz)
        prev = first - timedelta(days=1)
        return month_period(prev.year, prev.month, tz)
    if spec in ("month-to-date", "this-month"):
        month = month_period(now.year, now.month, tz)
        stop = now.replace(second=0, microsecond=0)
        if stop <= month.start:
            raise PeriodError("month-to-date: the month has only just started; nothing to report yet")
        return Period(month.start, stop, f"{month.label}-to-{stop.strftime('%dT%H%M')}", tz.key)
    m = re.fullmatch(r"(\d{4})-(\d{1,2})", spec)
    if not m:
        raise PeriodError(f"--period: expected YYYY-MM, last-month or month-to-date, got {spec!r}")
    return month_period(int(m.group(1)), int(m.group(2)), tz)
