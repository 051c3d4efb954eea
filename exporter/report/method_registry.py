"""Which allocation methods exist, and the parameters each owns under ``report:``.

Every module in exporter/report/methods/ registers its method with :func:`register`; the package
finds its modules by itself, so a new method is one new module (plus docs and tests). The config's
``report.method``, ``report.realtime_method``, the parameter keys (``hybrid``, ``tiers``,
``flat_fee``) and ``chargeback report --method`` all read this registry.

This module imports no method: :func:`methods` loads the package the first time it is asked, so
the config schema can depend on the registry without depending on the allocation code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

PACKAGE = "exporter.report.methods"


@dataclass(frozen=True)
class Param:
    """One key under ``report:`` owned by a method: its type (a Section or an annotated type, as
    pydantic validates it) and its value when the key is absent."""

    kind: Any
    default: Callable[[], Any]


@dataclass(frozen=True)
class Method:
    name: str
    allocate: Callable[..., Any]  # (Inputs, Config) -> Allocation
    order: int  # place in listings and messages
    params: dict[str, Param] = field(default_factory=dict)
    # the params key this method cannot do without ("report.tiers: required when ...")
    requires: str | None = None
    # place among the real-time methods (report.realtime_method; the proxy prices requests by it), 0: not one
    realtime: int = 0


_REGISTRY: dict[str, Method] = {}


def register(
    name: str,
    order: int,
    params: dict[str, Param] | None = None,
    requires: str | None = None,
    realtime: int = 0,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorates a method's allocate function: ``@register("tiered", order=5, params=...)``."""

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY[name] = Method(name, func, order, dict(params or {}), requires, realtime)
        return func

    return wrap


def methods() -> dict[str, Method]:
    """Every registered method, in listing order."""
    importlib.import_module(PACKAGE)  # its __init__ imports every method module
    return dict(sorted(_REGISTRY.items(), key=lambda kv: kv[1].order))


def method_names() -> tuple[str, ...]:
    return tuple(methods())


def realtime_names() -> tuple[str, ...]:
    return tuple(m.name for m in sorted(methods().values(), key=lambda m: m.realtime) if m.realtime)


def params() -> dict[str, Param]:
    """Every method parameter key under ``report:`` (methods may share one)."""
    out: dict[str, Param] = {}
    for m in methods().values():
        out.update(m.params)
    return out
