"""The one configuration file (YAML) shared by the proxy, the GPU exporter and the reporter: loading.

This module reads the file, replaces ``${VAR}`` references and composes the sections; each section's
schema lives beside its component (docs/configuration.md lists where):

- ``pools``, ``teams``, ``models``, ``users``: exporter/catalog.py
- ``ledger``: exporter/ledger/settings.py; ``proxy``: exporter/proxy/settings.py
- ``gpu_exporter``: exporter/gpu/settings.py; ``limits``: exporter/limits/settings.py
- ``report`` (with each allocation method's parameters, exporter/report/methods/), ``prometheus``,
  ``smtp``: exporter/report/settings.py

Every value is validated at load time; an error names the file, the key path and what is wrong:

    chargeback.yaml: teams.research.budget: expected a number, got "lots"

``${NAME}`` (or ``${NAME:-default}``) anywhere in a string is replaced by the environment variable,
so secrets never have to be written into the file; any other ``${`` is an error.

The file must be UTF-8 and not empty. YAML anchors and aliases work, within bounds: an alias that
contains itself, values nested more than ``MAX_YAML_DEPTH`` deep, or aliases expanding to more than
``MAX_YAML_VALUES`` values (an "alias bomb") are refused before anything is expanded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from exporter.catalog import (
    TOKENIZE_APIS,
    USAGE_FALLBACKS,
    Model,
    Models,
    Pool,
    Pools,
    Team,
    Teams,
    TokenizeConfig,
    TokenWeights,
    User,
    Users,
)
from exporter.gpu.settings import DEFAULT_GPU_EXPORTER_LISTEN, GpuExporterConfig
from exporter.ledger.settings import LedgerConfig
from exporter.limits.settings import LimitsConfig
from exporter.proxy.settings import (
    DEFAULT_PROXY_LISTEN,
    DEFAULT_PROXY_METRICS_LISTEN,
    METRICS_LABELS,
    ProxyConfig,
)
from exporter.report.settings import IDLE_HANDLING, PrometheusConfig, ReportConfig, SmtpConfig
from exporter.sections import (
    EMAIL_PATTERN,
    NAME_PATTERN,
    ConfigError,
    Section,
    as_string,
    checked_string,
    describe,
    fail,
    parse_listen,
    plain,
    section,
    section_error,
    validate,
    whole,
)

# Kept importable from here: callers name these as exporter.config.X.
__all__ = [
    "DEFAULT_GPU_EXPORTER_LISTEN",
    "DEFAULT_PROXY_LISTEN",
    "DEFAULT_PROXY_METRICS_LISTEN",
    "EMAIL_PATTERN",
    "IDLE_HANDLING",
    "METRICS_LABELS",
    "NAME_PATTERN",
    "TOKENIZE_APIS",
    "USAGE_FALLBACKS",
    "Config",
    "ConfigError",
    "GpuExporterConfig",
    "LedgerConfig",
    "LimitsConfig",
    "Model",
    "Pool",
    "PrometheusConfig",
    "ProxyConfig",
    "ReportConfig",
    "SmtpConfig",
    "Team",
    "TokenWeights",
    "TokenizeConfig",
    "User",
    "load_config",
    "parse_config",
    "parse_listen",
]

ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
MAX_YAML_VALUES = 2_000_000  # scalars, lists and mappings once every alias is expanded
MAX_YAML_DEPTH = 64


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


# --------------------------------------------------------------------------- the top level


def _currency(value: Any) -> str:
    text = as_string(value)
    if not re.fullmatch(r"[A-Z]{3}", text):
        fail(f"expected a 3-letter ISO 4217 code such as EUR, got {describe(text)}")
    return text


_timezone = checked_string(
    ZoneInfo, (ZoneInfoNotFoundError, ValueError), lambda text: f"unknown time zone {describe(text)}"
)


@section
class Basics(Section):
    """The top-level settings that are not sections."""

    currency: Annotated[str, plain(_currency)] = "EUR"
    currency_minor_units: Annotated[int, whole(maximum=4)] = 2
    timezone: Annotated[str, plain(_timezone)] = "UTC"


# Sections in the order they are validated: each sees the ones before it (a model's pool, a
# user's team ...) in the validation context, under its key.
SECTIONS: dict[str, Any] = {
    "pools": Pools,
    "teams": Teams,
    "models": Models,
    "users": Users,
    "ledger": LedgerConfig,
    "proxy": ProxyConfig,
    "gpu_exporter": GpuExporterConfig,
    "prometheus": PrometheusConfig,
    "report": ReportConfig,
    "smtp": SmtpConfig,
    "limits": LimitsConfig,
}
BASICS = ("currency", "currency_minor_units", "timezone")


@dataclass(frozen=True)
class _Where:
    """Names the file in messages."""

    filename: str

    def error(self, path: str, message: str) -> ConfigError:
        return section_error(self.filename, path, message)


def _compose(filename: str, name: str, top: Any) -> Config:
    if not isinstance(top, dict):
        raise section_error(name, "", f"expected a mapping, got {describe(top)}")
    allowed = [*BASICS, *SECTIONS]
    unknown = sorted(str(k) for k in top if k not in allowed)
    if unknown:
        raise section_error(name, unknown[0], f"unknown key (expected one of: {', '.join(sorted(allowed))})")
    basics = validate(Basics, {k: top[k] for k in BASICS if k in top}, "", name)
    parts: dict[str, Any] = {}
    for key, kind in SECTIONS.items():
        if key == "limits" and top.get(key) is None:
            parts[key] = None  # no limits section: alerts only, nothing counted
            continue
        parts[key] = validate(kind, top.get(key), key, name, dict(parts))
    return Config(
        path=filename,
        currency=basics.currency,
        currency_minor_units=basics.currency_minor_units,
        timezone=basics.timezone,
        **parts,
    )


# --------------------------------------------------------------------------- loading


def substitute_env(value: Any, path: str, reader: _Where, environ: dict[str, str]) -> Any:
    """Replace ${NAME} / ${NAME:-default} in every string of the parsed document."""
    if isinstance(value, dict):
        return {
            k: substitute_env(v, f"{path}.{k}" if path else str(k), reader, environ) for k, v in value.items()
        }
    if isinstance(value, list):
        return [substitute_env(v, f"{path}[{i}]", reader, environ) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:
        start = value.find("${")
        while start != -1:
            if not ENV_PATTERN.match(value, start):
                end = value.find("}", start)
                ref = value[start : end + 1 if end != -1 else len(value)]
                raise reader.error(
                    path,
                    f"malformed environment reference {describe(ref)}: expected ${{NAME}} or "
                    "${NAME:-default}, NAME made of letters, digits and _",
                )
            start = value.find("${", start + 2)

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
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{filename}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start});"
            " save the file as UTF-8"
        ) from None
    return parse_config(text, filename, environ)


def _yaml_children(node: yaml.Node, path: str) -> list[tuple[yaml.Node, str]]:
    """A node's children with their key paths (``teams.research``, ``models.m1.upstreams[0]``)."""
    if isinstance(node, yaml.SequenceNode):
        return [(child, f"{path}[{i}]") for i, child in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        out: list[tuple[yaml.Node, str]] = []
        for key, value in node.value:
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
            out += [(key, path), (value, f"{path}.{name}" if path else name)]
        return out
    return []


def _check_yaml_graph(root: yaml.Node, reader: _Where) -> None:
    """Refuse a document whose aliases loop or expand beyond bounds, before anything is expanded:
    each node's expanded size is computed once (iteratively, so depth cannot exhaust the stack)."""
    size: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the current path: meeting one again is a loop
    stack: list[tuple[yaml.Node, str, int, bool]] = [(root, "", 1, False)]

    def fail(path: str, node: yaml.Node, message: str) -> ConfigError:
        mark = node.start_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        return reader.error(path if len(path) <= 80 else path[:79] + "…", message + where)

    while stack:
        node, path, depth, finished = stack.pop()
        key = id(node)
        if finished:
            open_nodes.discard(key)
            total = 1 + sum(size[id(c)] for c, _ in _yaml_children(node, path))
            if total > MAX_YAML_VALUES:
                raise fail(
                    path, node, f"YAML aliases expand to more than {MAX_YAML_VALUES} values (an alias bomb)"
                )
            size[key] = total
            continue
        if key in size:
            continue
        if depth > MAX_YAML_DEPTH:
            raise fail(path, node, f"nested more than {MAX_YAML_DEPTH} levels deep")
        open_nodes.add(key)
        stack.append((node, path, depth, True))
        for child, child_path in _yaml_children(node, path):
            if id(child) in open_nodes:
                raise fail(
                    child_path, child, "a YAML alias refers to a value that contains it (recursive alias)"
                )
            if id(child) not in size:
                stack.append((child, child_path, depth + 1, False))


def _load_yaml(text: str, reader: _Where) -> Any:
    """The YAML document, checked by ``_check_yaml_graph`` before it is built."""
    loader = _YAML_LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_graph(node, reader)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def parse_config(text: str, filename: str = "<config>", environ: dict[str, str] | None = None) -> Config:
    reader = _Where(Path(filename).name if filename != "<config>" else filename)
    try:
        # libyaml's parser when present: ~10x faster, which matters for 10k-user directories.
        raw = _load_yaml(text, reader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise reader.error("", f"not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if raw is None:
        raise reader.error("", "the file is empty (expected a YAML mapping of settings: models, teams, ...)")
    raw = substitute_env(raw, "", reader, dict(os.environ if environ is None else environ))
    return _compose(filename, reader.filename, raw)
