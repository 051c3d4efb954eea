"""Billing periods: calendar months (or explicit ranges) in the configured time zone.

A period is half-open, ``[start, end)``, with both ends as aware datetimes in the billing zone.
October 2026 in Europe/Berlin is 2026-09-30T22:00Z .. 2026-10-31T23:00Z (744 h + the extra hour
when daylight saving time ends), so ``seconds`` is not always 24 × 3600 × days.

Each period has two names: ``label``, for file names and machines (``2026-10``,
``2026-12-01_2026-12-03T1656``: start and exclusive end, sortable), and ``title``, for people
(``October 2026``, ``2026-12 (1–3 Dec, to 16:56 Europe/Berlin)``).
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
    label: str  # "2026-10", or "2026-10-01_2026-10-15" for explicit ranges and month-to-date
    timezone: str
    title: str = ""  # for people: "October 2026", "2026-12 (1–3 Dec, to 16:56 Europe/Berlin)"

    def __post_init__(self) -> None:
        if not self.title:  # a period built by hand still has a name for people
            object.__setattr__(self, "title", self.label)

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
            "title": self.title,
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
    return Period(start, end, f"{year:04d}-{month:02d}", tz.key, f"{MONTHS[month - 1]} {year}")


MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip


def _range_label(s: datetime, e: datetime) -> str:
    """``2026-10-01_2026-10-16`` (midnights), else ``2026-12-01_2026-12-03T1656`` (each end with
    its time only where it is not midnight)."""

    def point(dt: datetime) -> str:
        return dt.date().isoformat() if dt.time() == datetime.min.time() else dt.strftime("%Y-%m-%dT%H%M")

    return f"{point(s)}_{point(e)}"


def _day(dt: datetime) -> str:
    return f"{dt.day} {MONTHS[dt.month - 1][:3]}"


def range_title(s: datetime, e: datetime, tz: str) -> str:
    """``1–15 Oct 2026 (Europe/Berlin)`` for whole days (the end is exclusive: a range ending at
    midnight names the day before as its last), else ``from 1 Oct 2026 06:00 to 2 Nov 2026 00:00
    (Europe/Berlin)``."""
    midnight = datetime.min.time()
    if s.time() != midnight or e.time() != midnight:
        return f"from {_day(s)} {s.year} {s.strftime('%H:%M')} to {_day(e)} {e.year} {e.strftime('%H:%M')} ({tz})"
    last = e - timedelta(days=1)
    if (s.year, s.month) == (last.year, last.month):
        days = f"{s.day}–{_day(last)}" if s.day != last.day else _day(s)
    elif s.year == last.year:
        days = f"{_day(s)} – {_day(last)}"
    else:
        days = f"{_day(s)} {s.year} – {_day(last)}"
    return f"{days} {last.year} ({tz})"


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
        return Period(s, e, _range_label(s, e), tz.key, range_title(s, e, tz.key))
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
        return month_to_date(month, stop)
    m = re.fullmatch(r"(\d{4})-(\d{1,2})", spec)
    if not m:
        raise PeriodError(f"--period: expected YYYY-MM, last-month or month-to-date, got {spec!r}")
    return month_period(int(m.group(1)), int(m.group(2)), tz)


def month_to_date(month: Period, stop: datetime) -> Period:
    """``month`` up to ``stop``: label ``2026-12-01_2026-12-03T1656``, title
    ``2026-12 (1–3 Dec, to 16:56 Europe/Berlin)``."""
    last = stop - timedelta(microseconds=1)
    days = f"{month.start.day}–{last.day}" if last.day != month.start.day else f"{last.day}"
    until = "" if stop.time() == datetime.min.time() else f"to {stop.strftime('%H:%M')} "
    title = f"{month.label} ({days} {MONTHS[month.start.month - 1][:3]}, {until}{month.timezone})"
    return Period(month.start, stop, _range_label(month.start, stop), month.timezone, title)


def previous_period(p: Period) -> Period:
    """The period to compare ``p`` with ("this month against last month"): the calendar month
    before a calendar month; for a month-to-date, the month before up to the same day and time
    (at most that month's end); for any other range, the same length just before it."""
    tz = ZoneInfo(p.timezone)
    if p.is_calendar_month:
        prev = p.start - timedelta(days=1)
        return month_period(prev.year, prev.month, tz)
    if (
        p.start.day == 1
        and p.start.time() == datetime.min.time()
        and p.end < month_period(p.start.year, p.start.month, tz).end
    ):
        prev_day = p.start - timedelta(days=1)
        month = month_period(prev_day.year, prev_day.month, tz)
        offset = p.end.replace(tzinfo=None) - p.start.replace(tzinfo=None)  # wall-clock offset
        stop = (month.start.replace(tzinfo=None) + offset).replace(tzinfo=tz)
        if stop >= month.end:
            return month
        return month_to_date(month, stop)
    start = datetime.fromtimestamp(p.start_ts - p.seconds, tz)
    return Period(
        start, p.start, _range_label(start, p.start), p.timezone, range_title(start, p.start, p.timezone)
    )
