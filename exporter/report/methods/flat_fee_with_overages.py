"""flat-fee-with-overages: a monthly fee per team including some weighted tokens, a price per million
beyond them (``report.flat_fee``: a default plan and plans per team)."""

from __future__ import annotations

from dataclasses import field
from decimal import Decimal
from typing import Any

from pydantic import ValidationInfo, field_validator

from exporter.config import Config
from exporter.report.inputs import UNASSIGNED, Inputs
from exporter.report.method_registry import Param, register
from exporter.report.methods import FEE, MILLION, Allocation, Book, charge_team, rate_card_result, team_lines
from exporter.sections import Money, Section, Whole, known_team, mapping, section


@section
class FlatFee(Section):
    monthly_fee: Money
    included_tokens: Whole = 0
    overage_per_million: Money


@section
class FlatFeeConfig(Section):
    default: FlatFee | None = None
    teams: dict[str, FlatFee] = field(default_factory=dict)

    @field_validator("teams", mode="before")
    @classmethod
    def _known_teams(cls, value: Any, info: ValidationInfo) -> Any:
        for team in mapping(value):
            known_team(team, info, f".{team}")
        return mapping(value)

    def __bool__(self) -> bool:
        return self.default is not None or bool(self.teams)


def flat_fee_plan(cfg: Config, team: str) -> FlatFee | None:
    return cfg.report.flat_fee.teams.get(team, cfg.report.flat_fee.default)


def overage_charge(tokens: Decimal, plan: FlatFee) -> Decimal:
    """The price of a team's weighted tokens beyond those its monthly fee includes."""
    return max(Decimal(0), tokens - plan.included_tokens) * plan.overage_per_million / MILLION


@register(
    "flat-fee-with-overages",
    order=6,
    params={"flat_fee": Param(FlatFeeConfig, FlatFeeConfig)},
    requires="flat_fee",
)
def flat_fee_with_overages(inputs: Inputs, cfg: Config) -> Allocation:
    book = Book(inputs)
    notes: list[str] = []
    by_team = team_lines(inputs)
    # Configured teams pay their fee every month; unassigned usage is billed on the default plan.
    teams = sorted(set(cfg.teams) | ({UNASSIGNED} if UNASSIGNED in by_team else set()))
    plans: dict[str, object] = {}
    for team in teams:
        plan = flat_fee_plan(cfg, team)
        lines = by_team.get(team, [])
        if plan is None:
            if lines:
                notes.append(
                    f"team {team!r} has usage but no flat-fee plan (no report.flat_fee.default): not charged"
                )
            continue
        plans[team] = {
            "monthly_fee": str(plan.monthly_fee),
            "included_tokens": plan.included_tokens,
            "overage_per_million": str(plan.overage_per_million),
        }
        if plan.monthly_fee:
            book.add_extra(
                team,
                FEE,
                "",
                plan.monthly_fee,
                f"monthly fee, includes {plan.included_tokens:,} weighted tokens",
            )
        charge_team(book, lines, lambda tokens, plan=plan: overage_charge(tokens, plan))
    return rate_card_result(book, inputs, "flat-fee-with-overages", {"plans": plans}, notes)
