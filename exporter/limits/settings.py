"""The ``limits:`` section of the config file.

limits:
  store:
    url: redis://127.0.0.1:6379/0     # absent: in-process counters (one replica)
    namespace: chargeback             # prefix of every Redis key
    timeout_ms: 50                    # a slower answer counts as unreachable (fail-open)
    retry_seconds: 5                  # after a failure, requests pass unchecked this long
  price_per_million_weighted_tokens:  # the unit price money limits block on (default: proxy price)
    llama-70b: 4.50
  reconcile_with_prometheus_seconds: 60   # also block on team:chargeback_spend:month_to_date (0: off)
  teams:
    research:
      enforce: block                  # alert (default: today's behaviour) | block
      budget: 5000                    # currency per billing month (default: teams.research.budget)
      monthly_tokens: 2000000000      # weighted tokens per billing month
      requests_per_minute: 600
      tokens_per_minute: {limit: 200000, enforce: alert}   # one limit's own enforce
  users:
    alice@corp.example: {requests_per_minute: 60, enforce: block}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exporter.config import Team, _Reader

ENFORCE = ("alert", "block")
# limit kinds, in the order a request is checked against them (and the metric's `limit` label)
BUDGET = "budget"
MONTHLY_TOKENS = "monthly_tokens"
REQUESTS_PER_MINUTE = "requests_per_minute"
TOKENS_PER_MINUTE = "tokens_per_minute"
KINDS = (BUDGET, MONTHLY_TOKENS, REQUESTS_PER_MINUTE, TOKENS_PER_MINUTE)


@dataclass(frozen=True)
class Limit:
    kind: str
    value: Decimal  # currency for budget, tokens or requests otherwise
    enforce: str = "alert"

    @property
    def blocks(self) -> bool:
        return self.enforce == "block"


@dataclass(frozen=True)
class LimitSet:
    """The limits of one team or one user."""

    scope: str  # "team" | "user"
    name: str
    limits: dict[str, Limit] = field(default_factory=dict)

    @property
    def blocking(self) -> tuple[Limit, ...]:
        return tuple(lim for lim in self.limits.values() if lim.blocks)


@dataclass(frozen=True)
class StoreConfig:
    url: str | None = None  # redis://...; None: in-process
    namespace: str = "chargeback"
    timeout_seconds: float = 0.05
    retry_seconds: float = 5.0


@dataclass(frozen=True)
class LimitsConfig:
    store: StoreConfig = field(default_factory=StoreConfig)
    teams: dict[str, LimitSet] = field(default_factory=dict)
    users: dict[str, LimitSet] = field(default_factory=dict)
    price_per_million: dict[str, Decimal] = field(default_factory=dict)  # model → price
    # poll the recording rules' month-to-date spend this often (0: never); a team whose statement
    # estimate has reached its blocking budget is refused even if the unit-price figure has not
    reconcile_seconds: float = 0.0


def _limit_set(
    r: _Reader, body: Any, path: str, scope: str, name: str, team_budget: Decimal | None
) -> LimitSet:
    b = r.mapping(body, path, {"enforce", *KINDS})
    default_enforce = r.choice(b.get("enforce"), f"{path}.enforce", ENFORCE, "alert")
    limits: dict[str, Limit] = {}
    for kind in KINDS:
        raw = b.get(kind)
        enforce = default_enforce
        p = f"{path}.{kind}"
        if isinstance(raw, dict):
            lb = r.mapping(raw, p, {"limit", "enforce"})
            enforce = r.choice(lb.get("enforce"), f"{p}.enforce", ENFORCE, default_enforce)
            raw = lb.get("limit")
            p = f"{p}.limit"
            if raw is None:
                raise r.error(p, "is required")
        if raw is None and kind == BUDGET and team_budget is not None:
            limits[kind] = Limit(kind, team_budget, enforce)
            continue
        value = r.decimal(raw, p)
        if value is None:
            continue
        if value <= 0:
            raise r.error(p, f"must be greater than 0, got {raw}")
        if kind != BUDGET and value != value.to_integral_value():
            raise r.error(p, f"expected a whole number, got {raw}")
        limits[kind] = Limit(kind, value, enforce)
    return LimitSet(scope, name, limits)


def parse_limits(
    r: _Reader, value: Any, teams: dict[str, Team], users: dict[str, Any], models: dict[str, Any]
) -> LimitsConfig | None:
    if value is None:
        return None
    b = r.mapping(
        value,
        "limits",
        {"store", "teams", "users", "price_per_million_weighted_tokens", "reconcile_with_prometheus_seconds"},
    )
    sb = r.mapping(b.get("store"), "limits.store", {"url", "namespace", "timeout_ms", "retry_seconds"})
    url = r.string(sb.get("url"), "limits.store.url")
    if url is not None:
        from exporter.limits.resp import parse_redis_url

        try:
            parse_redis_url(url)
        except ValueError as exc:
            raise r.error("limits.store.url", str(exc)) from None
    namespace = r.string(sb.get("namespace"), "limits.store.namespace", "chargeback") or "chargeback"
    if not namespace.replace("_", "").replace("-", "").replace(".", "").replace(":", "").isalnum():
        raise r.error("limits.store.namespace", f'letters, digits and _-.: only, got "{namespace}"')
    timeout_ms = r.number(sb.get("timeout_ms"), "limits.store.timeout_ms", 50.0, minimum=1, maximum=10_000)
    store = StoreConfig(
        url=url or None,
        namespace=namespace,
        timeout_seconds=timeout_ms / 1000,
        retry_seconds=r.number(sb.get("retry_seconds"), "limits.store.retry_seconds", 5.0, minimum=0.1),
    )
    prices: dict[str, Decimal] = {}
    for model, price in r.mapping(
        b.get("price_per_million_weighted_tokens"), "limits.price_per_million_weighted_tokens"
    ).items():
        p = f"limits.price_per_million_weighted_tokens.{model}"
        if model not in models:
            raise r.error(p, f'unknown model "{model}" (configured: {", ".join(models) or "none"})')
        prices[str(model)] = r.decimal(price, p, required=True) or Decimal(0)
    team_limits: dict[str, LimitSet] = {}
    for name, body in r.mapping(b.get("teams"), "limits.teams").items():
        if name not in teams:
            raise r.error(f"limits.teams.{name}", f'unknown team "{name}"')
        team_limits[name] = _limit_set(r, body, f"limits.teams.{name}", "team", name, teams[name].budget)
    # A team with a budget and no limits entry keeps today's behaviour: the budget alerts, and the
    # limit store tracks it (remaining-budget gauge, /v1/usage).
    for name, team in teams.items():
        if name not in team_limits and team.budget is not None:
            team_limits[name] = LimitSet("team", name, {BUDGET: Limit(BUDGET, team.budget, "alert")})
    user_limits: dict[str, LimitSet] = {}
    for email, body in r.mapping(b.get("users"), "limits.users").items():
        p = f"limits.users.{email}"
        if users and email not in users:
            raise r.error(p, f'unknown user "{email}" (add it under users: first)')
        user_limits[str(email)] = _limit_set(r, body, p, "user", str(email), None)
    reconcile = r.number(
        b.get("reconcile_with_prometheus_seconds"), "limits.reconcile_with_prometheus_seconds", 0.0
    )
    if 0 < reconcile < 5:
        raise r.error(
            "limits.reconcile_with_prometheus_seconds", f"must be 0 (off) or at least 5, got {reconcile:g}"
        )
    return LimitsConfig(
        store=store,
        teams=team_limits,
        users=user_limits,
        price_per_million=prices,
        reconcile_seconds=reconcile,
    )
