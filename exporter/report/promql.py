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

To stay cheap for many thousands of series, nothing is fetched sample by sample and no series'
month is scanned in the normal case. Per counter, with the ``@`` modifier (Prometheus ≥ 2.33,
VictoriaMetrics, Thanos, Mimir):

1. ``/api/v1/series`` over the period          which series have samples in it (index only)
2. ``last_over_time(c[1h] @ end)``              value at the end; the few series that stopped
                                                earlier get ``last_over_time(c{user=~"…"}[P] @ end)``
3. ``last_over_time(c[1h] @ start)``            value at the start

Counters reset when their process restarts, and every proxy replica exports
``process_start_time_seconds``, whose value changes exactly at a restart. ``changes()`` of that one
series per scrape target over the period says which targets restarted, and a short window
around the new start time gives the two scrapes between which it happened (:func:`process_restarts`).
A series of a target that did not restart takes (2) − (3). A series of a target that restarted
sums each process's increase: its last value before each restart (``last_over_time`` over the hour
before that scrape, all the target's series in one query) plus its value at the end, minus (3).

Series whose target exports no process start time (the GPU exporter, other exporters, old
data) are scanned instead:

4. ``resets(c[P+W] @ end) > 0``          series with resets, and how many
5. ``resets(c[W] @ start) > 0``          resets just before the period (to subtract)

and add the value just before each reset, found without reading their samples: with one reset
in a window, ``max_over_time`` is that value whenever it exceeds ``last_over_time``; otherwise
the window is split in two and the halves' ``resets()`` counts tell whether the pair of samples
straddling the midpoint is a reset (and ``last_over_time`` of the left half is then its "before"
value). Only windows shorter than 5 minutes that are still ambiguous have their raw samples
fetched. These scans read every sample of the series concerned, so their cost grows with the
scrape frequency; the restart path's does not.

Series with no sample in W before the start (a scrape gap across the boundary) get their start
value from ``last_over_time(c{user=~"…"}[L] @ start)`` with a long lookback L (62 days) and
their own reset windows from there (scanned), so a gap never turns a counter's whole history
into usage.

Values are parsed from the API's decimal strings straight into ``Decimal``. Deltas are computed
per series (each proxy replica is its own series through its ``instance`` label) and only then
summed over replicas.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TypeVar

import requests

from exporter.logs import get_logger

log = get_logger(__name__)

LabelKey = tuple[tuple[str, str], ...]  # sorted (name, value) pairs without __name__
_V = TypeVar("_V")  # one series' value: a number (instant query) or its samples (range query)

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

    def __init__(
        self, url: str, timeout: float = 30.0, selector: str = "", session: requests.Session | None = None
    ):
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
            raise PromQLError(
                f"Prometheus at {self.url} timed out after {self.timeout:g}s on query: {expr}"
            ) from None
        except requests.RequestException as exc:
            raise PromQLError(
                f"Prometheus at {self.url} is unreachable ({type(exc).__name__}: {exc}); query: {expr}"
            ) from None
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
            raise PromQLError(
                f"Prometheus at {self.url} returned HTTP {r.status_code} {etype}: {err}; query: {expr}"
            )
        data = body.get("data")
        if not isinstance(data, dict if api == "query" else list):
            raise PromQLError(f"Prometheus at {self.url} returned no data; query: {expr}")
        return data

    def series(self, selector: str, start: float, end: float) -> list[LabelKey]:
        """``/api/v1/series``: the series of ``selector`` with data in [start, end]. Answered from the
        index and chunk metadata, no sample is decoded; the answer may include a series whose chunk
        spans the range without a sample inside it (callers check with a query)."""
        data = self._call(
            "series",
            {"match[]": selector, "start": f"{start:.3f}", "end": f"{end:.3f}"},
            f"series {selector}",
        )
        out = [label_key(m) for m in data]  # type: ignore[union-attr]
        self.stats.series += len(out)
        return out

    def vector(self, expr: str, at: float) -> dict[LabelKey, Decimal]:
        """Instant query → {labels: value}."""
        data = self._post(expr, at)
        if data.get("resultType") == "scalar":
            return {(): _to_decimal(data["result"][1])}  # type: ignore[index]
        if data.get("resultType") != "vector":
            raise PromQLError(
                f"Prometheus at {self.url}: expected an instant vector, got {data.get('resultType')}; query: {expr}"
            )
        out: dict[LabelKey, Decimal] = {}
        for item in data.get("result", []):  # type: ignore[union-attr]
            out[label_key(item["metric"])] = _to_decimal(item["value"][1])
        self.stats.series += len(out)
        return out

    def matrix(self, expr: str, at: float) -> dict[LabelKey, list[tuple[float, Decimal]]]:
        """Range-vector selector evaluated at ``at`` → {labels: [(t, value), ...]} (raw samples)."""
        data = self._post(expr, at)
        if data.get("resultType") != "matrix":
            raise PromQLError(
                f"Prometheus at {self.url}: expected a range vector, got {data.get('resultType')}; query: {expr}"
            )
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
    stopped: int = 0  # series with no sample in the period's last hour (looked up over the period)
    by_restarts: int = 0  # series whose resets came from their process's restarts (or had none)
    restarted: int = 0  # of those, series of a process that restarted in the period
    scanned: int = 0  # series whose resets were found by scanning them with resets()
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

    def __init__(
        self, client: PromClient, metric: str, split_label: str, total: int, matchers: tuple[str, ...] = ()
    ) -> None:
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
        return self._query(self.client.vector, template, keys, at_ms)

    def matrix(
        self, template: str, keys: Iterable[LabelKey], at_ms: int
    ) -> dict[LabelKey, list[tuple[float, Decimal]]]:
        return self._query(self.client.matrix, template, keys, at_ms)

    def _query(
        self,
        run: Callable[[str, float], dict[LabelKey, _V]],
        template: str,
        keys: Iterable[LabelKey],
        at_ms: int,
    ) -> dict[LabelKey, _V]:
        """``template`` (with ``{sel}``) run once per selector at ``at_ms``; only ``keys`` are kept."""
        keys = set(keys)
        out: dict[LabelKey, _V] = {}
        for sel in self.selectors(keys):
            out.update({k: v for k, v in run(template.format(sel=sel), at_ms / 1000).items() if k in keys})
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
                ls = (
                    known
                    if known is not None
                    else q.vector(f"last_over_time({{sel}}[{d}ms] @ {_at(b)})", ones, b)
                )
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


PROCESS_START = "process_start_time_seconds"


@dataclass(frozen=True)
class Restart:
    """A process restart seen by Prometheus: ``lo`` is the old process's last scrape, ``hi`` the new
    one's first (ms). The target has no sample in between, so any time in (lo, hi) cuts cleanly."""

    lo: int
    hi: int


def _transitions(samples: list[tuple[float, Decimal]]) -> list[tuple[Restart, Decimal]]:
    ms = [(round(t * 1000), v) for t, v in samples]
    return [(Restart(a, b), vb) for (a, va), (b, vb) in itertools.pairwise(ms) if vb != va]


def _exact(labels: LabelKey) -> tuple[str, ...]:
    return tuple(f"{n}={_promql_string(v)}" for n, v in labels)


def process_restarts(
    client: PromClient, instances: Iterable[str], a_ms: int, e_ms: int
) -> dict[LabelKey, list[Restart] | None]:
    """Restarts in [a, e] of every scrape target among ``instances``, read from its
    ``process_start_time_seconds`` (client_python's process collector, on every proxy replica):
    the value changes exactly when a new process answers the scrape. Keyed by the target's labels
    (those of its process series); ``None`` when its restarts could not be pinned down.

    Cheap: one series per target. ``changes()`` counts restarts; for a single restart the new
    start time τ is the last value, and the raw samples within an hour of τ give the scrape pair
    around it. Anything else (several restarts, a long outage around τ, a clock far off) fetches
    that one series' samples over the whole window.
    """
    instances = sorted(set(instances))
    if not instances:
        return {}
    d = e_ms - a_ms
    sel = client.selector(PROCESS_START, regex_matcher("instance", instances))
    counts = client.vector(f"changes({sel}[{d}ms] @ {_at(e_ms)})", e_ms / 1000)
    out: dict[LabelKey, list[Restart] | None] = {k: [] for k, n in counts.items() if n == 0}
    changed = {k: int(n) for k, n in counts.items() if n > 0}
    if not changed:
        return out
    tau = client.vector(f"last_over_time({sel}[{d}ms] @ {_at(e_ms)})", e_ms / 1000)
    for k, n in sorted(changed.items()):
        one = client.selector(PROCESS_START, *_exact(k))
        found: list[tuple[Restart, Decimal]] = []
        if n == 1 and k in tau:
            t_ms = int(tau[k] * 1000)
            if a_ms < t_ms < e_ms + BASELINE_WINDOW_SECONDS * 1000:
                near = client.matrix(
                    f"{one}[{2 * BASELINE_WINDOW_SECONDS}s] @ {_at(t_ms + BASELINE_WINDOW_SECONDS * 1000)}",
                    t_ms / 1000,
                )
                found = _transitions(near.get(k, []))
        if len(found) != 1 or found[0][1] != tau.get(k) or not a_ms <= found[0][0].lo:
            found = _transitions(client.matrix(f"{one}[{d}ms] @ {_at(e_ms)}", e_ms / 1000).get(k, []))
        out[k] = (
            [r for r, _ in found] if len(found) == n and all(r.hi - r.lo >= 2 for r, _ in found) else None
        )
    return out


def _owners(keys: Iterable[LabelKey], targets: Iterable[LabelKey]) -> dict[LabelKey, LabelKey]:
    """Key → the one target whose labels it carries (a series scraped from that target)."""
    by_names: dict[tuple[str, ...], dict[tuple[str, ...], list[LabelKey]]] = {}
    for t in targets:
        names = tuple(n for n, _ in t)
        by_names.setdefault(names, {}).setdefault(tuple(v for _, v in t), []).append(t)
    out: dict[LabelKey, LabelKey] = {}
    for k in keys:
        d = dict(k)
        hits = [
            t
            for names, index in by_names.items()
            if all(n in d for n in names)
            for t in index.get(tuple(d[n] for n in names), [])
        ]
        if len(hits) == 1:
            out[k] = hits[0]
    return out


def _last_in(q: _Series, keys: set[LabelKey], a: int, b: int, short: int) -> dict[LabelKey, Decimal]:
    """Last sample in (a, b] (ms) of each key: a short window first, the rest over the whole span."""
    n = min(short, b - a)
    got = q.vector(f"last_over_time({{sel}}[{n}ms] @ {_at(b)})", keys, b)
    rest = keys - set(got)
    if rest and b - a > n:
        got.update(q.vector(f"last_over_time({{sel}}[{b - a}ms] @ {_at(b)})", rest, b))
    return got


def _restarted_target_deltas(
    q: _Series,
    keys: set[LabelKey],
    restarts: list[Restart],
    s_ms: int,
    e_ms: int,
    w_ms: int,
    base: dict[LabelKey, Decimal],
) -> dict[LabelKey, Decimal | None]:
    """Deltas of the series of one target that restarted: per process, its last value in the period
    minus its first (the base for the process alive at the start, 0 for later ones, which count from
    zero). None for a series whose values contradict that (it fell without a restart)."""
    pre = [r for r in restarts if r.hi <= s_ms]
    post = [r for r in restarts if r.hi > s_ms]
    cut = s_ms - w_ms
    if pre:  # the base must come from the process alive at the start
        cut = max(cut, pre[-1].lo + 1)
        base = q.vector(f"last_over_time({{sel}}[{s_ms - cut}ms] @ {_at(s_ms)})", keys, s_ms)
    zero = Decimal(0)
    total: dict[LabelKey, Decimal | None] = {k: -base.get(k, zero) for k in keys}
    floor = {k: base.get(k, zero) for k in keys}
    for r in post:
        # lo < start: the process alive at the start ended before it; its last value is the base.
        values = base if r.lo < s_ms else _last_in(q, keys, cut, r.lo + 1, w_ms)
        for k in keys:
            v = values.get(k, floor[k])
            t = total[k]
            total[k] = None if t is None or v < floor[k] else t + v
        floor = dict.fromkeys(keys, zero)
        cut = r.lo + 1
    values = _last_in(q, keys, cut, e_ms, w_ms)
    for k in keys:
        v = values.get(k, floor[k])
        t = total[k]
        total[k] = None if t is None or v < floor[k] else t + v
    return total


def exact_deltas(
    client: PromClient,
    metric: str,
    start: int,
    end: int,
    split_label: str,
    baseline_window: int = BASELINE_WINDOW_SECONDS,
    lookback: int = DEFAULT_LOOKBACK_SECONDS,
    stats: DeltaStats | None = None,
    use_restarts: bool = True,
) -> dict[LabelKey, Decimal]:
    """Exact increase of every series of ``metric`` over ``[start, end]`` (unix seconds).

    Which series had samples in the period: ``/api/v1/series`` (no sample decoded); their values at
    the end from the last hour, widening to the whole period only for series that stopped earlier.
    Values at the start from the hour before it (a longer lookback for series with a gap there).

    Resets: a counter resets when its process restarts. For series whose scrape target exports
    ``process_start_time_seconds`` (``use_restarts``), :func:`process_restarts` says whether and
    between which two scrapes it restarted; a target that did not restart needs nothing more
    (delta = last − base), one that did is cut at its restarts and each process's increase summed
    (a few short-window queries per restart, nothing scanned). Series without that information, or
    with a gap across the start, are scanned instead:

    delta = last(end) − base(start) + C([A, end]) − C([A, start]), where A is a point before base
    and C(window) the sum of the values just before each reset inside the window (see
    :func:`_reset_corrections`). Subtracting C([A, start]) keeps resets before the period out.

    ``split_label`` is a label every series has (``user`` for proxy counters, or ``team`` when they
    have no user label under ``proxy.metrics_labels: team``; ``uuid`` for GPU counters); the
    follow-up queries select series through a regex on it. Series without a sample in the period
    are left out (their delta is 0).
    """
    stats = stats if stats is not None else DeltaStats()
    s_ms, e_ms, w_ms, l_ms = (
        start * 1000,
        end * 1000,
        baseline_window * 1000,
        max(lookback, baseline_window) * 1000,
    )
    p_ms = e_ms - s_ms
    sel = client.selector(metric)
    short = min(w_ms, p_ms)
    last = client.vector(f"last_over_time({sel}[{short}ms] @ {_at(e_ms)})", end)
    if short < p_ms:
        try:
            listed: list[LabelKey] | None = client.series(sel, start, end)
        except PromQLError as exc:  # a backend without (or limiting) the series API: scan instead
            log.info("%s; reading the period's last samples with a query instead", exc)
            listed = None
        if listed is None:
            last = client.vector(f"last_over_time({sel}[{p_ms}ms] @ {_at(e_ms)})", end)
        else:
            stopped = sorted(k for k in set(listed) if k not in last)
            if stopped:
                wide = _Series(client, metric, split_label, len(set(listed)))
                last.update(wide.vector(f"last_over_time({{sel}}[{p_ms}ms] @ {_at(e_ms)})", stopped, e_ms))
                stats.stopped += len(stopped)
    if not last:
        return {}
    q = _Series(client, metric, split_label, len(last))
    base = {
        k: v
        for k, v in client.vector(f"last_over_time({sel}[{w_ms}ms] @ {_at(s_ms)})", end).items()
        if k in last
    }
    stats.series += len(last)

    # No sample within the baseline window before the start: look further back (a scrape gap
    # across the boundary); those few series get their own, longer windows.
    missing = [k for k in last if k not in base]
    old_base: dict[LabelKey, Decimal] = {}
    if missing and l_ms > w_ms:
        old_base = q.vector(f"last_over_time({{sel}}[{l_ms}ms] @ {_at(s_ms)})", missing, s_ms)
    stats.old_baseline += len(old_base)

    zero = Decimal(0)
    out: dict[LabelKey, Decimal] = {}
    scan = set(old_base)
    if use_restarts:
        instances = {dict(k).get("instance") for k in last}
        targets = process_restarts(client, (i for i in instances if i), s_ms - 2 * w_ms, e_ms)
        owner = _owners((k for k in last if k not in scan), targets)
        restarted: dict[LabelKey, set[LabelKey]] = {}
        for k, t in owner.items():
            rs = targets[t]
            if rs is not None and any(r.hi > s_ms - w_ms for r in rs):
                restarted.setdefault(t, set()).add(k)
            elif rs is not None:
                delta = last[k] - base.get(k, zero)
                if delta >= 0:  # a fall without a restart: leave it to the scan
                    out[k] = delta
        for t, keys in sorted(restarted.items()):
            rs = [r for r in targets[t] or [] if r.hi > s_ms - w_ms]
            tq = _Series(client, metric, split_label, len(keys), _exact(t))
            for k, v in _restarted_target_deltas(tq, keys, rs, s_ms, e_ms, w_ms, base).items():
                if v is not None:
                    out[k] = v
                    stats.with_resets += 1 if any(r.hi > s_ms for r in rs) else 0
            stats.restarted += len(keys)
        stats.by_restarts += len(out)
    scan |= {k for k in last if k not in out}
    if not scan:
        return out
    stats.scanned += len(scan)

    resets_all = {
        k: int(v)
        for k, v in q.vector(f"resets({{sel}}[{p_ms + w_ms}ms] @ {_at(e_ms)}) > 0", scan, e_ms).items()
    }
    in_base = [k for k in scan if k in base]
    resets_pre = (
        {
            k: int(v)
            for k, v in q.vector(f"resets({{sel}}[{w_ms}ms] @ {_at(s_ms)}) > 0", in_base, s_ms).items()
        }
        if in_base
        else {}
    )
    add: dict[tuple[int, int], dict[LabelKey, int]] = {
        (s_ms - w_ms, e_ms): {k: r for k, r in resets_all.items() if k not in old_base}
    }
    sub: dict[tuple[int, int], dict[LabelKey, int]] = {(s_ms - w_ms, s_ms): resets_pre}
    if old_base:
        add[(s_ms - l_ms, e_ms)] = {
            k: int(v)
            for k, v in q.vector(f"resets({{sel}}[{p_ms + l_ms}ms] @ {_at(e_ms)})", old_base, e_ms).items()
        }
        sub[(s_ms - l_ms, s_ms)] = {
            k: int(v) for k, v in q.vector(f"resets({{sel}}[{l_ms}ms] @ {_at(s_ms)})", old_base, s_ms).items()
        }
    stats.with_resets += sum(1 for r in add.values() for v in r.values() if v)
    # The last sample in [start − W, end] is the last one in the period: already known.
    plus = _reset_corrections(q, add, stats, known_last={(s_ms - w_ms, e_ms): last})
    minus = _reset_corrections(q, sub, stats)
    for k in scan:
        out[k] = last[k] - base.get(k, old_base.get(k, zero)) + plus.get(k, zero) - minus.get(k, zero)
    return out


def sum_by(deltas: Mapping[LabelKey, Decimal], labels: tuple[str, ...]) -> dict[tuple[str, ...], Decimal]:
    """Sum per-series values by the given labels (missing labels count as '')."""
    out: dict[tuple[str, ...], Decimal] = {}
    for k, v in deltas.items():
        d = dict(k)
        g = tuple(d.get(name, "") for name in labels)
        out[g] = out.get(g, Decimal(0)) + v
    return out
