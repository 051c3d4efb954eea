"""Start the simulator and the proxy as real processes, with a generated config and API keys.

Used by the tests (``tests/conftest.py``), ``chargeback demo`` and ``bench/``:

    with proxy_stack(tmp_path, users={"alice@corp.example": "research"}) as stack:
        client = openai.OpenAI(base_url=stack.api_url + "/v1", api_key=stack.tokens["alice@corp.example"])
        ...
        samples = read_metrics(stack.metrics_url)
        rows = ledger_rows(stack.ledger_url, "WHERE user_email = ?", ["alice@corp.example"])

Every process binds 127.0.0.1 on a free port, logs to ``<workdir>/<name>.log`` and is stopped
(SIGTERM, then SIGKILL) when the context exits.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.stack import ManagedProcess, free_port

DEFAULT_MODELS = ("sim-small", "sim-large")
DEFAULT_TEAMS = {
    "research": {"business_unit": "R&D", "cost_center": "CC-4100", "budget": 5000},
    "support": {"business_unit": "Customer Operations", "cost_center": "CC-2300", "budget": 1200},
}
UPSTREAM_API_KEY = "sk-upstream-secret"


def sim_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "exporter.sim", "simulate-upstream", *args]


def proxy_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "exporter.proxy", *args]


def start_simulator(
    workdir: Path,
    *,
    port: int | None = None,
    tokens_per_second: float = 0.0,
    latency_ms: float = 0.0,
    models: Sequence[str] = DEFAULT_MODELS,
    api_key: str | None = UPSTREAM_API_KEY,
    name: str = "sim",
) -> ManagedProcess:
    """A simulator process; ``.url`` is its root (the OpenAI base URL is ``url + "/v1"``)."""
    port = port or free_port()
    argv = sim_argv(
        "--web.listen-address",
        f"127.0.0.1:{port}",
        "--tokens-per-second",
        str(tokens_per_second),
        "--latency-ms",
        str(latency_ms),
        "--models",
        ",".join(models),
    )
    if api_key:
        argv += ["--api-key", api_key]
    return ManagedProcess(name, argv, workdir, url=f"http://127.0.0.1:{port}", ready_path="/healthz").start()


def proxy_config(
    *,
    upstreams: Mapping[str, Sequence[str]],
    workdir: Path | None = None,
    ledger_url: str | None = None,
    spool_dir: str | None = None,
    teams: Mapping[str, Mapping[str, Any]] = DEFAULT_TEAMS,
    users: Mapping[str, str] | None = None,
    allowed_teams: Mapping[str, Sequence[str]] | None = None,
    api_key: str | None = UPSTREAM_API_KEY,
    proxy: Mapping[str, Any] | None = None,
    ledger: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A config document: one pool, ``upstreams`` = model → upstream base URLs (ending in /v1).
    The ledger is ``ledger_url`` with its spool in ``spool_dir``; given ``workdir``, either defaults
    to a place in it (``ledger.db``, ``spool/``)."""
    if workdir is not None:
        ledger_url = ledger_url or f"sqlite:///{workdir / 'ledger.db'}"
        spool_dir = spool_dir or str(workdir / "spool")
    if ledger_url is None or spool_dir is None:
        raise TypeError("proxy_config needs workdir, or ledger_url and spool_dir")
    models: dict[str, Any] = {}
    for i, (name, urls) in enumerate(upstreams.items()):
        m: dict[str, Any] = {
            "upstreams": list(urls),
            "pool": "sim",
            "token_weights": {"prompt": 1, "completion": 1 + i},
        }
        if api_key:
            m["api_key"] = api_key
        if allowed_teams and name in allowed_teams:
            m["teams"] = list(allowed_teams[name])
        models[name] = m
    doc: dict[str, Any] = {
        "currency": "EUR",
        "pools": {"sim": {"gpu_hourly_cost": 2.5, "gpus": 2, "capacity_tokens_per_second": 5000}},
        "models": models,
        "teams": {k: dict(v) for k, v in teams.items()},
        "users": {u: {"team": t} for u, t in (users or {}).items()},
        "ledger": {
            "url": ledger_url,
            "spool_dir": spool_dir,
            "flush_interval_seconds": 0.05,
            "retry_seconds": 0.2,
            **(ledger or {}),
        },
        "proxy": {
            "listen": ["127.0.0.1:8080"],
            "metrics_listen": "127.0.0.1:9841",
            "key_refresh_seconds": 0.2,
            "upstream_timeout_seconds": 5,
            "connect_timeout_seconds": 2,
            "shutdown_grace_seconds": 10,
            **(proxy or {}),
        },
    }
    doc.update(extra or {})
    return doc


def write_config(path: Path, doc: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(doc), sort_keys=False))
    return path


@dataclass
class ProxyProcess:
    process: ManagedProcess
    url: str
    metrics_url: str

    def stop(self, timeout: float = 20.0) -> int | None:
        return self.process.stop(timeout)


def start_proxy(
    workdir: Path,
    config_path: Path,
    *,
    port: int | None = None,
    metrics_port: int | None = None,
    name: str = "proxy",
    timeout: float = 30.0,
) -> ProxyProcess:
    port = port or free_port()
    metrics_port = metrics_port or free_port()
    argv = proxy_argv(
        "--config.file",
        str(config_path),
        "--web.listen-address",
        f"127.0.0.1:{port}",
        "--web.metrics-address",
        f"127.0.0.1:{metrics_port}",
    )
    proc = ManagedProcess(name, argv, workdir, url=f"http://127.0.0.1:{port}", ready_path="/healthz")
    proc.start(timeout)
    return ProxyProcess(proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}")


def create_keys(ledger_url: str, users: Mapping[str, str]) -> dict[str, str]:
    """One new key per user (user → team); returns user → token."""
    from exporter.ledger.store import open_store

    store = open_store(ledger_url)
    try:
        return {user: store.create_key(user, team)[0] for user, team in users.items()}
    finally:
        store.close()


@contextlib.contextmanager
def running_proxy(
    workdir: Path, doc: Mapping[str, Any], users: Mapping[str, str]
) -> Iterator[tuple[ProxyProcess, dict[str, str]]]:
    """Write ``doc`` to ``workdir/chargeback.yaml``, create a key per user (user → team) in its
    ledger and run a proxy on it; yields (proxy, user → token) and stops the proxy afterwards."""
    config_path = write_config(workdir / "chargeback.yaml", doc)
    tokens = create_keys(doc["ledger"]["url"], users)
    proxy = start_proxy(workdir, config_path)
    try:
        yield proxy, tokens
    finally:
        proxy.stop()


@dataclass
class Stack:
    workdir: Path
    config_path: Path
    config: dict[str, Any]
    ledger_url: str
    sim: ManagedProcess
    proxy: ProxyProcess
    tokens: dict[str, str]
    extra_sims: list[ManagedProcess] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return self.proxy.url

    @property
    def metrics_url(self) -> str:
        return self.proxy.metrics_url

    @property
    def sim_url(self) -> str:
        assert self.sim.url is not None
        return self.sim.url

    def sim_stats(self, sim: ManagedProcess | None = None) -> dict[str, Any]:
        return requests.get(f"{(sim or self.sim).url}/sim/stats", timeout=5).json()

    def restart_proxy(self) -> ProxyProcess:
        """Start a fresh proxy process on the same ports and config (after stopping the old one)."""
        port = int(self.proxy.url.rsplit(":", 1)[1])
        mport = int(self.proxy.metrics_url.rsplit(":", 1)[1])
        self.proxy = start_proxy(
            self.workdir, self.config_path, port=port, metrics_port=mport, name="proxy-restarted"
        )
        return self.proxy


@contextlib.contextmanager
def proxy_stack(
    workdir: Path,
    *,
    users: Mapping[str, str],
    models: Sequence[str] = DEFAULT_MODELS,
    ledger_url: str | None = None,
    config_users: Mapping[str, str] | None = None,
    allowed_teams: Mapping[str, Sequence[str]] | None = None,
    extra_upstreams: Mapping[str, Sequence[str]] | None = None,
    tokens_per_second: float = 0.0,
    latency_ms: float = 0.0,
    proxy: Mapping[str, Any] | None = None,
    ledger: Mapping[str, Any] | None = None,
    extra_sims: int = 0,
) -> Iterator[Stack]:
    """Simulator + proxy + keys for ``users`` (user → team). Models in ``models`` are served by the
    simulator; ``extra_upstreams`` adds models with their own upstream lists (``{sim}`` and ``{simN}``
    in a URL are replaced by the simulator URLs). ``extra_sims`` starts more simulators."""
    workdir.mkdir(parents=True, exist_ok=True)
    ledger_url = ledger_url or f"sqlite:///{workdir / 'ledger.db'}"
    started: list[ManagedProcess] = []
    proxy_proc: ProxyProcess | None = None
    try:
        sim = start_simulator(
            workdir,
            tokens_per_second=tokens_per_second,
            latency_ms=latency_ms,
            models=[*models, *(extra_upstreams or {})],
        )
        started.append(sim)
        sims = []
        for i in range(extra_sims):
            s = start_simulator(
                workdir,
                tokens_per_second=tokens_per_second,
                latency_ms=latency_ms,
                models=[*models, *(extra_upstreams or {})],
                name=f"sim{i + 1}",
            )
            started.append(s)
            sims.append(s)
        subs = {"{sim}": f"{sim.url}/v1", **{f"{{sim{i + 1}}}": f"{s.url}/v1" for i, s in enumerate(sims)}}
        ups: dict[str, list[str]] = {m: [f"{sim.url}/v1"] for m in models}
        for m, urls in (extra_upstreams or {}).items():
            out = []
            for u in urls:
                for k, v in subs.items():
                    u = u.replace(k, v)
                out.append(u)
            ups[m] = out
        doc = proxy_config(
            upstreams=ups,
            ledger_url=ledger_url,
            spool_dir=str(workdir / "spool"),
            users=config_users,
            allowed_teams=allowed_teams,
            proxy=proxy,
            ledger=ledger,
        )
        config_path = write_config(workdir / "chargeback.yaml", doc)
        tokens = create_keys(ledger_url, users)
        proxy_proc = start_proxy(workdir, config_path)
        stack = Stack(workdir, config_path, doc, ledger_url, sim, proxy_proc, tokens, sims)
        yield stack
        proxy_proc = stack.proxy
    finally:
        if proxy_proc is not None:
            proxy_proc.stop()
        for p in reversed(started):
            p.stop()


# --------------------------------------------------------------------------- reading results


def read_metrics(metrics_url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Scrape ``/metrics``: {(sample name, frozenset of label pairs): value}."""
    text = requests.get(f"{metrics_url}/metrics", timeout=10).text
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def metric(
    samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels`` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def ledger_rows(ledger_url: str, **equal: Any) -> list[dict[str, Any]]:
    """Ledger rows (as dicts) whose columns equal the keyword arguments, e.g. ``user_email=...``."""
    from exporter.ledger.store import open_store

    store = open_store(ledger_url)
    try:
        cols, rows = store.query("SELECT * FROM http_analytics ORDER BY timestamp")
    finally:
        store.close()
    out = [dict(zip(cols, r, strict=True)) for r in rows]
    return [r for r in out if all(r.get(k) == v for k, v in equal.items())]


def wait_for_rows(ledger_url: str, count: int, timeout: float = 20.0, **equal: Any) -> list[dict[str, Any]]:
    """Poll the ledger until ``count`` rows match (the writer is asynchronous); returns them."""
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = ledger_rows(ledger_url, **equal)
        if len(rows) >= count:
            return rows
        time.sleep(0.05)
    raise AssertionError(f"ledger has {len(rows)} rows matching {equal}, expected {count}")
