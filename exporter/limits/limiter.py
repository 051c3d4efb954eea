"""The limit decision before a request is forwarded, and the bookkeeping once its usage is known.

``Limiter.check`` is awaited once per request (one store round trip, and none at all when neither
the team nor the user has a limit that blocks); ``Limiter.record`` is called once a request's usage
is known and does not wait for the store. When the store is unreachable the limiter fails open:
requests pass unchecked, ``chargeback_limit_store_up`` drops to 0 (alert LimitStoreUnreachable), and
the store is tried again after ``limits.store.retry_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from exporter.config import Config, Model
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
from exporter.limits.store import Counters, LimitStore, Scope, Usage, open_limit_store
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
    ) -> None:
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
        try:
            result = await self.store.check(month.key, window, scopes)
        except Exception as exc:  # fail-open: an unreachable store must not stop inference
            self._failed(exc)
            self.metrics.unchecked += 1
            return None
        self._ok()
        if team_scope is not None and (team_scope.budget_nano or team_scope.tokens_milli):
            self.metrics.team_counters(team, result.counters[0], month.key)  # read only for these
        if result.blocked_scope < 0:
            return None
        scope = scopes[result.blocked_scope]
        counters = result.counters[result.blocked_scope]
        rejection = self._rejection(scope, result.blocked_kind, counters, month, now)
        self.metrics.reject(team, user, rejection.limit)
        return rejection

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

            def done(counters: Counters | None) -> None:
                if counters is None:
                    self._failed(ConnectionError("recording usage failed"))
                else:
                    self.metrics.team_counters(team, counters, month.key)

            self.store.record(month.key, int(now // 60), usage, done)
        except Exception:  # pragma: no cover - defensive: bookkeeping must not break a response
            log.exception("failed to record usage for limits")

    # ------------------------------------------------------------------ background

    async def start(self) -> None:
        if self.store.backend == "memory":
            with contextlib.suppress(Exception):
                await self.seed_from_ledger()
        await self.refresh()
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="chargeback-limit-gauges")
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
        from exporter.limits.usage import seed_memory_store

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
        for task in (self._task, self._reconcile_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._reconcile_task = None
        await self.store.close()

    # ------------------------------------------------------------------ self-service usage

    async def usage(self, user: str, team: str) -> dict[str, Any]:
        from exporter.limits.usage import usage_document

        now = self.clock()
        month = self.month(now)
        window = int(now // 60)
        try:
            u = await self.store.read(month.key, window, "user", user)
            t = await self.store.read(month.key, window, "team", team)
            self._ok()
            up = True
        except Exception as exc:
            self._failed(exc)
            u, t, up = Counters(), Counters(), False
        return usage_document(self, user, team, u, t, month, up)
