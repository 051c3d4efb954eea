"""Nothing here may depend on the day the tests run (issue 10).

Two proofs: relative periods computed from fixed instants around the awkward moments of the
Berlin calendar (a new year 30 s old, the night clocks spring forward, the night they fall back),
and the period and statement test modules run again in a child process whose clock ``faketime``
has moved to each of those instants, with the machine's zone set to Berlin as well.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from exporter.report.period import PeriodError, parse_period

BERLIN = "Europe/Berlin"
TESTS = Path(__file__).resolve().parent

# (instant in UTC, what it is in Berlin)
NEW_YEAR = datetime(2026, 12, 31, 23, 0, 30, tzinfo=UTC)  # 2027-01-01 00:00:30 CET
DST_START = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # 03:30 CEST, half an hour after the jump
DST_END_FIRST = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST, the first of two 02:30s
DST_END_SECOND = datetime(2026, 10, 25, 1, 30, tzinfo=UTC)  # 02:30 CET, the second


def _span(spec: str, now: datetime) -> tuple[str, str, int]:
    p = parse_period(spec, BERLIN, now=now)
    return p.start.isoformat(), p.end.isoformat(), p.seconds


def test_new_year_half_a_minute_old() -> None:
    p = parse_period("last-month", BERLIN, now=NEW_YEAR)
    assert p.label == "2026-12"
    assert (p.start.isoformat(), p.end.isoformat(), p.seconds) == (
        "2026-12-01T00:00:00+01:00",
        "2027-01-01T00:00:00+01:00",
        31 * 86400,
    )
    # In UTC it is still 31 December: a UTC calendar would call this "last month" November.
    assert parse_period("last-month", "UTC", now=NEW_YEAR).label == "2026-11"
    # Month-to-date ends on the whole minute, which is the month's first instant: nothing yet.
    with pytest.raises(PeriodError, match="only just started"):
        parse_period("month-to-date", BERLIN, now=NEW_YEAR)


def test_daylight_saving_starts() -> None:
    # March 2026 in Berlin has 743 hours; month-to-date at 03:30 CEST on the 29th is 27 d 2.5 h
    # of wall time but one hour less of real time.
    assert _span("month-to-date", DST_START) == (
        "2026-03-01T00:00:00+01:00",
        "2026-03-29T03:30:00+02:00",
        28 * 86400 + 3 * 3600 + 1800 - 3600,
    )
    assert _span("last-month", DST_START) == (
        "2026-02-01T00:00:00+01:00",
        "2026-03-01T00:00:00+01:00",
        28 * 86400,
    )


def test_daylight_saving_ends_both_half_past_twos() -> None:
    first = _span("month-to-date", DST_END_FIRST)
    second = _span("month-to-date", DST_END_SECOND)
    assert first == ("2026-10-01T00:00:00+02:00", "2026-10-25T02:30:00+02:00", 24 * 86400 + 2 * 3600 + 1800)
    # same wall clock, an hour later in real time: the period is exactly 3600 s longer
    assert second == ("2026-10-01T00:00:00+02:00", "2026-10-25T02:30:00+01:00", first[2] + 3600)
    assert _span("last-month", DST_END_SECOND) == (
        "2026-09-01T00:00:00+02:00",
        "2026-10-01T00:00:00+02:00",
        30 * 86400,
    )


# The monotonic clock moves with the wall clock (libfaketime 0.9.10 breaks absolute sleeps on a
# monotonic clock it does not fake), so timeouts and sleeps still measure real durations.
_ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}


def _moved(instant: datetime) -> list[str]:
    """argv prefix: run under faketime, the clock starting at ``instant``, in Berlin's zone.

    faketime gets an offset in seconds rather than a date, since it would read a date in the
    child's (Berlin) zone."""
    faketime = shutil.which("faketime")
    if faketime is None:  # `make test` installs it (Debian package faketime)
        pytest.skip("faketime is not installed")
    offset = round(instant.timestamp() - time.time())
    return [faketime, "-f", f"{offset:+d}", "env", f"TZ={BERLIN}"]


# The modules that hold every period and statement test; they run whole under a moved clock.
MOVED_CLOCK_MODULES = ("test_report_units.py", "test_report.py", "test_report_cli.py")


@pytest.mark.slow
@pytest.mark.parametrize(
    "instant",
    [NEW_YEAR, DST_START, DST_END_SECOND],
    ids=["2027-01-01T00:00:30-Berlin", "2026-03-29-dst-start", "2026-10-25-dst-end"],
)
def test_period_and_statement_tests_pass_with_the_clock_moved(instant: datetime, tmp_path: Path) -> None:
    argv = [*_moved(instant), sys.executable, "-m", "pytest", "-q", "-x"]
    argv += ["-p", "no:cacheprovider", "--basetemp", str(tmp_path / "t")]
    argv += [str(TESTS / m) for m in MOVED_CLOCK_MODULES]
    proc = subprocess.run(argv, env=_ENV, cwd=TESTS.parent, capture_output=True, text=True, timeout=600)
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and "failed" not in proc.stdout, tail


def test_faketime_really_moves_the_clock() -> None:
    """Guard for the test above: a child under faketime sees the moved date, in Berlin's zone."""
    code = (
        "import datetime, time; print(datetime.datetime.now().isoformat(timespec='seconds'), time.tzname[0])"
    )
    argv = [*_moved(NEW_YEAR), sys.executable, "-c", code]
    out = subprocess.run(
        argv, env=_ENV, capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    assert out[0][:16] == "2027-01-01T00:00" and out[1] == "CET"
