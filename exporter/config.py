"""The one configuration file (YAML) shared by the proxy, the GPU exporter and the reporter.

Every value is validated at load time; an error names the file, the key path and what is wrong:

    chargeback.yaml: teams.research.budget: expected a number, got "lots"

``${NAME}`` (or ``${NAME:-default}``) anywhere in a string is replaced by the environment variable,
so secrets never have to be written into the file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

if TYPE_CHECKING:
    from exporter.limits.settings import LimitsConfig

ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]*$")
EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+$")

METHODS = (
    "proxy-price-per-token",
    "token-share",
    "time-based",
    "hybrid",
    "tiered",
    "flat-fee-with-overages",
)
REALTIME_METHODS = ("token-share", "proxy-price-per-token")
# proxy.metrics_labels: "user" labels the usage counters {user, team, model}; "team" leaves the user
# label out ({team, model}: series bounded by teams × models), per-user figures then come from the ledger.
METRICS_LABELS = ("user", "team")
IDLE_HANDLING = ("absorb", "spread", "even")
HYBRID_COMPONENTS = ("token_share", "time_share", "fixed_share", "equal_split")

DEFAULT_PROXY_LISTEN = "0.0.0.0:8080"
DEFAULT_PROXY_METRICS_LISTEN = "0.0.0.0:9841"
DEFAULT_GPU_EXPORTER_LISTEN = "0.0.0.0:9842"


class ConfigError(ValueError):
    """A configuration problem, with the file and key path in its message."""


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class TokenWeights:
    prompt: Decimal = Decimal(1)
    completion: Decimal = Decimal(1)


@dataclass(frozen=True)
class Pool:
    name: str
    gpu_hourly_cost: Decimal
    gpu_count: int | None = None
    gpu_uuids: tuple[str, ...] = ()
    gpu_indexes: tuple[int, ...] = ()
    capacity_tokens_per_second: Decimal | None = None

    @property
    def gpus(self) -> int:
        """How many GPUs the pool holds according to the config (count, else UUIDs, else indexes)."""
        if self.gpu_count is not None:
            return self.gpu_count
        return len(self.gpu_uuids) or len(self.gpu_indexes)

    @property
    def hourly_cost(self) -> Decimal:
        return self.gpu_hourly_cost * self.gpus


@dataclass(frozen=True)
class TokenizeConfig:
    """The model server's tokenize endpoint, for ``usage_fallback: tokenize``."""

    api: str  # llama.cpp | llama-cpp-python | vllm | tgi
    url: str | None = None  # server root; default: the upstream that served the request, minus /v1
    timeout_seconds: float = 5.0


USAGE_FALLBACKS = ("estimate", "tokenize")
TOKENIZE_APIS = ("llama.cpp", "llama-cpp-python", "vllm", "tgi")


@dataclass(frozen=True)
class Model:
    name: str
    upstreams: tuple[str, ...]
    pool: str
    api_key: str | None = None
    allowed_teams: tuple[str, ...] | None = None
    token_weights: TokenWeights = field(default_factory=TokenWeights)
    # Name the upstream knows the model by, when it differs from the public name.
    upstream_model: str | None = None
    # How to count a response that carried no usage: the character estimate, or the server's tokenizer.
    usage_fallback: str = "estimate"
    tokenize: TokenizeConfig | None = None


@dataclass(frozen=True)
class Team:
    name: str
    business_unit: str = ""
    cost_center: str = ""
    budget: Decimal | None = None
    billing_contacts: tuple[str, ...] = ()


@dataclass(frozen=True)
class User:
    email: str
    team: str


@dataclass(frozen=True)
class LedgerConfig:
    url: str = "sqlite:///chargeback-ledger.db"
    batch_size: int = 500
    flush_interval_seconds: float = 0.5
    max_queue_rows: int = 100_000
    spool_dir: str = "chargeback-spool"
    retry_seconds: float = 2.0
    # Group commit: the journal (in spool_dir) is fsync'ed this often; a power cut loses at most this.
    journal_fsync_seconds: float = 0.01
    # Months of raw rows `chargeback ledger maintain` keeps (current month included); None: all.
    retention_months: int | None = None


@dataclass(frozen=True)
class ProxyConfig:
    listen: tuple[str, ...] = (DEFAULT_PROXY_LISTEN,)
    metrics_listen: str = DEFAULT_PROXY_METRICS_LISTEN
    max_body_bytes: int = 10 * 1024 * 1024
    connect_timeout_seconds: float = 10.0
    upstream_timeout_seconds: float = 600.0
    shutdown_grace_seconds: float = 30.0
    key_refresh_seconds: float = 2.0
    metrics_labels: str = "user"  # one of METRICS_LABELS


@dataclass(frozen=True)
class GpuExporterConfig:
    listen: str = DEFAULT_GPU_EXPORTER_LISTEN
    idle_threshold_ratio: float = 0.05
    default_pool: str | None = None
    pool_by_uuid: dict[str, str] = field(default_factory=dict)
    pool_by_index: dict[int, str] = field(default_factory=dict)
    nvml_call_timeout_seconds: float = 2.0


@dataclass(frozen=True)
class PrometheusConfig:
    url: str = "http://127.0.0.1:9090"
    timeout_seconds: float = 30.0
    # Extra label matchers appended to every reporter query, e.g. '{cluster="prod"}'.
    selector: str = ""


@dataclass(frozen=True)
class Tier:
    up_to_tokens: int | None  # None: unbounded (last tier)
    price_per_million: Decimal


@dataclass(frozen=True)
class FlatFee:
    monthly_fee: Decimal
    included_tokens: int
    overage_per_million: Decimal


@dataclass(frozen=True)
class HybridConfig:
    weights: dict[str, Decimal] = field(default_factory=lambda: {"token_share": Decimal(1)})
    fixed_shares: dict[str, Decimal] = field(default_factory=dict)


@dataclass(frozen=True)
class ReportConfig:
    method: str = "token-share"
    realtime_method: str = "token-share"
    idle_handling: str = "spread"
    output_dir: str = "statements"
    hybrid: HybridConfig = field(default_factory=HybridConfig)
    tiers: tuple[Tier, ...] = ()
    flat_fee_default: FlatFee | None = None
    flat_fee_teams: dict[str, FlatFee] = field(default_factory=dict)
    finance_recipients: tuple[str, ...] = ()
    # How statements show numbers and money to people (CLDR locale, e.g. de_DE: 1.234,50 €)
    locale: str = "en_US"
    # Who answers questions about a statement (printed on every statement), e.g.
    # "IT Finance, finops@corp.example, +49 30 1234"
    billing_contact: str = ""


@dataclass(frozen=True)
class SmtpConfig:
    host: str = "127.0.0.1"
    port: int = 25
    security: str = "none"  # none | starttls | ssl
    username: str | None = None
    password: str | None = None
    from_address: str = "chargeback@localhost"
    timeout_seconds: float = 30.0


@dataclass(frozen=True)
class Config:
    path: str
    currency: str = "EUR"
    currency_minor_units: int = 2
    timezone: str = "UTC"
    pools: dict[str, Pool] = field(default_factory=dict)
    models: dict[str, Model] = field(default_factory=dict)
    teams: dict[str, Team] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=dict)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    gpu_exporter: GpuExporterConfig = field(default_factory=GpuExporterConfig)
    prometheus: PrometheusConfig = field(default_factory=PrometheusConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    limits: LimitsConfig | None = None  # None: no limits section (alerts only, nothing counted)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def team_of(self, user_email: str) -> str | None:
        user = self.users.get(user_email)
        return user.team if user else None


# --------------------------------------------------------------------------- loading


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


class _Reader:
    """Reads typed values out of the parsed YAML, raising ConfigError with file and key path."""

    def __init__(self, filename: str) -> None:
        self.filename = filename

    def error(self, path: str, message: str) -> ConfigError:
        where = f"{self.filename}: {path}: " if path else f"{self.filename}: "
        return ConfigError(where + message)

    def mapping(self, value: Any, path: str, allowed: set[str] | None = None) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(path, f"expected a mapping, got {_describe(value)}")
        if allowed is not None:
            unknown = sorted(str(k) for k in value if k not in allowed)
            if unknown:
                raise self.error(
                    f"{path}.{unknown[0]}" if path else unknown[0],
                    f"unknown key (expected one of: {', '.join(sorted(allowed))})",
                )
        return value

    def list_of_str(self, value: Any, path: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.error(path, f"expected a list of strings, got {_describe(value)}")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise self.error(f"{path}[{i}]", f"expected a non-empty string, got {_describe(item)}")
            out.append(item)
        return tuple(out)

    def string(self, value: Any, path: str, default: str | None = None, required: bool = False) -> str | None:
        if value is None:
            if required:
                raise self.error(path, "is required")
            return default
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.error(path, f"expected a string, got {_describe(value)}")
        return str(value)

    def decimal(
        self,
        value: Any,
        path: str,
        default: Decimal | None = None,
        required: bool = False,
        minimum: Decimal | None = Decimal(0),
    ) -> Decimal | None:
        if value is None:
            if required:
                raise self.error(path, "is required")
            return default
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise self.error(path, f"expected a number, got {_describe(value)}")
        try:
            # str() first: a YAML float like 2.5 must become Decimal("2.5"), not its binary expansion.
            number = Decimal(str(value).strip())
        except InvalidOperation:
            raise self.error(path, f"expected a number, got {_describe(value)}") from None
        if not number.is_finite():
            raise self.error(path, f"expected a finite number, got {_describe(value)}")
        if minimum is not None and number < minimum:
            raise self.error(path, f"must be at least {minimum}, got {value}")
        return number

    def number(
        self, value: Any, path: str, default: float, minimum: float = 0.0, maximum: float | None = None
    ) -> float:
        dec = self.decimal(value, path, None)
        if dec is None:
            return default
        result = float(dec)
        if result < minimum:
            raise self.error(path, f"must be at least {minimum:g}, got {value}")
        if maximum is not None and result > maximum:
            raise self.error(path, f"must be at most {maximum:g}, got {value}")
        return result

    def integer(self, value: Any, path: str, default: int | None = None, minimum: int = 0) -> int | None:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(path, f"expected a whole number, got {_describe(value)}")
        if value < minimum:
            raise self.error(path, f"must be at least {minimum}, got {value}")
        return value

    def name(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not NAME_PATTERN.match(value):
            raise self.error(path, f"invalid name {_describe(value)} (letters, digits and _.:/@+- only)")
        return value

    def choice(self, value: Any, path: str, choices: tuple[str, ...], default: str) -> str:
        if value is None:
            return default
        if value not in choices:
            raise self.error(path, f"expected one of {', '.join(choices)}, got {_describe(value)}")
        return str(value)


def substitute_env(value: Any, path: str, reader: _Reader, environ: dict[str, str]) -> Any:
    """Replace ${NAME} / ${NAME:-default} in every string of the parsed document."""
    if isinstance(value, dict):
        return {
            k: substitute_env(v, f"{path}.{k}" if path else str(k), reader, environ) for k, v in value.items()
        }
    if isinstance(value, list):
        return [substitute_env(v, f"{path}[{i}]", reader, environ) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:

        def repl(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            raise reader.error(path, f"environment variable {name} is not set")

        return ENV_PATTERN.sub(repl, value)
    return value


_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_config(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> Config:
    """Load and validate a config file. Raises ConfigError naming the file and key path."""
    filename = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{filename}: cannot read: {exc.strerror or exc}") from None
    return parse_config(text, filename, environ)


def parse_config(text: str, filename: str = "<config>", environ: dict[str, str] | None = None) -> Config:
    reader = _Reader(Path(filename).name if filename != "<config>" else filename)
    try:
        # libyaml's parser when present: ~10x faster, which matters for 10k-user directories.
        raw = yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise reader.error("", f"not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    raw = substitute_env(
        raw if raw is not None else {}, "", reader, dict(os.environ if environ is None else environ)
    )
    top = reader.mapping(
        raw,
        "",
        {
            "currency",
            "currency_minor_units",
            "timezone",
            "pools",
            "models",
            "teams",
            "users",
            "ledger",
            "proxy",
            "gpu_exporter",
            "prometheus",
            "report",
            "smtp",
            "limits",
        },
    )
    return _build(reader, filename, top)


def _build(r: _Reader, filename: str, top: dict[str, Any]) -> Config:
    currency = r.string(top.get("currency"), "currency", "EUR") or "EUR"
    if not re.fullmatch(r"[A-Z]{3}", currency):
        raise r.error("currency", f"expected a 3-letter ISO 4217 code such as EUR, got {_describe(currency)}")
    minor = r.integer(top.get("currency_minor_units"), "currency_minor_units", 2) or 0
    if minor > 4:
        raise r.error("currency_minor_units", f"must be at most 4, got {minor}")
    tzname = r.string(top.get("timezone"), "timezone", "UTC") or "UTC"
    try:
        ZoneInfo(tzname)
    except (ZoneInfoNotFoundError, ValueError):
        raise r.error("timezone", f"unknown time zone {_describe(tzname)}") from None

    pools = _pools(r, top.get("pools"))
    teams = _teams(r, top.get("teams"))
    models = _models(r, top.get("models"), pools, teams)
    users = _users(r, top.get("users"), teams)
    ledger = _ledger(r, top.get("ledger"))
    proxy = _proxy(r, top.get("proxy"))
    gpu = _gpu_exporter(r, top.get("gpu_exporter"), pools)
    prom = _prometheus(r, top.get("prometheus"))
    report = _report(r, top.get("report"), teams)
    smtp = _smtp(r, top.get("smtp"))
    from exporter.limits.settings import parse_limits

    limits = parse_limits(r, top.get("limits"), teams, users, models)
    cfg = Config(
        path=filename,
        currency=currency,
        currency_minor_units=minor,
        timezone=tzname,
        pools=pools,
        models=models,
        teams=teams,
        users=users,
        ledger=ledger,
        proxy=proxy,
        gpu_exporter=gpu,
        prometheus=prom,
        report=report,
        smtp=smtp,
        limits=limits,
    )
    _check_budget_prices(r, cfg)
    return cfg


def _check_budget_prices(r: _Reader, cfg: Config) -> None:
    """A budget that blocks needs a price for every model its team can use (see exporter/pricing.py)."""
    if cfg.limits is None:
        return
    from exporter.pricing import price_table

    unpriced = [m for m, p in price_table(cfg).items() if p.per_weighted_token is None]
    for sets, scope in ((cfg.limits.teams, "teams"), (cfg.limits.users, "users")):
        for name, limit_set in sets.items():
            budget = limit_set.limits.get("budget")
            if budget is None or not budget.blocks:
                continue
            team = name if scope == "teams" else cfg.team_of(name)
            usable = [
                m
                for m in unpriced
                if (cfg.models[m].allowed_teams is None or team in (cfg.models[m].allowed_teams or ()))
            ]
            if usable:
                raise r.error(
                    f"limits.{scope}.{name}.budget",
                    f"a blocking budget needs a price for model {usable[0]}: set"
                    f" limits.price_per_million_weighted_tokens.{usable[0]} or"
                    f" pools.{cfg.models[usable[0]].pool}.capacity_tokens_per_second",
                )


def _pools(r: _Reader, value: Any) -> dict[str, Pool]:
    pools: dict[str, Pool] = {}
    for name, body in r.mapping(value, "pools").items():
        p = f"pools.{name}"
        r.name(name, p)
        b = r.mapping(
            body, p, {"gpu_hourly_cost", "gpus", "gpu_uuids", "gpu_indexes", "capacity_tokens_per_second"}
        )
        cost = r.decimal(b.get("gpu_hourly_cost"), f"{p}.gpu_hourly_cost", required=True)
        assert cost is not None
        indexes_raw = b.get("gpu_indexes") or []
        if not isinstance(indexes_raw, list):
            raise r.error(f"{p}.gpu_indexes", f"expected a list of GPU indexes, got {_describe(indexes_raw)}")
        indexes = tuple(r.integer(v, f"{p}.gpu_indexes[{i}]") or 0 for i, v in enumerate(indexes_raw))
        capacity = r.decimal(b.get("capacity_tokens_per_second"), f"{p}.capacity_tokens_per_second")
        if capacity is not None and capacity <= 0:
            raise r.error(f"{p}.capacity_tokens_per_second", f"must be greater than 0, got {capacity}")
        pools[name] = Pool(
            name=name,
            gpu_hourly_cost=cost,
            gpu_count=r.integer(b.get("gpus"), f"{p}.gpus", None, minimum=0),
            gpu_uuids=r.list_of_str(b.get("gpu_uuids"), f"{p}.gpu_uuids"),
            gpu_indexes=indexes,
            capacity_tokens_per_second=capacity,
        )
    return pools


def _teams(r: _Reader, value: Any) -> dict[str, Team]:
    teams: dict[str, Team] = {}
    for name, body in r.mapping(value, "teams").items():
        p = f"teams.{name}"
        r.name(name, p)
        b = r.mapping(body, p, {"business_unit", "cost_center", "budget", "billing_contacts"})
        contacts = r.list_of_str(b.get("billing_contacts"), f"{p}.billing_contacts")
        for i, c in enumerate(contacts):
            if not EMAIL_PATTERN.match(c):
                raise r.error(f"{p}.billing_contacts[{i}]", f"not an email address: {_describe(c)}")
        teams[name] = Team(
            name=name,
            business_unit=r.string(b.get("business_unit"), f"{p}.business_unit", "") or "",
            cost_center=r.string(b.get("cost_center"), f"{p}.cost_center", "") or "",
            budget=r.decimal(b.get("budget"), f"{p}.budget"),
            billing_contacts=contacts,
        )
    return teams


def _models(r: _Reader, value: Any, pools: dict[str, Pool], teams: dict[str, Team]) -> dict[str, Model]:
    models: dict[str, Model] = {}
    for name, body in r.mapping(value, "models").items():
        p = f"models.{name}"
        r.name(name, p)
        b = r.mapping(
            body,
            p,
            {
                "upstream",
                "upstreams",
                "api_key",
                "pool",
                "teams",
                "token_weights",
                "upstream_model",
                "usage_fallback",
                "tokenize",
            },
        )
        upstreams = r.list_of_str(b.get("upstreams", b.get("upstream")), f"{p}.upstreams")
        if not upstreams:
            raise r.error(f"{p}.upstreams", "at least one upstream base URL is required")
        for i, u in enumerate(upstreams):
            if not re.match(r"^https?://[^/\s]+", u):
                raise r.error(f"{p}.upstreams[{i}]", f"expected an http(s) URL, got {_describe(u)}")
        pool = r.string(b.get("pool"), f"{p}.pool", required=True)
        if pool not in pools:
            raise r.error(
                f"{p}.pool", f"unknown pool {_describe(pool)} (configured: {', '.join(pools) or 'none'})"
            )
        allowed = None
        if "teams" in b and b["teams"] is not None:
            allowed = r.list_of_str(b["teams"], f"{p}.teams")
            for i, t in enumerate(allowed):
                if t not in teams:
                    raise r.error(f"{p}.teams[{i}]", f"unknown team {_describe(t)}")
        w = r.mapping(b.get("token_weights"), f"{p}.token_weights", {"prompt", "completion"})
        weights = TokenWeights(
            prompt=r.decimal(w.get("prompt"), f"{p}.token_weights.prompt", Decimal(1)) or Decimal(0),
            completion=r.decimal(w.get("completion"), f"{p}.token_weights.completion", Decimal(1))
            or Decimal(0),
        )
        fallback = r.choice(b.get("usage_fallback"), f"{p}.usage_fallback", USAGE_FALLBACKS, "estimate")
        tokenize = _tokenize(r, b.get("tokenize"), p)
        if fallback == "tokenize" and tokenize is None:
            raise r.error(
                f"{p}.tokenize",
                "usage_fallback: tokenize needs a tokenize section naming the server's api "
                f"({', '.join(TOKENIZE_APIS)})",
            )
        models[name] = Model(
            name=name,
            upstreams=tuple(u.rstrip("/") for u in upstreams),
            pool=pool or "",
            api_key=r.string(b.get("api_key"), f"{p}.api_key") or None,
            allowed_teams=allowed,
            token_weights=weights,
            upstream_model=r.string(b.get("upstream_model"), f"{p}.upstream_model"),
            usage_fallback=fallback,
            tokenize=tokenize,
        )
    return models


def _tokenize(r: _Reader, value: Any, p: str) -> TokenizeConfig | None:
    if value is None:
        return None
    t = r.mapping(value, f"{p}.tokenize", {"api", "url", "timeout_seconds"})
    api = r.string(t.get("api"), f"{p}.tokenize.api", required=True)
    if api not in TOKENIZE_APIS:
        raise r.error(
            f"{p}.tokenize.api", f"expected one of {', '.join(TOKENIZE_APIS)}, got {_describe(api)}"
        )
    url = r.string(t.get("url"), f"{p}.tokenize.url")
    if url is not None and not re.match(r"^https?://[^/\s]+", url):
        raise r.error(f"{p}.tokenize.url", f"expected an http(s) URL, got {_describe(url)}")
    timeout = r.number(t.get("timeout_seconds"), f"{p}.tokenize.timeout_seconds", 5.0, maximum=300)
    if timeout <= 0:
        raise r.error(f"{p}.tokenize.timeout_seconds", f"must be greater than 0, got {timeout:g}")
    return TokenizeConfig(api=str(api), url=url.rstrip("/") if url else None, timeout_seconds=timeout)


def _users(r: _Reader, value: Any, teams: dict[str, Team]) -> dict[str, User]:
    users: dict[str, User] = {}
    for email, body in r.mapping(value, "users").items():
        p = f"users.{email}"
        if not isinstance(email, str) or not EMAIL_PATTERN.match(email):
            raise r.error(p, "user keys must be email addresses")
        if isinstance(body, str):
            body = {"team": body}
        b = r.mapping(body, p, {"team"})
        team = r.string(b.get("team"), f"{p}.team", required=True) or ""
        if team not in teams:
            raise r.error(f"{p}.team", f"unknown team {_describe(team)}")
        users[email] = User(email=email, team=team)
    return users


def _ledger(r: _Reader, value: Any) -> LedgerConfig:
    b = r.mapping(
        value,
        "ledger",
        {"url", "batch_size", "flush_interval_seconds", "max_queue_rows", "spool_dir", "retry_seconds"}
        | {"retention_months", "journal_fsync_seconds"},
    )
    d = LedgerConfig()
    url = r.string(b.get("url"), "ledger.url", d.url) or d.url
    if not re.match(r"^(sqlite:///|sqlite://:memory:|postgres(ql)?://)", url):
        raise r.error("ledger.url", f"expected sqlite:///PATH or postgresql://..., got {_describe(url)}")
    return LedgerConfig(
        url=url,
        batch_size=r.integer(b.get("batch_size"), "ledger.batch_size", d.batch_size, minimum=1)
        or d.batch_size,
        flush_interval_seconds=r.number(
            b.get("flush_interval_seconds"), "ledger.flush_interval_seconds", d.flush_interval_seconds
        ),
        max_queue_rows=r.integer(
            b.get("max_queue_rows"), "ledger.max_queue_rows", d.max_queue_rows, minimum=1
        )
        or d.max_queue_rows,
        spool_dir=r.string(b.get("spool_dir"), "ledger.spool_dir", d.spool_dir) or d.spool_dir,
        retry_seconds=r.number(b.get("retry_seconds"), "ledger.retry_seconds", d.retry_seconds),
        journal_fsync_seconds=r.number(
            b.get("journal_fsync_seconds"),
            "ledger.journal_fsync_seconds",
            d.journal_fsync_seconds,
            minimum=0.001,
            maximum=10.0,
        ),
        retention_months=r.integer(b.get("retention_months"), "ledger.retention_months", None, minimum=1),
    )


def parse_listen(value: str, path: str = "listen", filename: str = "<config>") -> tuple[str, int]:
    """'host:port', ':port' or '[::1]:port' → (host, port); ':port' binds every address."""
    m = re.fullmatch(r"(?:\[([0-9a-fA-F:.]+)\]|([^:\[\]]*)):(\d{1,5})", value.strip())
    if not m or not 0 < int(m.group(3)) < 65536:
        raise ConfigError(f"{filename}: {path}: expected HOST:PORT or :PORT, got {_describe(value)}")
    host = m.group(1) or m.group(2) or "0.0.0.0"
    return host, int(m.group(3))


def _proxy(r: _Reader, value: Any) -> ProxyConfig:
    b = r.mapping(
        value,
        "proxy",
        {
            "listen",
            "metrics_listen",
            "max_body_bytes",
            "connect_timeout_seconds",
            "upstream_timeout_seconds",
            "shutdown_grace_seconds",
            "key_refresh_seconds",
            "metrics_labels",
        },
    )
    d = ProxyConfig()
    listen = r.list_of_str(b.get("listen"), "proxy.listen") or d.listen
    for i, item in enumerate(listen):
        parse_listen(item, f"proxy.listen[{i}]", r.filename)
    metrics_listen = (
        r.string(b.get("metrics_listen"), "proxy.metrics_listen", d.metrics_listen) or d.metrics_listen
    )
    parse_listen(metrics_listen, "proxy.metrics_listen", r.filename)
    return ProxyConfig(
        listen=listen,
        metrics_listen=metrics_listen,
        max_body_bytes=r.integer(b.get("max_body_bytes"), "proxy.max_body_bytes", d.max_body_bytes, minimum=1)
        or d.max_body_bytes,
        connect_timeout_seconds=r.number(
            b.get("connect_timeout_seconds"), "proxy.connect_timeout_seconds", d.connect_timeout_seconds
        ),
        upstream_timeout_seconds=r.number(
            b.get("upstream_timeout_seconds"), "proxy.upstream_timeout_seconds", d.upstream_timeout_seconds
        ),
        shutdown_grace_seconds=r.number(
            b.get("shutdown_grace_seconds"), "proxy.shutdown_grace_seconds", d.shutdown_grace_seconds
        ),
        key_refresh_seconds=r.number(
            b.get("key_refresh_seconds"), "proxy.key_refresh_seconds", d.key_refresh_seconds, minimum=0.1
        ),
        metrics_labels=r.choice(
            b.get("metrics_labels"), "proxy.metrics_labels", METRICS_LABELS, d.metrics_labels
        ),
    )


def _gpu_exporter(r: _Reader, value: Any, pools: dict[str, Pool]) -> GpuExporterConfig:
    b = r.mapping(
        value,
        "gpu_exporter",
        {
            "listen",
            "idle_threshold_ratio",
            "default_pool",
            "pool_by_uuid",
            "pool_by_index",
            "nvml_call_timeout_seconds",
        },
    )
    d = GpuExporterConfig()
    listen = r.string(b.get("listen"), "gpu_exporter.listen", d.listen) or d.listen
    parse_listen(listen, "gpu_exporter.listen", r.filename)

    def check_pool(name: Any, path: str) -> str:
        if name not in pools:
            raise r.error(path, f"unknown pool {_describe(name)} (configured: {', '.join(pools) or 'none'})")
        return str(name)

    default_pool = b.get("default_pool")
    if default_pool is not None:
        check_pool(default_pool, "gpu_exporter.default_pool")
    by_uuid: dict[str, str] = {}
    by_index: dict[int, str] = {}
    # Pools may also name their GPUs themselves (pools.X.gpu_uuids / gpu_indexes).
    for pool in pools.values():
        for u in pool.gpu_uuids:
            by_uuid[u] = pool.name
        for i in pool.gpu_indexes:
            by_index[i] = pool.name
    for uuid, pool_name in r.mapping(b.get("pool_by_uuid"), "gpu_exporter.pool_by_uuid").items():
        by_uuid[str(uuid)] = check_pool(pool_name, f"gpu_exporter.pool_by_uuid.{uuid}")
    for idx, pool_name in r.mapping(b.get("pool_by_index"), "gpu_exporter.pool_by_index").items():
        if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
            raise r.error(f"gpu_exporter.pool_by_index.{idx}", "GPU index must be a whole number ≥ 0")
        by_index[idx] = check_pool(pool_name, f"gpu_exporter.pool_by_index.{idx}")
    return GpuExporterConfig(
        listen=listen,
        idle_threshold_ratio=r.number(
            b.get("idle_threshold_ratio"),
            "gpu_exporter.idle_threshold_ratio",
            d.idle_threshold_ratio,
            0.0,
            1.0,
        ),
        default_pool=default_pool,
        pool_by_uuid=by_uuid,
        pool_by_index=by_index,
        nvml_call_timeout_seconds=r.number(
            b.get("nvml_call_timeout_seconds"),
            "gpu_exporter.nvml_call_timeout_seconds",
            d.nvml_call_timeout_seconds,
            0.01,
        ),
    )


def _prometheus(r: _Reader, value: Any) -> PrometheusConfig:
    b = r.mapping(value, "prometheus", {"url", "timeout_seconds", "selector"})
    d = PrometheusConfig()
    url = r.string(b.get("url"), "prometheus.url", d.url) or d.url
    if not re.match(r"^https?://", url):
        raise r.error("prometheus.url", f"expected an http(s) URL, got {_describe(url)}")
    selector = r.string(b.get("selector"), "prometheus.selector", "") or ""
    return PrometheusConfig(
        url=url.rstrip("/"),
        timeout_seconds=r.number(
            b.get("timeout_seconds"), "prometheus.timeout_seconds", d.timeout_seconds, 0.1
        ),
        selector=selector,
    )


def _flat_fee(r: _Reader, value: Any, path: str) -> FlatFee:
    b = r.mapping(value, path, {"monthly_fee", "included_tokens", "overage_per_million"})
    return FlatFee(
        monthly_fee=r.decimal(b.get("monthly_fee"), f"{path}.monthly_fee", required=True) or Decimal(0),
        included_tokens=r.integer(b.get("included_tokens"), f"{path}.included_tokens", 0) or 0,
        overage_per_million=r.decimal(
            b.get("overage_per_million"), f"{path}.overage_per_million", required=True
        )
        or Decimal(0),
    )


def _report(r: _Reader, value: Any, teams: dict[str, Team]) -> ReportConfig:
    b = r.mapping(
        value,
        "report",
        {
            "method",
            "realtime_method",
            "idle_handling",
            "output_dir",
            "hybrid",
            "tiers",
            "flat_fee",
            "finance_recipients",
            "locale",
            "billing_contact",
        },
    )
    d = ReportConfig()
    method = r.choice(b.get("method"), "report.method", METHODS, d.method)
    realtime = r.choice(
        b.get("realtime_method"), "report.realtime_method", REALTIME_METHODS, d.realtime_method
    )
    idle = r.choice(b.get("idle_handling"), "report.idle_handling", IDLE_HANDLING, d.idle_handling)

    # hybrid: component weights must sum to exactly 1
    hb = r.mapping(b.get("hybrid"), "report.hybrid", {"weights", "fixed_shares"})
    hybrid = d.hybrid
    if hb:
        weights: dict[str, Decimal] = {}
        for comp, w in r.mapping(hb.get("weights"), "report.hybrid.weights").items():
            if comp not in HYBRID_COMPONENTS:
                raise r.error(
                    f"report.hybrid.weights.{comp}",
                    f"unknown component (expected one of: {', '.join(HYBRID_COMPONENTS)})",
                )
            weights[comp] = r.decimal(w, f"report.hybrid.weights.{comp}", required=True) or Decimal(0)
        if not weights:
            raise r.error("report.hybrid.weights", "at least one component weight is required")
        total = sum(weights.values(), Decimal(0))
        if total != 1:
            raise r.error("report.hybrid.weights", f"weights must sum to 1, got {total}")
        fixed: dict[str, Decimal] = {}
        for team, share in r.mapping(hb.get("fixed_shares"), "report.hybrid.fixed_shares").items():
            if team not in teams:
                raise r.error(f"report.hybrid.fixed_shares.{team}", f"unknown team {_describe(team)}")
            fixed[team] = r.decimal(share, f"report.hybrid.fixed_shares.{team}", required=True) or Decimal(0)
        if weights.get("fixed_share") and not fixed:
            raise r.error(
                "report.hybrid.fixed_shares", "required when the fixed_share component has a weight"
            )
        if fixed and sum(fixed.values(), Decimal(0)) != 1:
            raise r.error(
                "report.hybrid.fixed_shares", f"shares must sum to 1, got {sum(fixed.values(), Decimal(0))}"
            )
        hybrid = HybridConfig(weights=weights, fixed_shares=fixed)

    # tiered: ascending upper bounds, last one open-ended
    tiers: list[Tier] = []
    raw_tiers = b.get("tiers") or []
    if not isinstance(raw_tiers, list):
        raise r.error("report.tiers", f"expected a list of tiers, got {_describe(raw_tiers)}")
    previous = 0
    for i, t in enumerate(raw_tiers):
        p = f"report.tiers[{i}]"
        tb = r.mapping(t, p, {"up_to_tokens", "price_per_million"})
        up_to = r.integer(tb.get("up_to_tokens"), f"{p}.up_to_tokens", None, minimum=1)
        if up_to is None and i != len(raw_tiers) - 1:
            raise r.error(f"{p}.up_to_tokens", "only the last tier may be open-ended")
        if up_to is not None and up_to <= previous:
            raise r.error(
                f"{p}.up_to_tokens", f"tiers out of order: {up_to} is not above the previous bound {previous}"
            )
        previous = up_to or previous
        tiers.append(
            Tier(
                up_to_tokens=up_to,
                price_per_million=r.decimal(
                    tb.get("price_per_million"), f"{p}.price_per_million", required=True
                )
                or Decimal(0),
            )
        )
    if method == "tiered" and not tiers:
        raise r.error("report.tiers", "required when report.method is tiered")

    fb = r.mapping(b.get("flat_fee"), "report.flat_fee", {"default", "teams"})
    flat_default = (
        _flat_fee(r, fb["default"], "report.flat_fee.default") if fb.get("default") is not None else None
    )
    flat_teams: dict[str, FlatFee] = {}
    for team, body in r.mapping(fb.get("teams"), "report.flat_fee.teams").items():
        if team not in teams:
            raise r.error(f"report.flat_fee.teams.{team}", f"unknown team {_describe(team)}")
        flat_teams[team] = _flat_fee(r, body, f"report.flat_fee.teams.{team}")
    if method == "flat-fee-with-overages" and flat_default is None and not flat_teams:
        raise r.error("report.flat_fee", "required when report.method is flat-fee-with-overages")

    recipients = r.list_of_str(b.get("finance_recipients"), "report.finance_recipients")
    for i, c in enumerate(recipients):
        if not EMAIL_PATTERN.match(c):
            raise r.error(f"report.finance_recipients[{i}]", f"not an email address: {_describe(c)}")
    locale = r.string(b.get("locale"), "report.locale", d.locale) or d.locale
    from babel import Locale, UnknownLocaleError  # only the reporter needs CLDR data

    try:
        Locale.parse(locale.replace("-", "_"))
    except (UnknownLocaleError, ValueError):
        raise r.error(
            "report.locale", f"unknown locale {_describe(locale)} (expected e.g. en_US, de_DE)"
        ) from None
    return ReportConfig(
        locale=locale,
        billing_contact=r.string(b.get("billing_contact"), "report.billing_contact", "") or "",
        method=method,
        realtime_method=realtime,
        idle_handling=idle,
        output_dir=r.string(b.get("output_dir"), "report.output_dir", d.output_dir) or d.output_dir,
        hybrid=hybrid,
        tiers=tuple(tiers),
        flat_fee_default=flat_default,
        flat_fee_teams=flat_teams,
        finance_recipients=recipients,
    )


def _smtp(r: _Reader, value: Any) -> SmtpConfig:
    b = r.mapping(
        value, "smtp", {"host", "port", "security", "username", "password", "from", "timeout_seconds"}
    )
    d = SmtpConfig()
    port = r.integer(b.get("port"), "smtp.port", None, minimum=1)
    security = r.choice(b.get("security"), "smtp.security", ("none", "starttls", "ssl"), d.security)
    if port is None:
        port = {"none": 25, "starttls": 587, "ssl": 465}[security]
    if port > 65535:
        raise r.error("smtp.port", f"must be at most 65535, got {port}")
    sender = r.string(b.get("from"), "smtp.from", d.from_address) or d.from_address
    if not EMAIL_PATTERN.match(sender):
        raise r.error("smtp.from", f"not an email address: {_describe(sender)}")
    return SmtpConfig(
        host=r.string(b.get("host"), "smtp.host", d.host) or d.host,
        port=port,
        security=security,
        username=r.string(b.get("username"), "smtp.username") or None,
        password=r.string(b.get("password"), "smtp.password") or None,
        from_address=sender,
        timeout_seconds=r.number(b.get("timeout_seconds"), "smtp.timeout_seconds", d.timeout_seconds, 0.1),
    )
