"""PromQL over HTTP (``requests``) and exact counter deltas.

Any server speaking the Prometheus HTTP API works (Prometheus, Thanos, Mimir, VictoriaMetrics).
Queries go out as form-encoded POSTs so long label regexes never hit URL length limits.

Exact deltas
------------
``increase()`` extrapolates to the window's edges and returns fractions, so billed quantities are
computed from samples instead. For every series of a counter over ``[start, end]``:

    delta = (last sample at or before end) − (last sample at or before start)

with the start value taken as 0 when the series has no sample before the period (it was created
inside it), and with counter resets handled: when a sample is lower than the one before it the
counter restarted from zero, so the new value itself is the increase since the previous sample.

To stay cheap for many thousands of series it runs, per counter, three instant queries evaluated
with the ``@`` modifier and one rare fallback:

1. ``last_over_time(c[P] @ end)``         → value at the end (series with samples in the period)
2. ``last_over_time(c[W] @ start)``       → value at the start (W = baseline window, 1 h)
3. ``resets(c[P+W] @ end) > 0``           → the few series with a reset in ``[start−W, end]``
4. only for series missing from (2): ``last_over_time(c{user=~"…"}[L] @ start)`` with a long
   lookback L, so a series whose last sample before the period is older than W still gets its
   true starting value (a scrape gap across the boundary).

Series with neither resets nor an old baseline take ``(1) − (2)``. The rest — reset series and
series whose baseline came from (4) — have their raw samples fetched (``c{user=~"…"}[P+W] @ end``)
and are summed sample by sample. Values are parsed from the API's decimal strings straight into
``Decimal``, so no float rounding creeps in. Deltas are computed per series (each proxy replica
is its own series through its ``instance`` label) and only then summed over replicas.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

import requests

log = logging.getLogger(__name__)

LabelKey = tuple[tuple[str, str], ...]  # sorted (name, value) pairs without __name__

BASELINE_WINDOW_SECONDS = 3600
DEFAULT_LOOKBACK_SECONDS = 62 * 86400
REGEX_CHUNK = 200  # label values per regex in the fallback queries


class PromQLError(RuntimeError):
    """A query failed: the message names the server URL and the query."""


def label_key(metric: Mapping[str, str]) -> LabelKey:
    return tuple(sorted((k, v) for k, v in metric.items() if k != "__name__"))


def _to_decimal(text: str) -> Decimal:
    return Decimal(text)


def _re2_escape(value: str) -> str:
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", value)


def _promql_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def regex_matcher(label: str, values: Iterable[str]) -> str:
    """``label=~"a|b\\.c"`` matching exactly the given values."""
    return f"{label}=~{_promql_string('|'.join(_re2_escape(v) for v in sorted(set(values))))}"


@dataclass
class QueryStats:
    queries: int = 0
    seconds: float = 0.0
    series: int = 0

    def as_dict(self) -> dict[str, object]:
        return {"queries": self.queries, "seconds": round(self.seconds, 3), "series": self.series}


class PromClient:
    """Synchronous PromQL client; errors become :class:`PromQLError` naming URL and query."""

    def __init__(self, url: str, timeout: float = 30.0, selector: str = "", session: requests.Session | None = None):
        self.url = url.rstrip("/")
        self.timeout = timeout
        # Extra matchers from the config ('{cluster="prod"}' or 'cluster="prod"'), added to every selector.
        self.extra = selector.strip().removeprefix("{").removesuffix("}").strip().strip(",")
        self.session = session or requests.Session()
        self.stats = QueryStats()

    def selector(self, metric: str, *matchers: str) -> str:
        parts = [m for m in (self.extra, *matchers) if m]
        return f"{metric}{{{','.join(parts)}}}" if parts else metric

    def _post(self, expr: str, at: float) -> dict[str, object]:
        endpoint = f"{self.url}/api/v1/query"
        started = time.monotonic()
        try:
            r = self.session.post(endpoint, data={"query": expr, "time": f"{at:.3f}"}, timeout=self.timeout)
        except requests.Timeout:
            raise PromQLError(f"Prometheus at {self.url} timed out after {self.timeout:g}s on query: {expr}") from None
        except requests.RequestException as exc:
            raise PromQLError(f"Prometheus at {self.url} is unreachable ({type(exc).__name__}: {exc}); query: {expr}") from None
        finally:
            self.stats.queries += 1
            self.stats.seconds += time.monotonic() - started
        try:
            body = r.json()
        except ValueError:
            raise PromQLError(
                f"Prometheus at {self.url} answered HTTP {r.status_code} with no JSON ({r.text[:200]!r}); query: {expr}"
            ) from None
        if not isinstance(body, dict) or body.get("status") != "success":
            err = body.get("error") if isinstance(body, dict) else body
            etype = body.get("errorType") if isinstance(body, dict) else ""
            raise PromQLError(f"Prometheus at {self.url} returned HTTP {r.status_code} {etype}: {err}; query: {expr}")
        data = body.get("data")
        if not isinstance(data, dict):
            raise PromQLError(f"Prometheus at {self.url} returned no data; query: {expr}")
        return data

    def vector(self, expr: str, at: float) -> dict[LabelKey, Decimal]:
        """Instant query → {labels: value}."""
        data = self._post(expr, at)
        if data.get("resultType") == "scalar":
            return {(): _to_decimal(data["result"][1])}  # type: ignore[index]
        if data.get("resultType") != "vector":
            raise PromQLError(f"Prometheus at {self.url}: expected an instant vector, got {data.get('resultType')}; query: {expr}")
        out: dict[LabelKey, Decimal] = {}
        for item in data.get("result", []):  # type: ignore[union-attr]
            out[label_key(item["metric"])] = _to_decimal(item["value"][1])
        self.stats.series += len(out)
        return out

    def vector_labels(self, expr: str, at: float) -> list[dict[str, str]]:
        data = self._post(expr, at)
        return [dict(item["metric"]) for item in data.get("result", [])]  # type: ignore[union-attr]

    def matrix(self, expr: str, at: float) -> dict[LabelKey, list[tuple[float, Decimal]]]:
        """Range-vector selector evaluated at ``at`` → {labels: [(t, value), ...]} (raw samples)."""
        data = self._post(expr, at)
        if data.get("resultType") != "matrix":
            raise PromQLError(f"Prometheus at {self.url}: expected a range vector, got {data.get('resultType')}; query: {expr}")
        out: dict[LabelKey, list[tuple[float, Decimal]]] = {}
        for item in data.get("result", []):  # type: ignore[union-attr]
            out[label_key(item["metric"])] = [(float(t), _to_decimal(v)) for t, v in item["values"]]
        return out

    def check(self) -> str:
        """Reach the server (buildinfo if it has one); returns its version or ''."""
        try:
            r = self.session.get(f"{self.url}/api/v1/status/buildinfo", timeout=self.timeout)
            if r.ok:
                return str(r.json().get("data", {}).get("version", ""))
        except (requests.RequestException, ValueError):
            pass
        self.vector("vector(1)", time.time())
        return ""


# --------------------------------------------------------------------------- exact deltas


@dataclass
class DeltaStats:
    series: int = 0
    with_resets: int = 0
    old_baseline: int = 0
    raw_fetched: int = 0
    notes: list[str] = field(default_factory=list)


def delta_from_samples(baseline: Decimal, samples: Iterable[tuple[float, Decimal]]) -> tuple[Decimal, int]:
    """Sum a counter's increases from ``baseline`` through ``samples`` (time order); returns
    (delta, resets seen). A lower value than the previous one is a restart from zero."""
    total = Decimal(0)
    prev = baseline
    resets = 0
    for _, v in samples:
        if v < prev:
            total += v
            resets += 1
        else:
            total += v - prev
        prev = v
    return total, resets


def _chunks(values: list[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


def exact_deltas(
    client: PromClient,
    metric: str,
    start: int,
    end: int,
    split_label: str,
    baseline_window: int = BASELINE_WINDOW_SECONDS,
    lookback: int = DEFAULT_LOOKBACK_SECONDS,
    stats: DeltaStats | None = None,
) -> dict[LabelKey, Decimal]:
    """Exact increase of every series of ``metric`` over ``[start, end]`` (unix seconds).

    ``split_label`` is a label every series has (``user`` for proxy counters, ``uuid`` for GPU
    counters): the fallback queries select series through a regex on it. Series with no sample
    in the period are left out (their delta is 0).
    """
    stats = stats if stats is not None else DeltaStats()
    p = end - start
    sel = client.selector(metric)
    last = client.vector(f"last_over_time({sel}[{p}s] @ {end})", end)
    if not last:
        return {}
    base = client.vector(f"last_over_time({sel}[{baseline_window}s] @ {start})", end)
    reset_keys = set(client.vector(f"resets({sel}[{p + baseline_window}s] @ {end}) > 0", end)) & set(last)
    stats.series += len(last)
    stats.with_resets += len(reset_keys)

    # Series that have no sample within the baseline window before the start: look further back.
    missing = [k for k in last if k not in base]
    old_base: dict[LabelKey, Decimal] = {}
    if missing and lookback > baseline_window:
        values = sorted({dict(k).get(split_label, "") for k in missing})
        for chunk in _chunks(values, REGEX_CHUNK):
            q = f"last_over_time({client.selector(metric, regex_matcher(split_label, chunk))}[{lookback}s] @ {start})"
            for k, v in client.vector(q, end).items():
                if k in last and k not in base:
                    old_base[k] = v
    stats.old_baseline += len(old_base)

    result: dict[LabelKey, Decimal] = {}
    need_raw = reset_keys | set(old_base)
    for k, v_end in last.items():
        if k not in need_raw:
            result[k] = v_end - base.get(k, Decimal(0))

    if need_raw:
        values = sorted({dict(k).get(split_label, "") for k in need_raw})
        for chunk in _chunks(values, REGEX_CHUNK):
            q = f"{client.selector(metric, regex_matcher(split_label, chunk))}[{p + baseline_window}s] @ {end}"
            for k, samples in client.matrix(q, end).items():
                if k not in need_raw:
                    continue
                before = [s for s in samples if s[0] <= start]
                inside = [s for s in samples if start < s[0] <= end]
                baseline = before[-1][1] if before else old_base.get(k, Decimal(0))
                result[k], _ = delta_from_samples(baseline, inside)
                stats.raw_fetched += 1
        lost = need_raw - set(result)
        if lost:  # should not happen: the series vanished between two queries
            raise PromQLError(f"Prometheus at {client.url}: {len(lost)} series of {metric} vanished while fetching raw samples")
    return result


def sum_by(deltas: Mapping[LabelKey, Decimal], labels: tuple[str, ...]) -> dict[tuple[str, ...], Decimal]:
    """Sum per-series values by the given labels (missing labels count as '')."""
    out: dict[tuple[str, ...], Decimal] = {}
    for k, v in deltas.items():
        d = dict(k)
        g = tuple(d.get(name, "") for name in labels)
        out[g] = out.get(g, Decimal(0)) + v
    return out
