"""The label selectors of every dashboard query, in one place (as kubernetes-mixin's ``_config``).

The job selectors come from the config the rules are generated with (``exporter/mixin_config.py``:
``PROXY_SELECTOR``, ``GPU_SELECTOR``), so a raw metric is read from the same scrape jobs by the
dashboards as by the recording rules. On top of them every query is narrowed by the dashboard
variables:

- ``$cluster`` (label ``CLUSTER_LABEL``): on raw and recorded series alike. A single Prometheus has
  no such label and "All" (``.*``) matches series without it; behind Thanos or Mimir the label comes
  from Prometheus' external labels and is on recorded series too.
- ``$job``: on raw metrics only. Recorded series are sums over jobs (the rules drop ``job``), so the
  job variable narrows the panels that read raw metrics (budgets, token counters, GPUs, NVML).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # rules/ is not an installed package: import it from the checkout
    sys.path.insert(0, str(REPO))

from exporter import mixin_config  # noqa: E402
from rules import generate as rules  # noqa: E402  (PromQL helpers shared with the rules)

PROXY_SELECTOR: str = mixin_config.PROXY_SELECTOR
GPU_SELECTOR: str = mixin_config.GPU_SELECTOR
CLUSTER_LABEL: str = mixin_config.CLUSTER_LABEL

CLUSTER = f'{CLUSTER_LABEL}=~"$cluster"'
JOB = 'job=~"$job"'
# Per-user panels: with proxy.metrics_labels: team the proxies export no user label (see PER_USER_NOTE
# in dashboards/common.py); such panels stay empty instead of showing one nameless user per team.
NAMED_USER = 'user!=""'


def _join(*parts: str) -> str:
    return "{" + ", ".join(p for p in parts if p) + "}"


def proxy_matchers(*extra: str) -> str:
    """The proxy job's matchers narrowed by the variables, without braces (for the rules' helpers)."""
    return ", ".join(p for p in (PROXY_SELECTOR, CLUSTER, JOB, *extra) if p)


def proxy(*extra: str) -> str:
    """``{...}`` for a raw metric of the proxies."""
    return "{" + proxy_matchers(*extra) + "}"


def gpu(*extra: str) -> str:
    """``{...}`` for a raw metric of the GPU exporters."""
    return _join(GPU_SELECTOR, CLUSTER, JOB, *extra)


def recorded(*extra: str) -> str:
    """``{...}`` for a recorded series (no job label)."""
    return _join(CLUSTER, *extra)


def method_is_proxy_price() -> str:
    """1 (one series, no labels) while the real-time method is proxy-price-per-token, as the rules test it."""
    return rules.method_is_proxy_price(proxy_matchers())


def up(selector: str) -> str:
    """``up`` of a job: the series the cluster and job variables list their values from."""
    return f"up{_join(selector)}"
