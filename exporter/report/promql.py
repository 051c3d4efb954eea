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

To stay cheap for many thousands of series, nothing is fetched sample by sample in the normal
case. Per counter, with the ``@`` modifier (Prometheus ≥ 2.33, VictoriaMetrics, Thanos, Mimir):

1. ``last_over_time(c[P] @ end)``        value at the end, for series with samples in the period
2. ``last_over_time(c[W] @ start)``      value at the start (W = baseline window, 1 h)
3. ``resets(c[P+W] @ end) > 0``          series with resets, and how many
4. ``resets(c[W] @ start) > 0``          resets just before the period (to subtract)

A series without resets takes (1) − (2). A series with resets adds the value just before each
reset, found without reading its samples: with one reset in a window, ``max_over_time`` is that
value whenever it exceeds ``last_over_time``; otherwise the window is split in two and the
halves' ``resets()`` counts tell whether the pair of samples straddling the midpoint is a reset
(and ``last_over_time`` of the left half is then its "before" value). Only windows shorter than
5 minutes that are still ambiguous have their raw samples fetched.

Series with no sample in W before the start (a scrape gap across the boundary) get their start
value from ``last_over_time(c{user=~"…"}[L] @ start)`` with a long lookback L (62 days) and
their own reset windows from there, so a gap never turns a counter's whole history into usage.

Values are parsed from the API's decimal strings straight into ``Decimal``. Deltas are computed
per series (each proxy replica is its own series through its ``instance`` label) and only then
summed over replicas.
"""

from __future__ import annotations

import itertools
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
        return self._call("query", {"query": expr, "time": f"{at:.3f}"}, expr)  # type: ignore[return-value]

    def _call(self, api: str, form: dict[str, str], expr: str) -> object:
        endpoint = f"{self.url}/api/v1/{api}"
        started = time.monotonic()
        try:
            r = self.session.post(endpoint, data=form, timeout=self.timeout)
        except requests.Timeout:
            raise PromQLError(f"Prometheus at {self.url} timed out after {self.timeout:g}s on query: {expr}") from None
        except requests.RequestException as exc:
            raise PromQLError(f"Prometheus at {self.url} is unreachable ({type(exc).__name__}: {exc}); query: {expr}") from None
        finally:
            self.stats.queries += 1
            self.stats.seconds += time.monotonic() - started
            log.debug("query %.3fs %s", time.monotonic() - started, expr[:200])
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
        if not isinstance(data, dict if api == "query" else list):
            raise PromQLError(f"Prometheus at {self.url} returned no data; query: {expr}")
        return data

    def series(self, selector: str, start: float, end: float) -> list[LabelKey]:
        """``/api/v1/series``: the series of ``selector`` with data in [start, end]. Answered from the
        index and chunk metadata, no sample is decoded; the answer may include a series whose chunk
        spans the range without a sample inside it (callers check with a query)."""
        data = self._call("series", {"match[]": selector, "start": f"{start:.3f}", "end": f"{end:.3f}"}, f"series {selector}")
        out = [label_key(m) for m in data]  # type: ignore[union-attr]
        self.stats.series += len(out)
        return out

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
    splits: int = 0
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


def _at(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}"


class _Series:
    """Queries over one counter restricted to a set of its series (by a regex on ``split_label``
    when the set is small, else the whole metric filtered here)."""

    def __init__(self, client: PromClient, metric: str, split_label: str, total: int, matchers: tuple[str, ...] = ()) -> None:
        self.client, self.metric, self.split_label, self.total = client, metric, split_label, total
        self.matchers = matchers  # e.g. one scrape target's labels: every key of this set has them

    def selectors(self, keys: Iterable[LabelKey]) -> list[str]:
        keys = list(keys)
        values = sorted({dict(k).get(self.split_label, "") for k in keys})
        # Many series: one query on the whole metric (filtered here) beats many long regexes.
        if len(keys) * 4 >= self.total or len(values) > 2 * REGEX_CHUNK:
            return [self.client.selector(self.metric, *self.matchers)]
        return [
            self.client.selector(self.metric, *self.matchers, regex_matcher(self.split_label, c))
            for c in _chunks(values, REGEX_CHUNK)
        ]

    def vector(self, template: str, keys: Iterable[LabelKey], at_ms: int) -> dict[LabelKey, Decimal]:
        keys = set(keys)
        out: dict[LabelKey, Decimal] = {}
        for sel in self.selectors(keys):
            out.update({k: v for k, v in self.client.vector(template.format(sel=sel), at_ms / 1000).items() if k in keys})
        return out

    def matrix(self, template: str, keys: Iterable[LabelKey], at_ms: int) -> dict[LabelKey, list[tuple[float, Decimal]]]:
        keys = set(keys)
        out: dict[LabelKey, list[tuple[float, Decimal]]] = {}
        for sel in self.selectors(keys):
            out.update({k: v for k, v in self.client.matrix(template.format(sel=sel), at_ms / 1000).items() if k in keys})
        return out


MIN_SPLIT_MS = 300_000  # below this a window's raw samples are fetched instead of split further
MAX_DEPTH = 48


def _reset_corrections(
    q: _Series,
    tasks: dict[tuple[int, int], dict[LabelKey, int]],
    stats: DeltaStats,
    known_last: dict[tuple[int, int], dict[LabelKey, Decimal]] | None = None,
) -> dict[LabelKey, Decimal]:
    """Σ of the values just before each reset, per series, inside each task's window [a, b] (ms),
    given the number of resets R there. Without fetching the window's samples:

    - R = 1: before and after the reset the counter only grows, so if ``max_over_time`` exceeds
      ``last_over_time`` the maximum is the value just before the reset;
    - otherwise split at the midpoint m: resets in [a, m] and [m, b] are counted, and the pair of
      samples straddling m (if any) is a reset exactly when R exceeds their sum; its "before"
      value is ``last_over_time`` over [a, m]. Recurse into the halves.

    Windows shorter than MIN_SPLIT_MS that are still ambiguous have their few raw samples fetched.
    The split works whether the server's range windows are closed ([a, b], Prometheus 2) or
    left-open ((a, b], Prometheus 3 and VictoriaMetrics).
    """
    corr: dict[LabelKey, Decimal] = {}
    pending = tasks
    depth = 0
    while pending:
        nxt: dict[tuple[int, int], dict[LabelKey, int]] = {}
        for (a, b), counts in sorted(pending.items()):
            counts = {k: r for k, r in counts.items() if r > 0}
            if not counts:
                continue
            d = b - a
            unresolved = {k: r for k, r in counts.items() if r > 1}
            ones = [k for k, r in counts.items() if r == 1]
            if ones:
                mx = q.vector(f"max_over_time({{sel}}[{d}ms] @ {_at(b)})", ones, b)
                known = (known_last or {}).get((a, b))
                ls = known if known is not None else q.vector(f"last_over_time({{sel}}[{d}ms] @ {_at(b)})", ones, b)
                for k in ones:
                    if k in mx and k in ls and mx[k] > ls[k]:
                        corr[k] = corr.get(k, Decimal(0)) + mx[k]
                    else:
                        unresolved[k] = 1
            if not unresolved:
                continue
            if d <= MIN_SPLIT_MS or depth >= MAX_DEPTH:
                raw = q.matrix(f"{{sel}}[{d}ms] @ {_at(b)}", unresolved, b)
                for k in unresolved:
                    samples = raw.get(k, [])
                    corr[k] = corr.get(k, Decimal(0)) + sum(
                        (p for (_, p), (_, v) in itertools.pairwise(samples) if v < p), Decimal(0)
                    )
                    stats.raw_fetched += 1
                continue
            m = a + d // 2
            rl = q.vector(f"resets({{sel}}[{m - a}ms] @ {_at(m)})", unresolved, m)
            rr = q.vector(f"resets({{sel}}[{b - m}ms] @ {_at(b)})", unresolved, b)
            lm = q.vector(f"last_over_time({{sel}}[{m - a}ms] @ {_at(m)})", unresolved, m)
            stats.splits += 1
            for k, r in unresolved.items():
                left, right = int(rl.get(k, 0)), int(rr.get(k, 0))
                straddle = r - left - right
                if straddle not in (0, 1):
                    raise PromQLError(
                        f"Prometheus at {q.client.url}: inconsistent resets() for a series of {q.metric} "
                        f"({r} over a window, {left}+{right} over its halves): did the data change during the report?"
                    )
                if straddle:
                    corr[k] = corr.get(k, Decimal(0)) + lm[k]
                nxt.setdefault((a, m), {})[k] = left
                nxt.setdefault((m, b), {})[k] = right
        pending = nxt
        depth += 1
    return corr


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

    delta = last(end) − base(start) + C([A, end]) − C([A, start]), where base is the last sample
    at or before start, A a point before base, and C(window) the sum of the values just before
    each reset inside the window (see :func:`_reset_corrections`). Subtracting C([A, start])
    keeps resets that happened before the period out of it.

    ``split_label`` is a label every series has (``user`` for proxy counters, ``uuid`` for GPU
    counters); the follow-up queries select series through a regex on it. Series without a
    sample in the period are left out (their delta is 0).
    """
    stats = stats if stats is not None else DeltaStats()
    s_ms, e_ms, w_ms, l_ms = start * 1000, end * 1000, baseline_window * 1000, max(lookback, baseline_window) * 1000
    p_ms = e_ms - s_ms
    sel = client.selector(metric)
    last = client.vector(f"last_over_time({sel}[{p_ms}ms] @ {_at(e_ms)})", end)
    if not last:
        return {}
    q = _Series(client, metric, split_label, len(last))
    base = {k: v for k, v in client.vector(f"last_over_time({sel}[{w_ms}ms] @ {_at(s_ms)})", end).items() if k in last}
    resets_all = {k: int(v) for k, v in client.vector(f"resets({sel}[{p_ms + w_ms}ms] @ {_at(e_ms)}) > 0", end).items() if k in last}
    resets_pre = {k: int(v) for k, v in client.vector(f"resets({sel}[{w_ms}ms] @ {_at(s_ms)}) > 0", end).items() if k in base}
    stats.series += len(last)

    # No sample within the baseline window before the start: look further back (a scrape gap
    # across the boundary); those few series get their own, longer windows.
    missing = [k for k in last if k not in base]
    old_base: dict[LabelKey, Decimal] = {}
    if missing and l_ms > w_ms:
        old_base = q.vector(f"last_over_time({{sel}}[{l_ms}ms] @ {_at(s_ms)})", missing, s_ms)
    add: dict[tuple[int, int], dict[LabelKey, int]] = {(s_ms - w_ms, e_ms): {k: r for k, r in resets_all.items() if k not in old_base}}
    sub: dict[tuple[int, int], dict[LabelKey, int]] = {(s_ms - w_ms, s_ms): resets_pre}
    if old_base:
        add[(s_ms - l_ms, e_ms)] = {
            k: int(v) for k, v in q.vector(f"resets({{sel}}[{p_ms + l_ms}ms] @ {_at(e_ms)})", old_base, e_ms).items()
        }
        sub[(s_ms - l_ms, s_ms)] = {k: int(v) for k, v in q.vector(f"resets({{sel}}[{l_ms}ms] @ {_at(s_ms)})", old_base, s_ms).items()}
    stats.old_baseline += len(old_base)
    stats.with_resets += sum(1 for r in add.values() for v in r.values() if v)
    # The last sample in [start − W, end] is the last one in the period: already known.
    plus = _reset_corrections(q, add, stats, known_last={(s_ms - w_ms, e_ms): last})
    minus = _reset_corrections(q, sub, stats)
    zero = Decimal(0)
    return {
        k: v_end - base.get(k, old_base.get(k, zero)) + plus.get(k, zero) - minus.get(k, zero) for k, v_end in last.items()
    }


def sum_by(deltas: Mapping[LabelKey, Decimal], labels: tuple[str, ...]) -> dict[tuple[str, ...], Decimal]:
    """Sum per-series values by the given labels (missing labels count as '')."""
    out: dict[tuple[str, ...], Decimal] = {}
    for k, v in deltas.items():
        d = dict(k)
        g = tuple(d.get(name, "") for name in labels)
        out[g] = out.get(g, Decimal(0)) + v
    return out
