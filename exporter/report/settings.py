"""The reporter's sections: ``report:`` (with each allocation method's own parameters, from the
method registry), ``prometheus:`` and ``smtp:``."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import ValidationError, ValidationInfo, field_validator, model_validator

from exporter.report import method_registry
from exporter.sections import (
    EMAIL_PATTERN,
    EmailList,
    Section,
    Str,
    as_string,
    checked_string,
    choice,
    context,
    describe,
    fail,
    injected,
    key,
    number,
    plain,
    section,
    translate,
    validate_entry,
    whole,
)

IDLE_HANDLING = ("absorb", "spread", "even")
SMTP_SECURITY = ("none", "starttls", "ssl")


def _method(value: Any) -> str:
    names = method_registry.method_names()
    if value not in names:
        fail(f"expected one of {', '.join(names)}, got {describe(value)}")
    return str(value)


def _realtime(value: Any) -> str:
    names = method_registry.realtime_names()
    if value not in names:
        fail(f"expected one of {', '.join(names)}, got {describe(value)}")
    return str(value)


def _parse_locale(text: str) -> None:
    from babel import Locale, UnknownLocaleError  # only the reporter needs CLDR data

    try:
        Locale.parse(text.replace("-", "_"))
    except UnknownLocaleError as exc:
        raise ValueError(text) from exc


_locale = checked_string(
    _parse_locale, ValueError, lambda text: f"unknown locale {describe(text)} (expected e.g. en_US, de_DE)"
)


@section
class ReportConfig(Section):
    method: Annotated[str, plain(_method)] = "token-share"
    realtime_method: Annotated[str, plain(_realtime)] = "token-share"
    idle_handling: Annotated[str, choice(*IDLE_HANDLING)] = "spread"
    # The methods' own keys (hybrid, tiers, flat_fee ...), read as attributes: cfg.report.tiers
    params: dict[str, Any] = injected(holds_keys=True, default_factory=dict)
    output_dir: Str = "statements"
    finance_recipients: EmailList = ()
    # How statements show numbers and money to people (CLDR locale, e.g. de_DE: 1.234,50 €)
    locale: Annotated[str, plain(_locale)] = "en_US"
    # Who answers questions about a statement (printed on every statement), e.g.
    # "IT Finance, finops@corp.example, +49 30 1234"
    billing_contact: Str = ""

    @classmethod
    def extra_keys(cls) -> list[str]:
        return list(method_registry.params())

    @classmethod
    def gather(cls, data: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        data["params"] = {k: data.pop(k) for k in method_registry.params() if k in data}
        return data

    @field_validator("params", mode="plain")
    @classmethod
    def _params(cls, value: Any, info: ValidationInfo) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, param in method_registry.params().items():
            if name not in value:
                out[name] = param.default()
                continue
            try:
                out[name] = validate_entry(param.kind, value[name], context(info))
            except ValidationError as exc:
                where, message = translate(exc)
                fail(message, f".{name}.{where}".replace(".[", "[").rstrip("."))
        return out

    @model_validator(mode="after")
    def _method_params(self) -> ReportConfig:
        needed = method_registry.methods()[self.method].requires
        if needed and not self.params.get(needed):
            fail(f"required when report.method is {self.method}", needed)
        return self

    def __getattr__(self, name: str) -> Any:
        params = self.__dict__.get("params") or {}
        if name in params:
            return params[name]
        known = method_registry.params() if not name.startswith("_") else {}
        if name in known:
            return known[name].default()
        raise AttributeError(name)


def _http_base(value: Any) -> str:
    text = as_string(value)
    if not re.match(r"^https?://", text):
        fail(f"expected an http(s) URL, got {describe(text)}")
    return text.rstrip("/")


@section
class PrometheusConfig(Section):
    url: Annotated[str, plain(_http_base)] = "http://127.0.0.1:9090"
    timeout_seconds: Annotated[float, number(minimum=0.1)] = 30.0
    # Extra label matchers appended to every reporter query, e.g. '{cluster="prod"}'.
    selector: Str = ""


def _sender(value: Any) -> str:
    text = as_string(value)
    if not EMAIL_PATTERN.match(text):
        fail(f"not an email address: {describe(text)}")
    return text


@section
class SmtpConfig(Section):
    host: Str = "127.0.0.1"
    port: Annotated[int, whole(minimum=1, maximum=65535)] = 0  # 0: the security's usual port
    security: Annotated[str, choice(*SMTP_SECURITY)] = "none"  # none | starttls | ssl
    username: Str | None = None
    password: Str | None = None
    from_address: Annotated[str, plain(_sender)] = key("from", "chargeback@localhost")
    timeout_seconds: Annotated[float, number(minimum=0.1)] = 30.0

    @model_validator(mode="after")
    def _usual_port(self) -> SmtpConfig:
        if not self.port:
            object.__setattr__(self, "port", {"none": 25, "starttls": 587, "ssl": 465}[self.security])
        if not self.username:
            object.__setattr__(self, "username", None)
        if not self.password:
            object.__setattr__(self, "password", None)
        return self
