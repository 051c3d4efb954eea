"""Historical data for the reporter's tests, benchmark and demo: counters built from usage events,
written as OpenMetrics and backfilled into a Prometheus TSDB with ``promtool tsdb create-blocks-from``.

A counter here is a list of (time, increment) events, optional restarts (the value drops to 0 and
counts again from there) and a sample grid; its value at a sample time is the sum of the events
since the last restart up to that time. That makes every exact delta computable by hand.
"""

from __future__ import annotations

import bisect
import contextlib
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO

from exporter.stack import ManagedProcess, find_binary, start_prometheus


def ts(text: str) -> int:
    """'2026-10-15T12:15' (UTC) → unix seconds."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


@dataclass
class Series:
    metric: str
    labels: Mapping[str, str]
    samples: Sequence[tuple[int, Decimal | int | float | str]]


@dataclass
class Counter:
    """Events → cumulative samples on a grid, with restarts and an existence window."""

    events: list[tuple[int, Decimal]] = field(default_factory=list)
    restarts: list[int] = field(default_factory=list)
    first: int | None = None  # no samples before this time
    last: int | None = None  # no samples after this time
    gaps: list[tuple[int, int]] = field(default_factory=list)  # [from, to) without samples

    def add(self, at: int, amount: Decimal | int | str) -> Counter:
        self.events.append((at, Decimal(amount)))
        return self

    def samples(self, grid: Iterable[int]) -> list[tuple[int, Decimal]]:
        events = sorted(self.events)
        times = [t for t, _ in events]
        prefix = [Decimal(0)]
        for _, v in events:
            prefix.append(prefix[-1] + v)
        restarts = sorted(self.restarts)
        out = []
        for t in grid:
            if (self.first is not None and t < self.first) or (self.last is not None and t > self.last):
                continue
            if any(a <= t < b for a, b in self.gaps):
                continue
            i = bisect.bisect_right(restarts, t)
            since = restarts[i - 1] if i else None
            hi = bisect.bisect_right(times, t)
            lo = bisect.bisect_left(times, since) if since is not None else 0
            out.append((t, prefix[hi] - prefix[lo]))
        return out


def grid(start: int, end: int, step: int) -> range:
    return range(start, end + 1, step)


def _fmt_value(v: Decimal | int | float | str) -> str:
    if isinstance(v, Decimal):
        return format(v.normalize(), "f") if v != v.to_integral_value() else str(int(v))
    return str(v)


def _labels(labels: Mapping[str, str]) -> str:
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in sorted(labels.items())
    )
    return "{" + inner + "}" if inner else ""


def write_openmetrics(out: IO[str], series: Iterable[Series]) -> int:
    """Write samples grouped by metric family (OpenMetrics requires it); returns sample count."""
    by_metric: dict[str, list[Series]] = {}
    for s in series:
        by_metric.setdefault(s.metric, []).append(s)
    n = 0
    for metric in sorted(by_metric):
        for s in by_metric[metric]:
            lab = _labels(s.labels)
            for t, v in s.samples:
                out.write(f"{metric}{lab} {_fmt_value(v)} {t}\n")
                n += 1
    out.write("# EOF\n")
    return n


def backfill(openmetrics: Path, data_dir: Path, timeout: float = 600, block_hours: int = 240) -> None:
    """``promtool tsdb create-blocks-from openmetrics`` into a Prometheus data directory.

    ``--max-block-duration`` (hidden in promtool's help) makes few large blocks instead of one per
    2 hours: backfilling a month then takes a second instead of half a minute.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [
            find_binary("promtool"),
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            "--quiet",
            f"--max-block-duration={block_hours}h",
            str(openmetrics),
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"promtool backfill of {openmetrics} failed ({proc.returncode}): {proc.stderr[-2000:]}"
        )


def backfill_series(workdir: Path, series: Iterable[Series], name: str = "history") -> Path:
    """Write ``series`` to ``workdir/<name>.om`` and backfill them into ``workdir/tsdb``; returns
    that data directory."""
    om = workdir / f"{name}.om"
    with om.open("w") as f:
        write_openmetrics(f, series)
    data = workdir / "tsdb"
    backfill(om, data)
    return data


@contextlib.contextmanager
def prometheus_with(
    workdir: Path, series: Iterable[Series], name: str = "history"
) -> Iterator[ManagedProcess]:
    """A real Prometheus serving ``series`` (backfilled; retention long enough for any test date)."""
    p = start_prometheus(workdir, storage_dir=backfill_series(workdir, series, name), retention="10y")
    try:
        yield p
    finally:
        p.stop()
