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
from typing import Annotated, Any

from pydantic import ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from exporter.pricing import price_of
from exporter.sections import (
    Section,
    as_string,
    choice,
    context,
    fail,
    key,
    mapping,
    money,
    number,
    plain,
    section,
)

ENFORCE = ("alert", "block")
# limit kinds, in the order a request is checked against them (and the metric's `limit` label)
BUDGET = "budget"
MONTHLY_TOKENS = "monthly_tokens"
REQUESTS_PER_MINUTE = "requests_per_minute"
TOKENS_PER_MINUTE = "tokens_per_minute"
KINDS = (BUDGET, MONTHLY_TOKENS, REQUESTS_PER_MINUTE, TOKENS_PER_MINUTE)

_ENFORCE = choice(*ENFORCE).func
_NUMBER = money(minimum=Decimal(0)).func


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


def _at(check: Any, value: Any, at: str) -> Any:
    """A value check whose message is shown ``at`` a key below the field."""
    try:
        return check(value)
    except PydanticCustomError as exc:
        fail(str((exc.context or {})["message"]), at)


def _unknown(body: dict[str, Any], allowed: list[str], at: str) -> None:
    unknown = sorted(str(k) for k in body if k not in allowed)
    if unknown:
        fail(f"unknown key (expected one of: {', '.join(sorted(allowed))})", f"{at}.{unknown[0]}")


def _limit_set(body: Any, at: str, scope: str, name: str, team_budget: Decimal | None) -> LimitSet:
    b = _at(mapping, body, at)
    _unknown(b, ["enforce", *KINDS], at)
    default_enforce = "alert" if b.get("enforce") is None else _at(_ENFORCE, b["enforce"], f"{at}.enforce")
    limits: dict[str, Limit] = {}
    for kind in KINDS:
        raw = b.get(kind)
        enforce = default_enforce
        p = f"{at}.{kind}"
        if isinstance(raw, dict):
            _unknown(raw, ["limit", "enforce"], p)
            if raw.get("enforce") is not None:
                enforce = _at(_ENFORCE, raw["enforce"], f"{p}.enforce")
            raw = raw.get("limit")
            p = f"{p}.limit"
            if raw is None:
                fail("is required", p)
        if raw is None and kind == BUDGET and team_budget is not None:
            limits[kind] = Limit(kind, team_budget, enforce)
            continue
        if raw is None:
            continue
        value = _at(_NUMBER, raw, p)
        if value <= 0:
            fail(f"must be greater than 0, got {raw}", p)
        if kind != BUDGET and value != value.to_integral_value():
            fail(f"expected a whole number, got {raw}", p)
        limits[kind] = Limit(kind, value, enforce)
    return LimitSet(scope, name, limits)


def _namespace(value: Any) -> str:
    text = as_string(value)
    if not text.replace("_", "").replace("-", "").replace(".", "").replace(":", "").isalnum():
        fail(f'letters, digits and _-.: only, got "{text}"')
    return text


def _redis_url(value: Any) -> str | None:
    text = as_string(value)
    from exporter.limits.resp import parse_redis_url

    try:
        parse_redis_url(text)
    except ValueError as exc:
        fail(str(exc))
    return text or None


_TIMEOUT_MS = number(minimum=1, maximum=10_000).func


@section
class StoreConfig(Section):
    url: Annotated[str | None, plain(_redis_url)] = None  # redis://...; None: in-process
    namespace: Annotated[str, plain(_namespace)] = "chargeback"
    timeout_seconds: float = key("timeout_ms", 0.05)  # the file says milliseconds
    retry_seconds: Annotated[float, number(minimum=0.1)] = 5.0

    @classmethod
    def gather(cls, data: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "timeout_ms" in data:
            data["timeout_ms"] = _at(_TIMEOUT_MS, data["timeout_ms"], "timeout_ms") / 1000
        return data


@section
class LimitsConfig(Section):
    store: StoreConfig = field(default_factory=StoreConfig)
    teams: dict[str, LimitSet] = field(default_factory=dict)
    users: dict[str, LimitSet] = field(default_factory=dict)
    # model → price
    price_per_million: dict[str, Decimal] = key("price_per_million_weighted_tokens", default_factory=dict)
    # poll the recording rules' month-to-date spend this often (0: never); a team whose statement
    # estimate has reached its blocking budget is refused even if the unit-price figure has not
    reconcile_seconds: Annotated[float, number()] = key("reconcile_with_prometheus_seconds", 0.0)

    @classmethod
    def gather(cls, data: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        data.setdefault("teams", {})  # teams with a budget get one even without a limits entry
        return data

    @field_validator("price_per_million", mode="plain")
    @classmethod
    def _prices(cls, value: Any, info: ValidationInfo) -> dict[str, Decimal]:
        models = context(info).get("models")
        out: dict[str, Decimal] = {}
        for model, price in mapping(value).items():
            if models is not None and model not in models:
                fail(f'unknown model "{model}" (configured: {", ".join(models) or "none"})', f".{model}")
            if price is None:
                fail("is required", f".{model}")
            out[str(model)] = _at(_NUMBER, price, f".{model}")
        return out

    @field_validator("teams", mode="plain")
    @classmethod
    def _teams(cls, value: Any, info: ValidationInfo) -> dict[str, LimitSet]:
        if info.context is None:
            return dict(value)  # built in code
        teams = context(info).get("teams", {})
        out: dict[str, LimitSet] = {}
        for name, body in mapping(value).items():
            if name not in teams:
                fail(f'unknown team "{name}"', f".{name}")
            out[name] = _limit_set(body, f".{name}", "team", name, teams[name].budget)
        # A team with a budget and no limits entry keeps today's behaviour: the budget alerts, and
        # the limit store tracks it (remaining-budget gauge, /v1/usage).
        for name, team in teams.items():
            if name not in out and team.budget is not None:
                out[name] = LimitSet("team", name, {BUDGET: Limit(BUDGET, team.budget, "alert")})
        return out

    @field_validator("users", mode="plain")
    @classmethod
    def _users(cls, value: Any, info: ValidationInfo) -> dict[str, LimitSet]:
        if info.context is None:
            return dict(value)
        users = context(info).get("users", {})
        out: dict[str, LimitSet] = {}
        for email, body in mapping(value).items():
            if users and email not in users:
                fail(f'unknown user "{email}" (add it under users: first)', f".{email}")
            out[str(email)] = _limit_set(body, f".{email}", "user", str(email), None)
        return out

    @field_validator("reconcile_seconds")
    @classmethod
    def _reconcile(cls, value: float) -> float:
        if 0 < value < 5:
            fail(f"must be 0 (off) or at least 5, got {value:g}")
        return value

    @model_validator(mode="after")
    def _budgets_have_prices(self, info: ValidationInfo) -> LimitsConfig:
        """A budget that blocks needs a price for every model its team can use (exporter/pricing.py)."""
        ctx = context(info)
        models, pools, users = ctx.get("models", {}), ctx.get("pools", {}), ctx.get("users", {})
        unpriced = [
            name
            for name, m in models.items()
            if price_of(m, pools, self.price_per_million).per_weighted_token is None
        ]
        for sets, scope in ((self.teams, "teams"), (self.users, "users")):
            for name, limit_set in sets.items():
                budget = limit_set.limits.get(BUDGET)
                if budget is None or not budget.blocks:
                    continue
                team = name if scope == "teams" else (users[name].team if name in users else None)
                usable = [
                    m for m in unpriced if models[m].allowed_teams is None or team in models[m].allowed_teams
                ]
                if usable:
                    fail(
                        f"a blocking budget needs a price for model {usable[0]}: set"
                        f" limits.price_per_million_weighted_tokens.{usable[0]} or"
                        f" pools.{models[usable[0]].pool}.capacity_tokens_per_second",
                        f"{scope}.{name}.budget",
                    )
        return self
