"""The sections that name things: ``pools``, ``teams``, ``models`` and ``users``.

Later sections refer to these by name; the loader validates them first and hands them on in the
validation context, so a model's ``pool`` or a user's ``team`` is checked against what exists.
"""

from __future__ import annotations

from dataclasses import field
from decimal import Decimal
from typing import Annotated, Any

from pydantic import ValidationInfo, field_validator, model_validator

from exporter.sections import (
    EMAIL_PATTERN,
    HTTP_URL,
    EmailList,
    Money,
    Section,
    Str,
    StrList,
    Whole,
    as_strings,
    check_name,
    choice,
    describe,
    entries,
    fail,
    injected,
    key,
    known_pool,
    known_team,
    money,
    number,
    plain,
    section,
)
from exporter.urls import public_url

USAGE_FALLBACKS = ("estimate", "tokenize")
TOKENIZE_APIS = ("llama.cpp", "llama-cpp-python", "vllm", "tgi")


def _gpu_indexes(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        fail(f"expected a list of GPU indexes, got {describe(value)}")
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, int):
            fail(f"expected a whole number, got {describe(v)}", f"[{i}]")
        if v < 0:
            fail(f"must be at least 0, got {v}", f"[{i}]")
    return tuple(value)


@section
class Pool(Section):
    name: str = injected()
    gpu_hourly_cost: Money
    gpu_count: Whole | None = key("gpus", None)
    gpu_uuids: StrList = ()
    gpu_indexes: Annotated[tuple[int, ...], plain(_gpu_indexes)] = ()
    capacity_tokens_per_second: Annotated[Decimal | None, money(above_zero=True)] = None

    @property
    def gpus(self) -> int:
        """How many GPUs the pool holds according to the config (count, else UUIDs, else indexes)."""
        if self.gpu_count is not None:
            return self.gpu_count
        return len(self.gpu_uuids) or len(self.gpu_indexes)

    @property
    def hourly_cost(self) -> Decimal:
        return self.gpu_hourly_cost * self.gpus


@section
class Team(Section):
    name: str = injected()
    business_unit: Str = ""
    cost_center: Str = ""
    budget: Money | None = None
    billing_contacts: EmailList = ()


@section
class TokenWeights(Section):
    prompt: Money = Decimal(1)
    completion: Money = Decimal(1)


def _http_url(value: Any) -> str:
    if not isinstance(value, str) or not HTTP_URL.match(value):
        fail(f"expected an http(s) URL, got {describe(value)}")
    return value.rstrip("/")


@section
class TokenizeConfig(Section):
    """The model server's tokenize endpoint, for ``usage_fallback: tokenize``."""

    api: Annotated[str, choice(*TOKENIZE_APIS)]  # llama.cpp | llama-cpp-python | vllm | tgi
    # server root; default: the upstream that served the request, minus /v1
    url: Annotated[str | None, plain(_http_url)] = None
    timeout_seconds: Annotated[float, number(maximum=300)] = 5.0

    @field_validator("timeout_seconds")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            fail(f"must be greater than 0, got {value:g}")
        return value


def _upstreams(value: Any) -> tuple[str, ...]:
    out = as_strings(value)
    for i, u in enumerate(out):
        if not HTTP_URL.match(u):
            fail(f"expected an http(s) URL, got {describe(public_url(u))}", f"[{i}]")
    return tuple(u.rstrip("/") for u in out)


@section
class Model(Section):
    also_keys = ("upstream",)  # one upstream, the short form of upstreams

    name: str = injected()
    upstreams: Annotated[tuple[str, ...], plain(_upstreams)] = ()
    pool: Str
    api_key: Str | None = None
    allowed_teams: StrList | None = key("teams", None)
    token_weights: TokenWeights = field(default_factory=TokenWeights)
    # Name the upstream knows the model by, when it differs from the public name.
    upstream_model: Str | None = None
    # How to count a response that carried no usage: the character estimate, or the server's tokenizer.
    usage_fallback: Annotated[str, choice(*USAGE_FALLBACKS)] = "estimate"
    tokenize: TokenizeConfig | None = None

    @classmethod
    def gather(cls, data: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "upstream" in data:
            upstream = data.pop("upstream")
            data.setdefault("upstreams", upstream)
        return data

    @field_validator("pool")
    @classmethod
    def _known_pool(cls, value: str, info: ValidationInfo) -> str:
        return known_pool(value, info)

    @field_validator("allowed_teams")
    @classmethod
    def _known_teams(cls, value: tuple[str, ...] | None, info: ValidationInfo) -> tuple[str, ...] | None:
        for i, t in enumerate(value or ()):
            known_team(t, info, f"[{i}]")
        return value

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Model:
        if info.context is None:
            return self  # built in code (tests, tools): the file's rules do not apply
        if not self.upstreams:
            fail("at least one upstream base URL is required", "upstreams")
        for i, u in enumerate(self.upstreams):
            if self.api_key and "@" in u.split("/", 3)[2]:
                fail(
                    "has user:password@ and the model has an api_key: an upstream gets one credential, "
                    "remove one of them",
                    f"upstreams[{i}]",
                )
        if self.usage_fallback == "tokenize" and self.tokenize is None:
            fail(
                "usage_fallback: tokenize needs a tokenize section naming the server's api "
                f"({', '.join(TOKENIZE_APIS)})",
                "tokenize",
            )
        return self


@section
class User(Section):
    email: str = injected()
    team: Str

    @classmethod
    def shorthand(cls, data: Any) -> Any:
        return {"team": data} if isinstance(data, str) else data

    @field_validator("team")
    @classmethod
    def _known_team(cls, value: str, info: ValidationInfo) -> str:
        return known_team(value, info)


def _email_key(value: Any, at: str) -> None:
    if not isinstance(value, str) or not EMAIL_PATTERN.match(value):
        fail("user keys must be email addresses", at)


# The sections themselves: {name: entry}, each entry told its name.
Pools = Annotated[dict[str, Pool], entries(Pool, check_name)]
Teams = Annotated[dict[str, Team], entries(Team, check_name)]
Models = Annotated[dict[str, Model], entries(Model, check_name)]
Users = Annotated[dict[str, User], entries(User, _email_key)]
