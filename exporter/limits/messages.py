"""What a refused client reads: OpenAI-style error codes and messages a person understands."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from exporter.billing_calendar import month_bounds
from exporter.limits.settings import BUDGET, MONTHLY_TOKENS, REQUESTS_PER_MINUTE

ERROR_CODES = {
    BUDGET: "budget_exceeded",
    MONTHLY_TOKENS: "quota_exceeded",
    REQUESTS_PER_MINUTE: "rate_limited",
    "tokens_per_minute": "rate_limited",
}


@dataclass(frozen=True)
class BillingMonth:
    """The billing month containing an instant, in the config's time zone."""

    key: str  # "2026-12": part of every store key
    start: float  # Unix seconds
    end: float  # exclusive
    label: str  # "December 2026"
    resets_on: str  # "2027-01-01" (local date of the next month's first day)
    timezone: str

    @classmethod
    def at(cls, tz: ZoneInfo, now: float) -> BillingMonth:
        start, end = month_bounds(tz, now)
        return cls(
            key=f"{start.year:04d}-{start.month:02d}",
            start=start.timestamp(),
            end=end.timestamp(),
            label=start.strftime("%B %Y") if start.year > 0 else "",
            resets_on=end.date().isoformat(),
            timezone=str(tz.key),
        )

    def resets_at_iso(self) -> str:
        return datetime.fromtimestamp(self.end, ZoneInfo(self.timezone)).isoformat()


def money(amount: Decimal, minor_units: int) -> str:
    """5012.3349 → '5,012.33' (the currency's minor units, thousands separated)."""
    q = amount.quantize(Decimal(1).scaleb(-minor_units))
    return f"{q:,.{minor_units}f}"


def tokens(value: Decimal) -> str:
    """1000200 → '1,000,200'; fractional weighted tokens keep up to three decimals."""
    if value == value.to_integral_value():
        return f"{int(value):,}"
    return f"{value.quantize(Decimal('0.001')):,f}".rstrip("0").rstrip(".")


def who(scope: str, name: str) -> tuple[str, str]:
    """('team research', 'its') or ('user alice@corp.example', 'their')."""
    return (f"team {name}", "its") if scope == "team" else (f"user {name}", "their")


def budget_message(
    scope: str, name: str, used: Decimal, limit: Decimal, currency: str, minor: int, month: BillingMonth
) -> str:
    subject, poss = who(scope, name)
    return (
        f"{subject} has used {money(used, minor)} of {poss} {money(limit, minor)} {currency} budget for"
        f" {month.label} ({month.timezone}); it resets on {month.resets_on}"
    )


def quota_message(scope: str, name: str, used: Decimal, limit: Decimal, month: BillingMonth) -> str:
    subject, poss = who(scope, name)
    return (
        f"{subject} has used {tokens(used)} of {poss} {tokens(limit)} weighted-token quota for"
        f" {month.label} ({month.timezone}); it resets on {month.resets_on}"
    )


def rate_message(scope: str, name: str, kind: str, used: int, limit: int, retry_after: int) -> str:
    subject, poss = who(scope, name)
    if kind == REQUESTS_PER_MINUTE:
        what = f"has reached {poss} limit of {limit:,} requests per minute"
    else:
        what = f"has used {used:,} of {poss} {limit:,} tokens per minute"
    return f"{subject} {what}; retry in {retry_after} s"
