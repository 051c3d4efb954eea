"""``chargeback demo``: the whole stack on one machine, on embedded defaults.

Simulated upstreams serve three models in two GPU pools; the proxy (SQLite ledger), the GPU
exporter (four simulated GPUs), a real Prometheus with the project's rules, and an Alertmanager
that mails a local SMTP sink all run as real processes on 127.0.0.1. Ten users in four teams send
traffic through the official openai SDK; the research team's budget is small, so its budget alert
fires and lands in the sink. Then statements for the demo's window (from the stack's start to the
next whole minute) are written and everything is listed.

Time is compressed only where it is safe (1 s scrape and rule intervals, small budgets); every
figure is real. The same code runs the end-to-end test (``tests/test_e2e.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import email.policy
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from exporter.sim.harness import create_keys, start_proxy, start_simulator, write_config
from exporter.sim.traffic import TrafficResult, run_traffic
from exporter.stack import (
    ManagedProcess,
    StackError,
    chargeback_argv,
    free_port,
    rule_files,
    start_alertmanager,
    start_prometheus,
    wait_for,
)

MODELS = {
    # model → (pool, prompt weight, completion weight)
    "llama-3.1-70b-instruct": ("h100", 1, 3),
    "mixtral-8x7b-instruct": ("h100", 1, 2),
    "qwen2.5-7b-instruct": ("l40s", 1, 1),
}
TEAMS = {
    # team → (business unit, cost center, monthly budget in EUR, billing contact)
    "research": ("R&D", "CC-4100", "0.05", "research-lead@demo.example"),
    "support": ("Customer Operations", "CC-2300", "40", "support-ops@demo.example"),
    "marketing": ("Marketing", "CC-3300", "40", "marketing-ops@demo.example"),
    "legal": ("Legal & Compliance", "CC-5100", "40", "legal-ops@demo.example"),
}
USERS = {
    "alice@demo.example": "research",
    "arjun@demo.example": "research",
    "ana@demo.example": "research",
    "bob@demo.example": "support",
    "bea@demo.example": "support",
    "carla@demo.example": "marketing",
    "chen@demo.example": "marketing",
    "dmitri@demo.example": "legal",
    "dora@demo.example": "legal",
    "diego@demo.example": "legal",
}
# research sends most of the traffic: it is the team that overruns its budget
REQUESTS_PER_ROUND = {"research": 6, "support": 2, "marketing": 2, "legal": 1}
FINANCE = "finance@demo.example"
OPS = "sre@demo.example"
BUDGET_ALERT = "ChargebackTeamBudgetExceeded"


# --------------------------------------------------------------------------- SMTP sink


class SmtpSink:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 that keeps every message and writes it to disk."""

    def __init__(self, maildir: Path) -> None:
        from aiosmtpd.controller import Controller

        self.maildir = maildir
        self.maildir.mkdir(parents=True, exist_ok=True)
        self.messages: list[EmailMessage] = []
        self._lock = threading.Lock()
        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd hook
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        with self._lock:
            self.messages.append(msg)
            n = len(self.messages)
        (self.maildir / f"{n:03d}.eml").write_bytes(envelope.content)
        return "250 OK"

    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def find(self, needle: str) -> list[EmailMessage]:
        with self._lock:
            return [m for m in self.messages if needle in str(m.get("Subject", "")) or needle in _body(m)]


def _body(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain", "html"))
    return part.get_content() if part is not None else ""


# --------------------------------------------------------------------------- configuration


def demo_config(
    *,
    sim_url: str,
    workdir: Path,
    api_port: int,
    metrics_port: int,
    gpu_port: int,
    prometheus_url: str,
    smtp: str,
) -> dict[str, Any]:
    return {
        "currency": "EUR",
        "timezone": "UTC",
        "pools": {
            "h100": {"gpu_hourly_cost": 2.80, "gpu_indexes": [0, 1], "capacity_tokens_per_second": 3000},
            "l40s": {"gpu_hourly_cost": 0.95, "gpu_indexes": [2, 3], "capacity_tokens_per_second": 1200},
        },
        "models": {
            name: {
                "upstreams": [f"{sim_url}/v1"],
                "pool": pool,
                "api_key": "sk-upstream-secret",
                "token_weights": {"prompt": wp, "completion": wc},
            }
            for name, (pool, wp, wc) in MODELS.items()
        },
        "teams": {
            t: {"business_unit": bu, "cost_center": cc, "budget": float(b), "billing_contacts": [contact]}
            for t, (bu, cc, b, contact) in TEAMS.items()
        },
        "users": {u: {"team": t} for u, t in USERS.items()},
        "ledger": {
            "url": f"sqlite:///{workdir / 'ledger.db'}",
            "spool_dir": str(workdir / "spool"),
            "flush_interval_seconds": 0.2,
        },
        "proxy": {
            "listen": [f"127.0.0.1:{api_port}"],
            "metrics_listen": f"127.0.0.1:{metrics_port}",
            "key_refresh_seconds": 1,
            "upstream_timeout_seconds": 30,
            "shutdown_grace_seconds": 10,
        },
        "gpu_exporter": {"listen": f"127.0.0.1:{gpu_port}"},
        "prometheus": {"url": prometheus_url, "timeout_seconds": 30},
        "report": {
            "method": "token-share",
            "realtime_method": "token-share",
            "idle_handling": "spread",
            "output_dir": str(workdir / "statements"),
            "finance_recipients": [FINANCE],
            # parameters of the other methods, scaled to a demo that runs for minutes
            "hybrid": {"weights": {"token_share": 0.6, "time_share": 0.2, "equal_split": 0.2}},
            "tiers": [{"up_to_tokens": 20000, "price_per_million": 2.0}, {"price_per_million": 1.0}],
            "flat_fee": {
                "default": {"monthly_fee": 0.02, "included_tokens": 10000, "overage_per_million": 1.5}
            },
        },
        "smtp": {
            "host": "127.0.0.1",
            "port": int(smtp.rsplit(":", 1)[1]),
            "security": "none",
            "from": "chargeback@demo.example",
        },
    }


# --------------------------------------------------------------------------- the stack


@dataclass
class DemoStack:
    workdir: Path
    config_path: Path
    config: dict[str, Any]
    tokens: dict[str, str]
    api_url: str
    metrics_url: str
    gpu_url: str
    prometheus: ManagedProcess
    alertmanager: ManagedProcess
    smtp: SmtpSink
    processes: list[ManagedProcess] = field(default_factory=list)
    traffic: TrafficResult = field(default_factory=TrafficResult)

    @property
    def prometheus_url(self) -> str:
        assert self.prometheus.url
        return self.prometheus.url

    def command(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``chargeback <args>`` on this stack's config, output captured."""
        return subprocess.run(
            chargeback_argv(*args, "--config.file", str(self.config_path)),
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@contextlib.contextmanager
def demo_stack(
    workdir: Path,
    *,
    remote_write_url: str | None = None,
    tokens_per_second: float = 400.0,
    budgets: dict[str, str] | None = None,
    gpu_hourly_costs: dict[str, str] | None = None,
) -> Iterator[DemoStack]:
    """Start every process of the demo; stop them all (in reverse order) when the block exits.
    ``budgets`` overrides teams' monthly budgets and ``gpu_hourly_costs`` pools' prices (EUR)."""
    workdir.mkdir(parents=True, exist_ok=True)
    started: list[Any] = []
    try:
        smtp = SmtpSink(workdir / "mail").start()
        started.append(smtp)
        sim = start_simulator(
            workdir, tokens_per_second=tokens_per_second, latency_ms=20, models=list(MODELS)
        )
        started.append(sim)
        api_port, metrics_port, gpu_port, prom_port = free_port(), free_port(), free_port(), free_port()
        prometheus_url = f"http://127.0.0.1:{prom_port}"
        assert sim.url
        doc = demo_config(
            sim_url=sim.url,
            workdir=workdir,
            api_port=api_port,
            metrics_port=metrics_port,
            gpu_port=gpu_port,
            prometheus_url=prometheus_url,
            smtp=smtp.address,
        )
        for team, budget in (budgets or {}).items():
            doc["teams"][team]["budget"] = float(budget)
        for pool, price in (gpu_hourly_costs or {}).items():
            doc["pools"][pool]["gpu_hourly_cost"] = float(price)
        config_path = write_config(workdir / "chargeback.yaml", doc)
        tokens = create_keys(doc["ledger"]["url"], USERS)
        proxy = start_proxy(workdir, config_path, port=api_port, metrics_port=metrics_port)
        started.append(proxy.process)
        gpu = ManagedProcess(
            "gpu-exporter",
            chargeback_argv("gpu-exporter", "--config.file", str(config_path), "--simulate", "4"),
            workdir,
            f"http://127.0.0.1:{gpu_port}",
            "/-/healthy",
        ).start()
        started.append(gpu)
        am = start_alertmanager(
            workdir,
            smtp.address,
            receiver_email=OPS,
            sender="alertmanager@demo.example",
            routes=[
                {
                    "receiver": "finance",
                    "matchers": ['alertname=~"ChargebackTeamBudget.*"'],
                    "continue": False,
                }
            ],
            extra_receivers=[{"name": "finance", "email_configs": [{"to": FINANCE, "send_resolved": False}]}],
        )
        started.append(am)
        prom = start_prometheus(
            workdir,
            {
                "chargeback-proxy": [f"127.0.0.1:{metrics_port}"],
                "chargeback-gpu-exporter": [f"127.0.0.1:{gpu_port}"],
            },
            rule_files=rule_files(),
            scrape_interval="1s",
            evaluation_interval="1s",
            alertmanager=am.url.removeprefix("http://") if am.url else None,
            remote_write_url=remote_write_url,
            port=prom_port,
        )
        started.append(prom)
        yield DemoStack(
            workdir=workdir,
            config_path=config_path,
            config=doc,
            tokens=tokens,
            api_url=proxy.url,
            metrics_url=proxy.metrics_url,
            gpu_url=f"http://127.0.0.1:{gpu_port}",
            prometheus=prom,
            alertmanager=am,
            smtp=smtp,
            processes=[sim, proxy.process, gpu, am, prom],
        )
    finally:
        for p in reversed(started):
            with contextlib.suppress(Exception):
                p.stop()


def drive_traffic(stack: DemoStack, seconds: float, seed: int = 7) -> TrafficResult:
    """Rounds of traffic from every user (research heaviest) until ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    round_no = 0
    while True:
        round_no += 1
        for team, per_user in REQUESTS_PER_ROUND.items():
            users = {u: stack.tokens[u] for u, t in USERS.items() if t == team}
            result = asyncio.run(
                run_traffic(
                    stack.api_url,
                    users,
                    list(MODELS),
                    requests_per_user=per_user,
                    stream_ratio=0.5,
                    seed=seed * 1000 + round_no * 10 + list(REQUESTS_PER_ROUND).index(team),
                    concurrency=8,
                )
            )
            stack.traffic.add(result)
        if time.monotonic() >= deadline:
            return stack.traffic


def wait_for_budget_email(stack: DemoStack, timeout: float = 150.0) -> EmailMessage:
    found = wait_for(lambda: stack.smtp.find(BUDGET_ALERT), timeout=timeout, what=f"the {BUDGET_ALERT} email")
    assert isinstance(found, list)
    return found[0]


def wait_for_next_minute(margin: float = 3.0) -> datetime:
    """Wait until a minute boundary lies after the last scrape of the traffic (scrapes run every
    second) and return that boundary: the statements' window ends there, on a whole minute."""
    now = time.time()
    boundary = now - now % 60 + 60
    if boundary - now < margin:
        boundary += 60
    time.sleep(boundary - now + 0.5)
    return datetime.fromtimestamp(boundary, UTC)


def demo_window(started: datetime, end: datetime) -> tuple[str, str]:
    """``--from``/``--to`` for the demo's statements: from the minute the stack started to ``end``.

    An explicit window rather than ``month-to-date``: the demo must give the same statements on
    any day, also when it runs across midnight at a month's end (the stack has no data before it
    started, so the window holds everything it measured)."""
    start = started.replace(second=0, microsecond=0)
    return start.strftime("%Y-%m-%dT%H:%M:%SZ"), end.strftime("%Y-%m-%dT%H:%M:%SZ")


def window_flags(window: tuple[str, str]) -> tuple[str, ...]:
    return ("--from", window[0], "--to", window[1])


def write_statements(
    stack: DemoStack, window: tuple[str, str], *extra: str
) -> subprocess.CompletedProcess[str]:
    out_dir = stack.workdir / "statements"
    return stack.command(
        "report",
        *window_flags(window),
        "--format",
        "html,csv,json,md",
        "--out",
        str(out_dir),
        *extra,
        timeout=300,
    )


def ledger_summary(stack: DemoStack) -> str:
    out = stack.command(
        "ledger",
        "query",
        "SELECT user_email, team, model, COUNT(*) AS requests, SUM(prompt_tokens) AS prompt, "
        "SUM(completion_tokens) AS completion, SUM(total_tokens) AS total "
        "FROM public.http_analytics GROUP BY user_email, team, model ORDER BY team, user_email, model",
        timeout=60,
    )
    return out.stdout if out.returncode == 0 else out.stderr


# --------------------------------------------------------------------------- the command


def run(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir).resolve()
    if workdir.exists() and any(workdir.iterdir()):
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        workdir = workdir / stamp
    keep_running = args.keep_running if args.keep_running is not None else sys.stdin.isatty()
    print(f"llm-chargeback demo: working directory {workdir}", flush=True)
    try:
        with demo_stack(workdir) as stack:
            started = datetime.now(UTC)
            print(
                f"  proxy API         {stack.api_url}/v1   (OpenAI-compatible; personal tokens in {workdir}/tokens.json)"
            )
            print(f"  proxy metrics     {stack.metrics_url}/metrics")
            print(f"  GPU exporter      {stack.gpu_url}/metrics   (4 simulated GPUs)")
            print(f"  Prometheus        {stack.prometheus_url}   (rules loaded from rules/)")
            print(f"  Alertmanager      {stack.alertmanager.url}")
            print(f"  SMTP sink         {stack.smtp.address} → {workdir / 'mail'}", flush=True)
            (workdir / "tokens.json").write_text(json.dumps(stack.tokens, indent=2) + "\n")
            print(
                f"\nsending traffic from {len(USERS)} users in {len(TEAMS)} teams for {args.traffic_seconds:.0f}s ...",
                flush=True,
            )
            traffic = drive_traffic(stack, args.traffic_seconds)
            print(
                f"  {traffic.requests} requests ({traffic.streamed} streamed), {len(traffic.errors)} errors, "
                f"{traffic.total_for().total_tokens} tokens",
                flush=True,
            )
            print(
                f"\nwaiting for {BUDGET_ALERT} (research's budget is {TEAMS['research'][2]} EUR) ...",
                flush=True,
            )
            try:
                msg = wait_for_budget_email(stack)
                print(f"  alert email delivered to {msg['To']}: {msg['Subject']}", flush=True)
            except StackError as exc:
                print(f"  {exc}", flush=True)
            print(
                "\nwaiting for the next full minute (the statements' window ends on a minute) ...",
                flush=True,
            )
            window = demo_window(started, wait_for_next_minute())
            print("\nledger summary (chargeback ledger query ... FROM public.http_analytics):")
            print(ledger_summary(stack))
            rep = write_statements(stack, window, "--email")
            print(rep.stdout.strip(), rep.stderr.strip(), sep="\n")
            cmp = stack.command("compare", *window_flags(window))
            print("\nwhat each allocation method would charge (chargeback compare):")
            print(cmp.stdout.strip() or cmp.stderr.strip())
            print(f"\nstatements: {workdir / 'statements'}")
            for path in sorted((workdir / "statements").glob("**/*"))[:20]:
                if path.is_file():
                    print(f"  {path}")
            print(f"mail: {workdir / 'mail'} ({len(stack.smtp.messages)} messages)")
            if keep_running:
                print("\nthe stack keeps running; press Ctrl-C to stop it.", flush=True)
                _wait_for_interrupt()
            print("stopping ...", flush=True)
    except StackError as exc:
        print(f"chargeback demo: {exc}", file=sys.stderr)
        return 1
    print("stopped.")
    return 0


def _wait_for_interrupt() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        while not stop.wait(1.0):
            pass
