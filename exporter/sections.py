"""What every config section's schema is built from: value types that check exactly what the
hand-written validator checked, and one translation of pydantic's errors into our wording:

    chargeback.yaml: teams.research.budget: expected a number, got "lots"

Each component declares its own section beside its code (exporter/proxy/settings.py,
exporter/ledger/settings.py, exporter/report/settings.py, ...) as a frozen pydantic dataclass
derived from :class:`Section`; exporter/config.py only loads the file and composes them.

Scalars use plain validators, so nothing is coerced behind the user's back ("lots" is not a
number, ``true`` is not a string); this module imports nothing else from the package, which keeps
the settings modules out of import cycles.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, ClassVar, NoReturn, TypeVar

from pydantic import (
    ConfigDict,
    Field,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_core import ArgsKwargs, PydanticCustomError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]*$")
EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+$")
HTTP_URL = re.compile(r"^https?://[^/\s]+")

# extra keys are refused by Section itself (with the list of allowed ones); "forbid" is the backstop
SECTION_CONFIG = ConfigDict(
    extra="forbid",
    arbitrary_types_allowed=True,
    hide_input_in_errors=True,
    # a renamed key (smtp.from) is read under its key from the file, under the attribute in code
    validate_by_alias=True,
    validate_by_name=True,
)

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem, with the file and key path in its message."""


def describe(value: Any) -> str:
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


def fail(message: str, at: str = "") -> NoReturn:
    """Raise inside a validator: ``message`` is shown as is, at the field's path plus ``at``
    (".key" or "[i]" below the field; a model validator names the field it blames)."""
    raise PydanticCustomError("config", "{message}", {"message": message, "at": at})


def _join(path: str, part: str) -> str:
    if not part:
        return path
    if part.startswith("["):
        return path + part
    part = part.lstrip(".")
    return f"{path}.{part}" if path else part


def translate(exc: ValidationError, path: str = "") -> tuple[str, str]:
    """The first error of ``exc`` as (key path, message) in today's wording."""
    err = exc.errors()[0]
    where = path
    for part in err["loc"]:
        if isinstance(part, int):
            where = _join(where, f"[{part}]")
        elif part not in _HOLDERS:
            where = _join(where, str(part))
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "config":
        return _join(where, str(ctx.get("at", ""))), str(ctx["message"])
    if kind == "missing":
        return where, "is required"
    if kind in ("dataclass_type", "model_type", "dict_type"):
        return where, f"expected a mapping, got {describe(err.get('input'))}"
    if kind == "extra_forbidden":
        return where, "unknown key"
    return where, err["msg"]


def section_error(filename: str, path: str, message: str) -> ConfigError:
    where = f"{filename}: {path}: " if path else f"{filename}: "
    return ConfigError(where + message)


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def _adapter(kind: Any) -> TypeAdapter[Any]:
    """One TypeAdapter per type: building one compiles a validator."""
    adapter = _ADAPTERS.get(kind)
    if adapter is None:
        adapter = _ADAPTERS[kind] = TypeAdapter(kind)
    return adapter


def validate(kind: Any, value: Any, path: str, filename: str, context: dict[str, Any] | None = None) -> Any:
    """``value`` (parsed YAML) as ``kind`` (a Section, or a type such as dict[str, Pool]);
    ConfigError naming ``filename`` and the key path below ``path`` on the first problem."""
    try:
        return _adapter(kind).validate_python(value, context=context or {})
    except ValidationError as exc:
        raise section_error(filename, *translate(exc, path)) from None


def context(info: ValidationInfo) -> dict[str, Any]:
    """The sections validated before this one (empty when a dataclass is built in code)."""
    return info.context if isinstance(info.context, dict) else {}


def known_pool(name: Any, info: ValidationInfo, at: str = "") -> str:
    """``name`` when the config's pools have it (or are not known here), else a validation error."""
    pools = context(info).get("pools")
    if pools is not None and name not in pools:
        fail(f"unknown pool {describe(name)} (configured: {', '.join(pools) or 'none'})", at)
    return str(name)


def known_team(name: Any, info: ValidationInfo, at: str = "") -> str:
    """``name`` when the config's teams have it (or are not known here), else a validation error."""
    teams = context(info).get("teams")
    if teams is not None and name not in teams:
        fail(f"unknown team {describe(name)}", at)
    return str(name)


def keys_of(cls: type) -> list[str]:
    """The YAML keys a section accepts: its fields, under their ``key`` alias where they have one."""
    hidden = {f.name for f in dataclasses.fields(cls) if f.metadata.get("injected")}
    fields = cls.__pydantic_fields__  # type: ignore[attr-defined]
    return [info.alias or name for name, info in fields.items() if name not in hidden]


# fields that hold keys of their own section, left out of error paths (ReportConfig.params)
_HOLDERS: set[str] = set()


def key(name: str, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A field read from a YAML key other than its attribute name (``from`` → from_address); code
    may use either, errors name the key."""
    if default is not dataclasses.MISSING:
        kw["default"] = default
    return Field(alias=name, **kw)


def injected(default: Any = "", holds_keys: bool = False, **kw: Any) -> Any:
    """A field set by the loader (a mapping entry's own name), not a key in the file.
    ``holds_keys``: it gathers keys of the section itself (error paths leave its name out)."""
    meta = {"injected": True, "holds_keys": holds_keys}
    if "default_factory" in kw:
        return dataclasses.field(metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type[T]) -> type[T]:
    """A frozen pydantic dataclass whose YAML mapping is checked by :class:`Section` rules."""
    out = pydantic_dataclass(frozen=True, kw_only=True, config=SECTION_CONFIG)(cls)
    for f in dataclasses.fields(out):
        if f.metadata.get("holds_keys"):
            _HOLDERS.add(f.name)
    return out  # type: ignore[return-value]


@section
class Section:
    """A mapping in the file. Absent or null means every default; a key set to null is as if absent
    (so a required key set to null "is required"); an unknown key names the ones allowed."""

    # keys read by the section's own before-validator, besides its fields
    also_keys: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def shorthand(cls, data: Any) -> Any:
        """A section may accept something other than a mapping (users: {alice@x: research})."""
        return data

    @classmethod
    def extra_keys(cls) -> list[str]:
        return list(cls.also_keys)

    @classmethod
    def gather(cls, data: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """The checked mapping (known keys, nulls dropped) before its fields are validated."""
        return data

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, ArgsKwargs) or dataclasses.is_dataclass(data):
            return data  # built in code: only the fields' own checks apply
        data = cls.shorthand(data)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            fail(f"expected a mapping, got {describe(data)}")
        allowed = keys_of(cls) + cls.extra_keys()
        unknown = sorted(str(k) for k in data if k not in allowed)
        if unknown:
            fail(f"unknown key (expected one of: {', '.join(sorted(allowed))})", unknown[0])
        out = {k: v for k, v in data.items() if v is not None}
        for f in dataclasses.fields(cls):
            if f.metadata.get("injected") and f.name in context(info):
                out[f.name] = context(info)[f.name]
        return cls.gather(out, info)


# --------------------------------------------------------------------------- value types


def plain(func: Callable[..., Any]) -> Any:
    """A plain validator that lets None through: a null key never reaches it from the file (it
    counts as absent), so None comes from code setting an optional field."""
    import inspect

    if len(inspect.signature(func).parameters) == 2:

        def with_info(value: Any, info: ValidationInfo) -> Any:
            return None if value is None else func(value, info)

        return PlainValidator(with_info)
    return PlainValidator(lambda value: None if value is None else func(value))


def _decimal(value: Any, minimum: Decimal | None = Decimal(0)) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        fail(f"expected a number, got {describe(value)}")
    try:
        # str() first: a YAML float like 2.5 must become Decimal("2.5"), not its binary expansion.
        number = Decimal(str(value).strip())
    except InvalidOperation:
        fail(f"expected a number, got {describe(value)}")
    if not number.is_finite():
        fail(f"expected a finite number, got {describe(value)}")
    if minimum is not None and number < minimum:
        fail(f"must be at least {minimum}, got {value}")
    return number


def money(minimum: Decimal | None = Decimal(0), above_zero: bool = False) -> Any:
    """A Decimal (money, prices, shares) from an int, float or numeric string."""

    def check(value: Any) -> Decimal:
        number = _decimal(value, minimum)
        if above_zero and number <= 0:
            fail(f"must be greater than 0, got {number}")
        return number

    return plain(check)


Money = Annotated[Decimal, money()]


def number(minimum: float = 0.0, maximum: float | None = None, above_zero: str = "") -> Any:
    """A float; ``above_zero`` is the unit named when 0 is refused ("seconds")."""

    def check(value: Any) -> float:
        result = float(_decimal(value))
        if result < minimum:
            fail(f"must be at least {minimum:g}, got {value}")
        if maximum is not None and result > maximum:
            fail(f"must be at most {maximum:g}, got {value}")
        if above_zero and result <= 0:
            fail(f"must be greater than 0 {above_zero}, got {value}".replace("  ", " "))
        return result

    return plain(check)


Seconds = Annotated[float, number(above_zero="seconds")]  # a timeout or interval of 0 would never wait


def whole(minimum: int = 0, maximum: int | None = None) -> Any:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail(f"expected a whole number, got {describe(value)}")
        if value < minimum:
            fail(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            fail(f"must be at most {maximum}, got {value}")
        return value

    return plain(check)


Whole = Annotated[int, whole()]
Positive = Annotated[int, whole(minimum=1)]


def _string(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        fail(f"expected a string, got {describe(value)}")
    return str(value)


Str = Annotated[str, plain(_string)]
as_string = _string


def checked_string(
    check: Callable[[str], object],
    errors: type[Exception] | tuple[type[Exception], ...],
    message: Callable[[str], str],
) -> Callable[[Any], str]:
    """A validator for a string that ``check`` must accept: ``check`` raising one of ``errors``
    fails validation with ``message(text)``."""

    def validate(value: Any) -> str:
        text = _string(value)
        try:
            check(text)
        except errors:
            fail(message(text))
        return text

    return validate


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        fail(f"expected a list of strings, got {describe(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            fail(f"expected a non-empty string, got {describe(item)}", f"[{i}]")
    return tuple(value)


StrList = Annotated[tuple[str, ...], plain(_strings)]
as_strings = _strings


def _emails(value: Any) -> tuple[str, ...]:
    out = _strings(value)
    for i, c in enumerate(out):
        if not EMAIL_PATTERN.match(c):
            fail(f"not an email address: {describe(c)}", f"[{i}]")
    return out


EmailList = Annotated[tuple[str, ...], plain(_emails)]


def choice(*choices: str) -> Any:
    def check(value: Any) -> str:
        if value not in choices:
            fail(f"expected one of {', '.join(choices)}, got {describe(value)}")
        return str(value)

    return plain(check)


def check_name(value: Any, at: str = "") -> str:
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        fail(f"invalid name {describe(value)} (letters, digits and _.:/@+- only)", at)
    return value


def mapping(value: Any) -> dict[Any, Any]:
    """A mapping field read entry by entry (None: empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        fail(f"expected a mapping, got {describe(value)}")
    return value


def entries(item: type[T], check_key: Callable[[Any, str], Any] | None = None) -> Any:
    """A ``{name: section}`` mapping whose sections get their name injected (pools, teams, ...)."""

    own = [f.name for f in dataclasses.fields(item) if f.metadata.get("injected")]  # type: ignore[arg-type]

    def check(value: Any, info: ValidationInfo) -> dict[str, T]:
        out: dict[str, T] = {}
        for name, body in mapping(value).items():
            if isinstance(body, item):
                out[name] = body
                continue
            if check_key is not None:
                check_key(name, f".{name}")
            try:
                out[name] = validate_entry(item, body, {**context(info), **dict.fromkeys(own, name)})
            except ValidationError as exc:
                where, message = translate(exc)
                fail(message, _join(f".{name}", where))
        return out

    return plain(check)


def validate_entry(item: type[T], body: Any, ctx: dict[str, Any]) -> T:
    return _adapter(item).validate_python(body, context=ctx)  # type: ignore[no-any-return]


def parse_listen(value: str, path: str = "listen", filename: str = "<config>") -> tuple[str, int]:
    """'host:port', ':port' or '[::1]:port' → (host, port); ':port' binds every address."""
    m = re.fullmatch(r"(?:\[([0-9a-fA-F:.]+)\]|([^:\[\]]*)):(\d{1,5})", value.strip())
    if not m or not 0 < int(m.group(3)) < 65536:
        raise ConfigError(f"{filename}: {path}: expected HOST:PORT or :PORT, got {describe(value)}")
    host = m.group(1) or m.group(2) or "0.0.0.0"
    return host, int(m.group(3))


_listen = checked_string(
    parse_listen, ConfigError, lambda text: f"expected HOST:PORT or :PORT, got {describe(text)}"
)


Listen = Annotated[str, plain(_listen)]
as_listen = _listen
