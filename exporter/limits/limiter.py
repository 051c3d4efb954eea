"""The limit decision before a request is forwarded, and the bookkeeping once its usage is known.

``Limiter.check`` is awaited once per request: no store round trip when neither the team nor the
user has a limit that blocks, nor when this replica holds a lease for both that is not used up
(exporter/limits/leases.py: the usual case far from a limit, with Redis); one round trip otherwise
(the exact check). ``Limiter.record`` is called once a request's usage is known and does not wait
for the store. When the store is unreachable the limiter fails open:
requests pass unchecked, ``chargeback_limit_store_up`` drops to 0 (alert LimitStoreUnreachable), and
the store is tried again after ``limits.store.retry_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from exporter.config import Config, Model
from exporter.limits.leases import (
    LEASE_IDLE_SECONDS,
    LEASE_MIN_REQUESTS,
    LEASE_SHARE,
    LEASE_SYNC_SECONDS,
    LEASE_TTL_SECONDS,
    RECORD_FLUSH_SECONDS,
    Lease,
)
from exporter.limits.messages import (
    ERROR_CODES,
    BillingMonth,
    budget_message,
    quota_message,
    rate_message,
)
from exporter.limits.metrics import LimitMetrics
from exporter.limits.settings import (
    BUDGET,
    MONTHLY_TOKENS,
    REQUESTS_PER_MINUTE,
    TOKENS_PER_MINUTE,
    LimitSet,
)
from exporter.limits.store import (
    CheckResult,
    Counters,
    LeaseArgs,
    LimitStore,
    RedisStore,
    Scope,
    Usage,
    open_limit_store,
)
from exporter.limits.usage import seed_memory_store, usage_document
from exporter.logs import get_logger
from exporter.pricing import from_nano, price_table, to_nano

log = get_logger(__name__)

GAUGE_REFRESH_SECONDS = 15.0


@dataclass(frozen=True, slots=True)
class Rejection:
    code: str  # budget_exceeded | quota_exceeded | rate_limited
    limit: str  # the limit kind (metric label)
    scope: str
    name: str
    message: str
    retry_after: int | None = None  # seconds, rate limits only


def _scope(limit_set: LimitSet | None, kind: str, name: str, blocking_only: bool) -> Scope:
    if limit_set is None:
        return Scope(kind, name)
    values: dict[str, Decimal] = {
        k: lim.value for k, lim in limit_set.limits.items() if lim.blocks or not blocking_only
    }
    return Scope(
        kind,
        name,
        budget_nano=to_nano(values[BUDGET]) if BUDGET in values else 0,
        tokens_milli=int(values[MONTHLY_TOKENS] * 1000) if MONTHLY_TOKENS in values else 0,
        rpm=int(values.get(REQUESTS_PER_MINUTE, 0)),
        tpm=int(values.get(TOKENS_PER_MINUTE, 0)),
    )


class Limiter:
    def __init__(
        self,
        cfg: Config,
        store: LimitStore | None = None,
        metrics: LimitMetrics | None = None,
        clock: Callable[[], float] = time.time,
        leases: bool = True,
        lease_share: int = LEASE_SHARE,
        lease_min_requests: int = LEASE_MIN_REQUESTS,
        lease_ttl_seconds: int = LEASE_TTL_SECONDS,
        lease_idle_seconds: float = LEASE_IDLE_SECONDS,
    ) -> None:
        """``leases``: admit locally on per-replica leases far from a limit (Redis only; the
        in-process store has no round trip to save). The lease tunables are documented in
        exporter/limits/leases.py and docs/operations.md."""
        assert cfg.limits is not None
        self.cfg = cfg
        self.limits = cfg.limits
        self.store = store or open_limit_store(
            cfg.limits.store.url, cfg.limits.store.namespace, cfg.limits.store.timeout_seconds
        )
        self.metrics = metrics or LimitMetrics(cfg)
        self.clock = clock
        self.prices = price_table(cfg)
        self.tz = cfg.tz
        self._month = BillingMonth.at(self.tz, clock())
        # scopes with blocking limits only, built once per team/user (the config is immutable)
        self._team_scopes: dict[str, Scope | None] = {}
        self._user_scopes: dict[str, Scope | None] = {}
        self._down_until = 0.0
        self._outage_logged = False
        self._task: asyncio.Task[None] | None = None
        self._reconcile_task: asyncio.Task[None] | None = None
        # team → month-to-date spend (nano) from the recording rules, for the month in reconciled_month
        self.statement_spend: dict[str, int] = {}
        self.reconciled_month = ""
        self.leasing = leases and isinstance(self.store, RedisStore)
        self.replica = secrets.token_hex(6)  # names this process's leases in Redis
        self.lease_share = lease_share
        self.lease_min_requests = lease_min_requests
        self.lease_ttl = lease_ttl_seconds
        self.lease_idle = lease_idle_seconds
        # (scope kind, name, "m" | "w") → this replica's lease for the month or the minute window
        self.leases: dict[tuple[str, str, str], Lease] = {}
        self._lease_task: asyncio.Task[None] | None = None
        self._lease_calls: set[asyncio.Future[None]] = set()
        self.local_admissions = 0  # requests admitted on a lease, without a round trip
        # usage of leased scopes, summed per (month, window, team, user, model) and sent every
        # RECORD_FLUSH_SECONDS: one write, one script and one reply for many requests
        self._batch: dict[tuple[str, int, str, str, str], list[int]] = {}
        self._batch_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ helpers

    def month(self, now: float | None = None) -> BillingMonth:
        now = self.clock() if now is None else now
        m = self._month
        if not m.start <= now < m.end:
            m = self._month = BillingMonth.at(self.tz, now)
        return m

    def _blocking_scope(
        self, cache: dict[str, Scope | None], sets: dict[str, LimitSet], kind: str, name: str
    ) -> Scope | None:
        if name in cache:
            return cache[name]
        limit_set = sets.get(name)
        scope = _scope(limit_set, kind, name, True) if limit_set and limit_set.blocking else None
        cache[name] = scope
        return scope

    def _failed(self, exc: BaseException) -> None:
        self.leases.clear()  # a restarted Redis knows nothing of them: start over with exact checks
        self._batch.clear()
        self.metrics.store_up = 0
        self.metrics.store_errors += 1
        self._down_until = self.clock() + self.limits.store.retry_seconds
        if not self._outage_logged:
            log.error(
                "limit store (%s) unreachable, requests pass unchecked (fail-open): %s",
                self.store.backend,
                exc,
            )
            self._outage_logged = True

    def _ok(self) -> None:
        if self._outage_logged:
            log.info("limit store (%s) reachable again; limits are enforced", self.store.backend)
            self._outage_logged = False
        self.metrics.store_up = 1

    # ------------------------------------------------------------------ the request path

    async def check(self, user: str, team: str) -> Rejection | None:
        """None: the request may go on. Refuses only on limits with ``enforce: block``."""
        team_scope = self._blocking_scope(self._team_scopes, self.limits.teams, "team", team)
        user_scope = self._blocking_scope(self._user_scopes, self.limits.users, "user", user)
        if team_scope is None and user_scope is None:
            return None
        now = self.clock()
        if team_scope is not None and team_scope.budget_nano and self.statement_spend:
            refused = self._statement_check(team_scope, user, now)
            if refused is not None:
                return refused
        if now < self._down_until:
            self.metrics.unchecked += 1
            return None
        scopes = [s for s in (team_scope, user_scope) if s is not None]
        month = self.month(now)
        window = int(now // 60)
        if self.leasing and self._admit_on_leases(scopes, month.key, window, now):
            return None
        lease = None
        if self.leasing:
            self.flush_records()  # Redis counts this replica's usage before its leases end
            lease = self._end_leases(scopes, window, now)
        try:
            result = await self.store.check(month.key, window, scopes, lease)
        except Exception as exc:  # fail-open: an unreachable store must not stop inference
            self._failed(exc)
            self.metrics.unchecked += 1
            return None
        self._ok()
        if team_scope is not None and (team_scope.budget_nano or team_scope.tokens_milli):
            self.metrics.team_counters(team, result.counters[0], month.key)  # read only for these
        if result.blocked_scope < 0:
            if lease is not None:
                self._take_grants(scopes, result, month.key, window, now)
            return None
        scope = scopes[result.blocked_scope]
        counters = result.counters[result.blocked_scope]
        if result.reserved:  # what other replicas hold in leases counted as used: say so in the figure
            held = result.reserved[result.blocked_scope]
            counters = Counters(
                counters.spend_nano + held.spend_nano,
                counters.tokens_milli + held.tokens_milli,
                counters.requests,
                counters.window_requests + held.window_requests,
                counters.window_tokens + held.window_tokens,
            )
        rejection = self._rejection(scope, result.blocked_kind, counters, month, now)
        self.metrics.reject(team, user, rejection.limit)
        return rejection

    # ------------------------------------------------------------------ leases

    def _admit_on_leases(self, scopes: list[Scope], month: str, window: int, now: float) -> bool:
        """Admit without a round trip when every limited period of every scope has an open lease."""
        held: list[tuple[Scope, str, Lease]] = []
        leases = self.leases
        for s in scopes:
            if s.budget_nano or s.tokens_milli:
                lease = leases.get((s.kind, s.name, "m"))
                if lease is None or lease.period != month or not lease.open():
                    return False
                held.append((s, "m", lease))
            if s.rpm or s.tpm:
                lease = leases.get((s.kind, s.name, "w"))
                if lease is None or lease.period != window or not lease.open():
                    return False
                held.append((s, "w", lease))
        for s, period, lease in held:
            if period == "w":
                lease.used[0] += 1
            lease.last_use = now
            if not lease.busy and lease.half_used():
                self._lease_call(s, period, lease, now)
        self.local_admissions += 1
        return True

    def _lease_args(self, now: float, reported: tuple[int, ...]) -> LeaseArgs:
        return LeaseArgs(
            self.replica, now, reported, self.lease_ttl, self.lease_share, self.lease_min_requests
        )

    def _end_leases(self, scopes: list[Scope], window: int, now: float) -> LeaseArgs:
        """The exact check ends this replica's leases of these scopes (in the same script); the
        requests admitted on a window lease of this minute are handed over as counted requests."""
        reported = []
        for s in scopes:
            self.leases.pop((s.kind, s.name, "m"), None)
            w = self.leases.pop((s.kind, s.name, "w"), None)
            reported.append(w.unreported() if w is not None and w.period == window else 0)
        return self._lease_args(now, tuple(reported))

    def _take_grants(
        self, scopes: list[Scope], result: CheckResult, month: str, window: int, now: float
    ) -> None:
        for s, (gm, gw) in zip(scopes, result.grants, strict=True):
            if gm is not None:
                self.leases[(s.kind, s.name, "m")] = Lease(month, [gm.a, gm.b], renewed=now, last_use=now)
            if gw is not None:
                self.leases[(s.kind, s.name, "w")] = Lease(window, [gw.a, gw.b], renewed=now, last_use=now)

    def _lease_call(
        self, scope: Scope, period: str, lease: Lease, now: float, give_back: bool = False
    ) -> None:
        """Top up (or give back) one lease off the request path. Sent at once, so that Redis sees it
        in order with this replica's checks and records."""
        assert isinstance(self.store, RedisStore)
        self.flush_records()  # the top-up sees this replica's usage so far
        rep = lease.unreported()
        pending = self.store.lease(lease.period, scope, self._lease_args(now, (rep,)), give_back)
        key = (scope.kind, scope.name, period)
        if pending is None:  # not connected: the next exact check reconnects
            self.leases.pop(key, None)
            return
        lease.reported += rep
        lease.busy = True
        if give_back:
            self.leases.pop(key, None)

        async def settle(pending: Any = pending) -> None:
            try:
                grant = await pending
            except Exception as exc:
                lease.busy = False
                self._failed(exc)
                return
            lease.busy = False
            if self.leases.get(key) is not lease:
                return  # ended or replaced meanwhile
            if grant is None:  # near the limit: from now on this scope takes the exact path
                del self.leases[key]
            else:
                lease.granted[0] += grant.a
                lease.granted[1] += grant.b
                lease.renewed = now

        task = asyncio.ensure_future(settle())
        self._lease_calls.add(task)
        task.add_done_callback(self._lease_calls.discard)

    def _scope_of(self, kind: str, name: str) -> Scope | None:
        return (self._team_scopes if kind == "team" else self._user_scopes).get(name)

    def _use_leases(self, team: str, user: str, month: str, window: int, u: Usage, now: float) -> None:
        """A recorded request's usage counts against this replica's leases too."""
        for kind, name in (("team", team), ("user", user)):
            lease = self.leases.get((kind, name, "m"))
            if lease is not None and lease.period == month:
                lease.used[0] += u.spend_nano
                lease.used[1] += u.tokens_milli
                if not lease.busy and lease.half_used():
                    scope = self._scope_of(kind, name)
                    if scope is not None:
                        self._lease_call(scope, "m", lease, now)
            lease = self.leases.get((kind, name, "w"))
            if lease is not None and lease.period == window:
                lease.used[1] += u.raw_tokens
                if not lease.busy and lease.half_used():
                    scope = self._scope_of(kind, name)
                    if scope is not None:
                        self._lease_call(scope, "w", lease, now)

    def tend_leases(self) -> None:
        """Renew leases in use, give back idle ones, forget those of a past month or minute."""
        now = self.clock()
        month, window = self.month(now).key, int(now // 60)
        for (kind, name, period), lease in list(self.leases.items()):
            if lease.busy:
                continue
            if lease.period != (month if period == "m" else window):
                del self.leases[(kind, name, period)]
                continue
            scope = self._scope_of(kind, name)
            if scope is None:
                continue
            if now - lease.last_use >= self.lease_idle:
                self._lease_call(scope, period, lease, now, give_back=True)
            elif now - lease.renewed >= self.lease_ttl / 3:
                self._lease_call(scope, period, lease, now)

    async def give_back_leases(self) -> None:
        """Return every lease (at shutdown), so that other replicas can use what is left."""
        now = self.clock()
        for (kind, name, period), lease in list(self.leases.items()):
            scope = self._scope_of(kind, name)
            if scope is not None:
                self._lease_call(scope, period, lease, now, give_back=True)
        self.leases.clear()
        if self._lease_calls:
            await asyncio.wait(list(self._lease_calls), timeout=1.0)

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(LEASE_SYNC_SECONDS)
            try:
                self.tend_leases()
            except Exception:  # pragma: no cover - defensive: the loop must keep running
                log.exception("tending limit leases failed")

    def _statement_check(self, scope: Scope, user: str, now: float) -> Rejection | None:
        """The team's month-to-date spend from the recording rules has reached its blocking budget."""
        month = self.month(now)
        spent = self.statement_spend.get(scope.name, 0)
        if month.key != self.reconciled_month or spent < scope.budget_nano:
            return None
        rejection = self._rejection(scope, BUDGET, Counters(spend_nano=spent), month, now)
        self.metrics.reject(scope.name, user, BUDGET)
        return rejection

    def _rejection(self, scope: Scope, kind: str, c: Counters, month: BillingMonth, now: float) -> Rejection:
        code = ERROR_CODES[kind]
        if kind == BUDGET:
            msg = budget_message(
                scope.kind,
                scope.name,
                from_nano(c.spend_nano),
                from_nano(scope.budget_nano),
                self.cfg.currency,
                self.cfg.currency_minor_units,
                month,
            )
            return Rejection(code, kind, scope.kind, scope.name, msg)
        if kind == MONTHLY_TOKENS:
            msg = quota_message(
                scope.kind,
                scope.name,
                Decimal(c.tokens_milli) / 1000,
                Decimal(scope.tokens_milli) / 1000,
                month,
            )
            return Rejection(code, kind, scope.kind, scope.name, msg)
        retry = max(1, math.ceil((math.floor(now / 60) + 1) * 60 - now))
        used, limit = (
            (c.window_requests, scope.rpm) if kind == REQUESTS_PER_MINUTE else (c.window_tokens, scope.tpm)
        )
        msg = rate_message(scope.kind, scope.name, kind, used, limit, retry)
        return Rejection(code, kind, scope.kind, scope.name, msg, retry)

    def record(self, user: str, team: str, model: Model, prompt: int, completion: int) -> None:
        """Count a forwarded request's usage (not waited for; never raises)."""
        try:
            price = self.prices[model.name]
            weighted = price.weighted_tokens(prompt, completion)
            now = self.clock()
            if now < self._down_until:
                return  # the outage's usage is in the ledger, not in the limit counters
            month = self.month(now)
            usage = Usage(
                team,
                user,
                model.name,
                to_nano(price.spend(prompt, completion)),
                int(weighted * 1000),
                prompt + completion,
                prompt,
                completion,
            )

            window = int(now // 60)
            if self.leases:
                self._use_leases(team, user, month.key, window, usage, now)
                if self._covered(team, user, month.key, window):
                    self._add_to_batch(month.key, window, usage)
                    return
            self._send_record(month.key, window, usage)
        except Exception:  # pragma: no cover - defensive: bookkeeping must not break a response
            log.exception("failed to record usage for limits")

    def _send_record(self, month: str, window: int, usage: Usage) -> None:
        def done(counters: Counters | None) -> None:
            if counters is None:
                self._failed(ConnectionError("recording usage failed"))
            else:
                self.metrics.team_counters(usage.team, counters, month)

        self.store.record(month, window, usage, done, self.replica if self.leasing else "")

    def _covered(self, team: str, user: str, month: str, window: int) -> bool:
        """Every blocking limit of the team and the user is covered by a lease of this replica: the
        usage is already reserved in Redis, so sending it a little later changes nobody's decision."""
        for kind, name in (("team", team), ("user", user)):
            scope = self._scope_of(kind, name)
            if scope is None:
                continue
            if (scope.budget_nano or scope.tokens_milli) and (
                (lease := self.leases.get((kind, name, "m"))) is None or lease.period != month
            ):
                return False
            if (scope.rpm or scope.tpm) and (
                (lease := self.leases.get((kind, name, "w"))) is None or lease.period != window
            ):
                return False
        return True

    def _add_to_batch(self, month: str, window: int, u: Usage) -> None:
        key = (month, window, u.team, u.user, u.model)
        acc = self._batch.get(key)
        if acc is None:
            self._batch[key] = [u.spend_nano, u.tokens_milli, u.raw_tokens, u.prompt, u.completion, 1]
        else:
            acc[0] += u.spend_nano
            acc[1] += u.tokens_milli
            acc[2] += u.raw_tokens
            acc[3] += u.prompt
            acc[4] += u.completion
            acc[5] += 1
        if self._batch_timer is None:
            self._batch_timer = asyncio.get_running_loop().call_later(
                RECORD_FLUSH_SECONDS, self.flush_records
            )

    def flush_records(self) -> None:
        """Send the batched usage now (in order with whatever this replica sends next)."""
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        batch, self._batch = self._batch, {}
        for (month, window, team, user, model), (spend, tokens, raw, prompt, completion, n) in batch.items():
            self._send_record(
                month, window, Usage(team, user, model, spend, tokens, raw, prompt, completion, n)
            )

    # ------------------------------------------------------------------ background

    async def start(self) -> None:
        if self.store.backend == "memory":
            with contextlib.suppress(Exception):
                await self.seed_from_ledger()
        await self.refresh()
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="chargeback-limit-gauges")
        if self.leasing and self._lease_task is None:
            self._lease_task = asyncio.create_task(self._lease_loop(), name="chargeback-limit-leases")
        if self.limits.reconcile_seconds and self._reconcile_task is None:
            await self.reconcile()  # before the first request: a team already over budget stays blocked
            self._reconcile_task = asyncio.create_task(
                self._reconcile_loop(), name="chargeback-limit-reconcile"
            )

    async def reconcile(self) -> bool:
        """Poll ``team:chargeback_spend:month_to_date`` from Prometheus (False when that failed)."""
        from exporter.report.promql import PromClient, PromQLError

        prom = self.cfg.prometheus
        month = self.month()
        now = self.clock()
        client = PromClient(prom.url, min(prom.timeout_seconds, 10.0), prom.selector)
        try:
            got = await asyncio.to_thread(
                client.vector, client.selector("team:chargeback_spend:month_to_date"), now
            )
        except PromQLError as exc:
            log.warning("limit reconciliation: %s", exc)
            return False
        finally:
            client.session.close()
        spend: dict[str, int] = {}
        for labels, value in got.items():
            team = dict(labels).get("team")
            if team:
                spend[team] = max(spend.get(team, 0), to_nano(value))
        self.statement_spend = spend
        self.reconciled_month = month.key
        return True

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.limits.reconcile_seconds)
            await self.reconcile()

    async def seed_from_ledger(self) -> None:
        """In-process counters start from the ledger's month to date (a restart forgets nothing
        that was written)."""
        await asyncio.to_thread(seed_memory_store, self, self.cfg.ledger.url)

    async def refresh(self) -> None:
        """Re-read every limited team's month counters (gauges) and probe the store after a failure."""
        month = self.month()
        teams = list(self.limits.teams)
        try:
            got = await self.store.read_teams(month.key, teams) if teams else None
            if got is None:
                await self.store.ping()
        except Exception as exc:
            self._failed(exc)
            return
        self._down_until = 0.0
        self._ok()
        for team, counters in (got or {}).items():
            self.metrics.team_counters(team, counters, month.key)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(min(GAUGE_REFRESH_SECONDS, self.limits.store.retry_seconds))
            await self.refresh()

    async def close(self) -> None:
        for task in (self._task, self._reconcile_task, self._lease_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._reconcile_task = self._lease_task = None
        with contextlib.suppress(Exception):
            self.flush_records()
        if self.leases:
            with contextlib.suppress(Exception):
                await self.give_back_leases()
        await self.store.close()

    # ------------------------------------------------------------------ self-service usage

    async def usage(self, user: str, team: str) -> dict[str, Any]:
        now = self.clock()
        month = self.month(now)
        window = int(now // 60)
        self.flush_records()
        try:
            u = await self.store.read(month.key, window, "user", user)
            t = await self.store.read(month.key, window, "team", team)
            self._ok()
            up = True
            # requests this replica admitted on its window leases and has not yet reported (other
            # replicas report theirs with each top-up, at the latest when the lease goes back)
            for kind, name, c in (("user", user, u), ("team", team, t)):
                lease = self.leases.get((kind, name, "w"))
                if lease is not None and lease.period == window:
                    c.window_requests += lease.unreported()
        except Exception as exc:
            self._failed(exc)
            u, t, up = Counters(), Counters(), False
        return usage_document(self, user, team, u, t, month, up)
