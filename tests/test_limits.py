"""Limits that act (issue 15): real Redis, two proxy processes sharing it, the openai SDK as client
and the simulator (which counts the calls that reached it) upstream."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import openai
import pytest
import requests
from support.proxies import simulated_proxy_doc

from exporter.config import ConfigError, parse_config
from exporter.limits.limiter import Limiter
from exporter.limits.resp import RedisClient, RedisUnavailable
from exporter.limits.store import MemoryStore, RedisStore
from exporter.sim.harness import (
    ProxyProcess,
    create_keys,
    metric,
    read_metrics,
    start_proxy,
    wait_for_rows,
    write_config,
)
from exporter.sim.upstream import expected_usage

REDIS_URL = "redis://127.0.0.1:6379/0"
ALICE, BOB = "alice@corp.example", "bob@corp.example"
MESSAGES = [{"role": "user", "content": "count these five words"}]
BODY = {"model": "sim-small", "messages": MESSAGES, "max_tokens": 5}
TOKENS_PER_REQUEST = expected_usage("/v1/chat/completions", BODY)["total_tokens"]  # weights 1 and 1


def _start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """A private redis-server on 127.0.0.1:``port`` that keeps nothing on disk."""
    argv = [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        assert proc.poll() is None and time.monotonic() < deadline, "private redis-server did not start"
        time.sleep(0.05)


def _answers(url: str) -> bool:
    async def go() -> bool:
        c = RedisClient(url, timeout=2)
        try:
            return await c.execute("PING") == "PONG"
        except (OSError, RedisUnavailable):
            return False
        finally:
            await c.close()

    return asyncio.run(go())


@pytest.fixture(scope="module", autouse=True)
def _redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The machine's Redis (127.0.0.1:6379, or CHARGEBACK_TEST_REDIS_URL); when none answers, a
    private redis-server for this module (``make deps`` installs it)."""
    global REDIS_URL
    url = os.environ.get("CHARGEBACK_TEST_REDIS_URL", REDIS_URL)
    if _answers(url):
        REDIS_URL = url
        yield
        return
    if shutil.which("redis-server") is None:
        pytest.skip("no Redis answers on 127.0.0.1:6379 and redis-server is not installed (make deps)")
    from exporter.stack import free_port

    port = free_port()
    proc = _start_redis(port, tmp_path_factory.mktemp("redis"))
    REDIS_URL = f"redis://127.0.0.1:{port}/0"
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def _redis_keys(pattern: str) -> list[bytes]:
    async def go() -> list[bytes]:
        c = RedisClient(REDIS_URL, timeout=2)
        try:
            return list(await c.execute("KEYS", pattern))
        finally:
            await c.close()

    return asyncio.run(go())


def _redis_delete(pattern: str) -> None:
    async def go() -> None:
        c = RedisClient(REDIS_URL, timeout=2)
        try:
            keys = await c.execute("KEYS", pattern)
            if keys:
                await c.execute("DEL", *keys)
        finally:
            await c.close()

    asyncio.run(go())


@pytest.fixture
def namespace() -> Iterator[str]:
    ns = f"cbtest-{secrets.token_hex(4)}"
    yield ns
    _redis_delete(f"{ns}:*")


@dataclass
class Replicas:
    proxies: list[ProxyProcess]
    sim_url: str
    tokens: dict[str, str]
    ledger_url: str

    def client(self, i: int, user: str = ALICE) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.proxies[i].url + "/v1", api_key=self.tokens[user], max_retries=0)

    def upstream_calls(self) -> int:
        return int(requests.get(f"{self.sim_url}/sim/stats", timeout=5).json()["requests"])

    def chat_in_turn(self, n: int) -> tuple[int, list[openai.RateLimitError]]:
        """Alice sends ``n`` chats, one after the other, to the replicas in turn: how many passed, and
        the refusals in order."""
        passed, refused = 0, []
        for i in range(n):
            try:
                _chat(self.client(i % len(self.proxies)))
                passed += 1
            except openai.RateLimitError as exc:
                refused.append(exc)
        return passed, refused


@pytest.fixture
def replicas(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    started: list[Any] = []

    def start(
        limits: dict[str, Any], n: int = 2, timezone: str = "UTC", extra: dict[str, Any] | None = None
    ) -> Replicas:
        sim, ledger_url, doc = simulated_proxy_doc(
            tmp_path,
            users={ALICE: "research", BOB: "research"},
            extra={"limits": limits, "timezone": timezone, **(extra or {})},
        )
        started.append(sim)
        cfg = write_config(tmp_path / "chargeback.yaml", doc)
        tokens = create_keys(ledger_url, {ALICE: "research", BOB: "research"})
        proxies = []
        for i in range(n):
            p = start_proxy(tmp_path, cfg, name=f"proxy{i}")
            started.append(p)
            proxies.append(p)
        return Replicas(proxies, str(sim.url), tokens, ledger_url)

    yield start
    for p in reversed(started):
        p.stop()


def _usage(proxy: ProxyProcess, token: str) -> dict[str, Any]:
    """GET /v1/usage with a key holder's own token."""
    got = requests.get(proxy.url + "/v1/usage", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    return dict(got.json())


def _assert_refused(err: openai.RateLimitError, code: str, message: str) -> None:
    assert err.body["code"] == code
    assert re.fullmatch(message, err.body["message"]), err.body["message"]


def _chat(client: openai.OpenAI) -> Any:
    return client.chat.completions.create(model="sim-small", messages=MESSAGES, max_tokens=5)


def test_quota_lets_exactly_what_fits_through_across_two_replicas(replicas: Any, namespace: str) -> None:
    fits = 5
    r = replicas(
        {
            "store": {"url": REDIS_URL, "namespace": namespace},
            "teams": {"research": {"enforce": "block", "monthly_tokens": fits * TOKENS_PER_REQUEST}},
        }
    )
    passed, refused = r.chat_in_turn(fits + 4)
    assert passed == fits
    assert len(refused) == 4
    assert r.upstream_calls() == fits  # blocked requests cost no upstream call
    err = refused[0]
    assert err.status_code == 429
    body = err.body
    assert body["code"] == "quota_exceeded" and body["type"] == "quota_exceeded"
    used = fits * TOKENS_PER_REQUEST
    # the month's name and reset date are checked with an injected clock below; here only the shape
    assert re.fullmatch(
        f"team research has used {used:,} of its {used:,} weighted-token quota for"
        r" [A-Z][a-z]+ \d{4} \(UTC\); it resets on \d{4}-\d{2}-01",
        body["message"],
    ), body["message"]
    assert "Retry-After" not in err.response.headers
    # refusals are in the ledger with their own code and reason, and in the counters
    rows = wait_for_rows(r.ledger_url, 4, status_code=429)
    assert {row["error"].split(":")[0] for row in rows} == {"quota_exceeded"}
    assert all(row["upstream"] == "" and row["total_tokens"] == 0 for row in rows)
    total = sum(
        metric(read_metrics(p.metrics_url), "chargeback_limit_rejections_total", team="research", user=ALICE)
        for p in r.proxies
    )
    assert total == 4
    assert all(metric(read_metrics(p.metrics_url), "chargeback_limit_store_up") == 1 for p in r.proxies)
    # the namespace's keys carry the billing month
    keys = [k.decode() for k in _redis_keys(f"{namespace}:*")]
    assert any(re.fullmatch(f"{namespace}:\\d{{4}}-\\d{{2}}:team:research", k) for k in keys), keys


def test_budget_blocks_with_a_message_a_person_understands(replicas: Any, namespace: str) -> None:
    # price: 1,000,000 per million weighted tokens = 1 EUR per token; budget 2.5 requests' worth
    r = replicas(
        {
            "store": {"url": REDIS_URL, "namespace": namespace},
            "price_per_million_weighted_tokens": {"sim-small": 1000000},
            "teams": {"research": {"enforce": "block", "budget": TOKENS_PER_REQUEST * 2.5}},
        },
        timezone="Europe/Berlin",
    )
    for i in range(3):
        _chat(r.client(i % 2))
    with pytest.raises(openai.RateLimitError) as info:
        _chat(r.client(1, BOB))
    assert r.upstream_calls() == 3
    used = Decimal(3 * TOKENS_PER_REQUEST)
    budget = Decimal(TOKENS_PER_REQUEST) * Decimal("2.5")
    _assert_refused(
        info.value,
        "budget_exceeded",
        f"team research has used {used:,.2f} of its {budget:,.2f} EUR budget for"
        r" [A-Z][a-z]+ \d{4} \(Europe/Berlin\); it resets on \d{4}-\d{2}-01",
    )
    doc = _usage(r.proxies[0], r.tokens[BOB])  # self-service usage: own numbers only
    assert doc["user"] == BOB and doc["team"] == "research"
    assert doc["models"] == []  # Bob's only request was refused
    assert doc["team_budget"]["used"] == f"{used:.2f}"
    assert doc["team_budget"]["remaining"] == "0.00"
    assert ALICE not in str(doc)
    doc = _usage(r.proxies[1], r.tokens[ALICE])
    (m,) = doc["models"]
    assert m["model"] == "sim-small" and m["requests"] == 3
    assert m["estimated_spend"] == f"{used:.2f}"
    assert doc["limits"][0]["limit"] == "budget" and doc["limits"][0]["enforce"] == "block"


def test_budget_reconciled_with_the_recording_rules_month_to_date(
    replicas: Any, namespace: str, tmp_path: Path
) -> None:
    """The statement estimate (team:chargeback_spend:month_to_date, from a real Prometheus) blocks a
    team whose unit-price figure is still far below its budget."""
    import yaml

    from exporter.stack import start_prometheus

    rules = tmp_path / "mtd.yaml"
    rules.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "test-mtd",
                        "rules": [
                            {
                                "record": "team:chargeback_spend:month_to_date",
                                "expr": 'label_replace(vector(6012.334), "team", "research", "", "")',
                            }
                        ],
                    }
                ]
            }
        )
    )
    prom = start_prometheus(tmp_path / "prom", rule_files=[rules])
    try:
        deadline = time.monotonic() + 30
        while not requests.get(
            f"{prom.url}/api/v1/query", params={"query": "team:chargeback_spend:month_to_date"}, timeout=5
        ).json()["data"]["result"]:
            assert time.monotonic() < deadline, "the recording rule never evaluated"
            time.sleep(0.2)
        r = replicas(
            {
                "store": {"url": REDIS_URL, "namespace": namespace},
                "reconcile_with_prometheus_seconds": 5,
                "teams": {"research": {"enforce": "block", "budget": 5000}},
            },
            n=1,
            extra={"prometheus": {"url": prom.url}},
        )
        with pytest.raises(openai.RateLimitError) as info:
            _chat(r.client(0))
        assert r.upstream_calls() == 0
        _assert_refused(
            info.value,
            "budget_exceeded",
            r"team research has used 6,012.33 of its 5,000.00 EUR budget for [A-Z][a-z]+ \d{4} \(UTC\);"
            r" it resets on \d{4}-\d{2}-01",
        )
        doc = _usage(r.proxies[0], r.tokens[ALICE])
        assert doc["team_budget"]["statement_month_to_date"] == "6012.33"
        assert doc["team_budget"]["used"] == "0.00"  # the unit-price figure: nothing was forwarded
    finally:
        prom.stop()


def test_rate_limit_holds_within_one_window(replicas: Any, namespace: str) -> None:
    rpm = 6
    r = replicas(
        {
            "store": {"url": REDIS_URL, "namespace": namespace},
            "users": {ALICE: {"enforce": "block", "requests_per_minute": rpm}},
        }
    )
    window = _wait_for_fresh_minute()  # so that all requests share one window
    passed, refused = r.chat_in_turn(rpm + 5)
    same_window = int(time.time() // 60) == window
    assert rpm <= passed <= 2 * rpm
    if same_window:
        assert passed == rpm
    assert refused and refused[0].body["code"] == "rate_limited"
    retry = int(refused[0].response.headers["Retry-After"])
    assert 1 <= retry <= 60
    assert refused[0].body["message"] == (
        f"user {ALICE} has reached their limit of {rpm} requests per minute; retry in {retry} s"
    )
    _chat(r.client(0, BOB))  # Bob has no limit
    assert r.upstream_calls() == passed + 1


def _wait_for_fresh_minute(need_seconds: float = 15) -> int:
    if 60 - time.time() % 60 < need_seconds:
        time.sleep(60 - time.time() % 60 + 0.2)
    return int(time.time() // 60)


def test_concurrent_requests_on_two_replicas_never_pass_a_rate_limit_twice(
    replicas: Any, namespace: str
) -> None:
    """The check is one atomic script: 24 requests at once through both replicas, 7 per minute allowed."""
    from concurrent.futures import ThreadPoolExecutor

    rpm = 7
    r = replicas(
        {
            "store": {"url": REDIS_URL, "namespace": namespace},
            "teams": {"research": {"enforce": "block", "requests_per_minute": rpm}},
        }
    )
    clients = [r.client(0), r.client(1, BOB)]
    window = _wait_for_fresh_minute()

    def one(i: int) -> int:
        try:
            _chat(clients[i % 2])
            return 200
        except openai.RateLimitError:
            return 429

    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(one, range(24)))
    passed = codes.count(200)
    assert rpm <= passed <= 2 * rpm  # within one window's tolerance in any case
    if int(time.time() // 60) == window:
        assert passed == rpm
    assert codes.count(429) == 24 - passed
    assert r.upstream_calls() == passed


def test_tokens_per_minute(replicas: Any, namespace: str) -> None:
    r = replicas(
        {
            "store": {"url": REDIS_URL, "namespace": namespace},
            "users": {BOB: {"enforce": "block", "tokens_per_minute": 2 * TOKENS_PER_REQUEST + 1}},
        },
        n=1,
    )
    window = _wait_for_fresh_minute()
    passed = 0
    with pytest.raises(openai.RateLimitError) as info:
        for _ in range(10):
            _chat(r.client(0, BOB))
            passed += 1
    if int(time.time() // 60) == window:
        assert passed == 3  # 2 × N + 1 tokens: the third request starts below the line and crosses it
    retry = int(info.value.response.headers["Retry-After"])
    assert info.value.body["message"] == (
        f"user {BOB} has used {passed * TOKENS_PER_REQUEST:,} of their {2 * TOKENS_PER_REQUEST + 1:,}"
        f" tokens per minute; retry in {retry} s"
    )
    assert r.upstream_calls() == passed


def test_alert_only_limits_never_block(replicas: Any, namespace: str) -> None:
    r = replicas(
        {"store": {"url": REDIS_URL, "namespace": namespace}, "teams": {"research": {"monthly_tokens": 1}}},
        n=1,
    )
    for _ in range(3):
        _chat(r.client(0))
    assert r.upstream_calls() == 3
    samples = read_metrics(r.proxies[0].metrics_url)
    deadline = time.monotonic() + 5
    while (
        metric(samples, "chargeback_limit_remaining_weighted_tokens", team="research")
        != 1 - 3 * TOKENS_PER_REQUEST
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
        samples = read_metrics(r.proxies[0].metrics_url)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_redis_down_fails_open_with_the_metric_set(replicas: Any) -> None:
    r = replicas(
        {
            "store": {"url": f"redis://127.0.0.1:{_closed_port()}/0", "retry_seconds": 30},
            "teams": {"research": {"enforce": "block", "monthly_tokens": 1}},
        },
        n=1,
    )
    for _ in range(3):
        _chat(r.client(0))  # the quota is long exceeded, but nobody can tell
    assert r.upstream_calls() == 3
    samples = read_metrics(r.proxies[0].metrics_url)
    assert metric(samples, "chargeback_limit_store_up") == 0
    assert metric(samples, "chargeback_limit_unchecked_requests_total") == 3
    assert metric(samples, "chargeback_limit_store_errors_total") >= 1


def test_expired_and_rotated_keys(tmp_path: Path) -> None:
    from exporter.ledger.store import open_store
    from exporter.sim.harness import proxy_stack

    with proxy_stack(tmp_path, users={ALICE: "research"}) as stack:
        store = open_store(stack.ledger_url)
        try:
            old_token, old = store.create_key(BOB, "research", "2020-01-01T00:00:00Z")
            live_token, live = store.create_key(BOB, "research", "2099-01-01T00:00:00Z")
            new_token, new, rotated = store.rotate_key(live.key_id, 0)
        finally:
            store.close()
        assert rotated.rotated_to == new.key_id
        assert new.expires_at is not None and rotated.expires_at is not None
        time.sleep(0.6)  # the proxy refreshes keys every 0.2 s

        def call(token: str) -> Any:
            return openai.OpenAI(base_url=stack.api_url + "/v1", api_key=token, max_retries=0)

        with pytest.raises(openai.AuthenticationError) as info:
            _chat(call(old_token))
        assert info.value.body["code"] == "expired_api_key"
        assert info.value.body["message"] == (
            f"API key {old.key_id} expired at 2020-01-01T00:00:00Z; ask your administrator for a new key"
        )
        with pytest.raises(openai.AuthenticationError) as info:
            _chat(call(live_token))
        assert info.value.body["message"] == (
            f"API key {live.key_id} expired at {rotated.expires_at}: it was rotated to {new.key_id};"
            " use the new key"
        )
        _chat(call(new_token))
        # this proxy's config has no limits: section, so it keeps no monthly counters to report
        got = requests.get(
            stack.api_url + "/v1/usage", headers={"Authorization": f"Bearer {new_token}"}, timeout=5
        )
        assert got.status_code == 404 and got.json()["error"]["code"] == "usage_not_tracked"
        got = requests.get(
            stack.api_url + "/v1/usage", headers={"Authorization": f"Bearer {old_token}"}, timeout=5
        )
        assert got.status_code == 401 and got.json()["error"]["code"] == "expired_api_key"
        # last use is written in a batch with the next key refresh
        deadline = time.monotonic() + 5
        while True:
            store = open_store(stack.ledger_url)
            try:
                keys = {k.key_id: k for k in store.list_keys()}
            finally:
                store.close()
            if keys[new.key_id].last_used_at is not None:
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert keys[old.key_id].last_used_at is None


# --------------------------------------------------------------------------- injected clock


CONFIG = """
timezone: Europe/Berlin
pools: {p: {gpu_hourly_cost: 3.6, gpus: 1, capacity_tokens_per_second: 1000}}
models: {m: {upstream: "http://127.0.0.1:1/v1", pool: p}}
teams: {research: {budget: 100}}
users: {"alice@corp.example": research}
limits:
  store: {url: %s, namespace: %s}
  teams: {research: {enforce: block, monthly_tokens: 100}}
"""


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_month_rollover_in_berlin_resets_quotas_at_local_midnight(backend: str, namespace: str) -> None:
    url = REDIS_URL if backend == "redis" else "null"
    cfg = parse_config(CONFIG % (url, namespace))
    berlin = ZoneInfo("Europe/Berlin")
    now = [datetime(2026, 12, 31, 23, 59, 0, tzinfo=berlin).timestamp()]  # 22:59 UTC
    store = RedisStore(REDIS_URL, namespace, 1.0) if backend == "redis" else MemoryStore()
    limiter = Limiter(cfg, store=store, clock=lambda: now[0])
    model = cfg.models["m"]

    async def scenario() -> None:
        assert await limiter.check(ALICE, "research") is None
        limiter.record(ALICE, "research", model, 60, 40)
        await asyncio.sleep(0.05)
        refused = await limiter.check(ALICE, "research")
        assert refused is not None and refused.code == "quota_exceeded"
        assert refused.message == (
            "team research has used 100 of its 100 weighted-token quota for December 2026"
            " (Europe/Berlin); it resets on 2027-01-01"
        )
        now[0] += 59.9  # 23:59:59.9 local: still December
        assert await limiter.check(ALICE, "research") is not None
        now[0] += 0.1  # local midnight (23:00 UTC): a new month
        assert await limiter.check(ALICE, "research") is None
        doc = await limiter.usage(ALICE, "research")
        assert doc["period"]["month"] == "2027-01"
        assert doc["period"]["start"] == "2026-12-31T23:00:00Z"
        # spend at the proxy price: 3.6/h / 3600 / 1000 tokens/s = 1e-6 per weighted token
        assert doc["limits"][0] == {
            "scope": "team",
            "name": "research",
            "limit": "budget",
            "enforce": "block",  # the team's enforce applies to the budget it inherits
            "value": "100.00",
            "used": "0.00",
            "remaining": "100.00",
            "used_ratio": 0.0,
            "period": "month",
            "resets_at": "2027-02-01T00:00:00+01:00",
        }
        await limiter.close()

    asyncio.run(scenario())


def test_limits_config_errors_name_the_key() -> None:
    base = CONFIG.split("limits:")[0]
    with pytest.raises(ConfigError, match=r"limits.teams.research.enforce: expected one of alert, block"):
        parse_config(base + "limits: {teams: {research: {enforce: stop}}}")
    with pytest.raises(ConfigError, match=r"limits.teams.nobody: unknown team"):
        parse_config(base + "limits: {teams: {nobody: {budget: 1}}}")
    with pytest.raises(
        ConfigError, match=r'limits.teams.research.requests_per_minute: expected a number, got "lots"'
    ):
        parse_config(base + "limits: {teams: {research: {requests_per_minute: lots}}}")
    with pytest.raises(ConfigError, match=r"limits.store.url: expected redis://"):
        parse_config(base + "limits: {store: {url: 'http://x'}}")
    no_capacity = base.replace(", capacity_tokens_per_second: 1000", "")
    with pytest.raises(ConfigError, match=r"a blocking budget needs a price for model m"):
        parse_config(no_capacity + "limits: {teams: {research: {enforce: block}}}")


# --------------------------------------------------------------------------- command line


def test_keys_expiry_rotation_import_and_usage_on_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from support.ledger import make_row

    from exporter import cli
    from exporter.ledger.store import open_store

    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    cfg = tmp_path / "chargeback.yaml"
    cfg.write_text(
        CONFIG.replace("url: %s, namespace: %s", "namespace: x").replace(
            'users: {"alice@corp.example": research}', f"users: {{{ALICE}: research, {BOB}: research}}"
        )
        + f"ledger: {{url: '{ledger_url}'}}\n"
    )

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main([*argv, "--config.file", str(cfg)])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = run("keys", "create", "--user", ALICE, "--expires", "90d")
    assert code == 0, err
    key_id = out.split("key id: ")[1].split()[0]
    expires = out.split("expires: ")[1].split()[0]
    created = datetime.fromisoformat(expires.replace("Z", "+00:00")).timestamp()
    assert abs(created - (time.time() + 90 * 86400)) < 60
    code, _, err = run("keys", "create", "--user", ALICE, "--expires", "soon")
    assert code == 2 and "--expires 'soon': expected a duration (90d, 12h, 2w) or a date" in err

    code, out, err = run("keys", "rotate", key_id, "--overlap", "1h")
    assert code == 0, err
    new_id = out.split("key id: ")[1].split()[0]
    old_until = out.split("which works until ")[1].split(")")[0]
    assert (
        abs(datetime.fromisoformat(old_until.replace("Z", "+00:00")).timestamp() - (time.time() + 3600)) < 60
    )
    new_expires = out.split("expires: ")[1].split()[0]
    assert abs(datetime.fromisoformat(new_expires.replace("Z", "+00:00")).timestamp() - created) < 60

    code, out, _ = run("keys", "list", "--csv")
    rows = {r.split(",")[0]: r.split(",") for r in out.splitlines()[1:]}
    assert rows[key_id][6] == old_until and rows[key_id][8] == new_id
    assert rows[new_id][6] == new_expires and rows[new_id][7] == ""  # never used yet

    src = tmp_path / "keys.csv"
    src.write_text(f"user,team,expires\n{BOB},research,30d\n{BOB},research,\n")
    code, out, err = run("keys", "import", str(src), "--out", str(tmp_path / "tokens.csv"))
    assert code == 0, err
    store = open_store(ledger_url)
    try:
        bob = sorted((k for k in store.list_keys() if k.user_email == BOB), key=lambda k: k.expires_at or "")
        assert bob[0].expires_at is None
        assert bob[1].expires_at is not None
        # usage from the ledger (no Redis configured): one request of alice on model m this month
        store.insert_rows(
            [
                make_row(
                    1,
                    request_id="r1",
                    timestamp="2026-11-15T10:00:00Z",
                    user_email=ALICE,
                    team="research",
                    model="m",
                    prompt_tokens=30,
                    completion_tokens=20,
                    total_tokens=50,
                )
            ]
        )
    finally:
        store.close()
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ("exporter.limits.cli",))
    code, out, err = run("usage", "--user", ALICE, "--now", "2026-11-20T12:00:00")
    assert code == 0, err
    import json

    doc = json.loads(out)
    assert doc["period"]["month"] == "2026-11" and doc["period"]["timezone"] == "Europe/Berlin"
    (m,) = doc["models"]
    assert (m["model"], m["requests"], m["prompt_tokens"], m["completion_tokens"]) == ("m", 1, 30, 20)
    assert m["weighted_tokens"] == "50" and m["estimated_spend"] == "0.00"  # 50 × 1e-6 EUR
    assert doc["team_budget"] == {
        "budget": "100.00",
        "used": "0.00",
        "remaining": "100.00",
        "used_ratio": 0.0,
        "enforce": "block",
    }
    quota = next(lim for lim in doc["limits"] if lim["limit"] == "monthly_tokens")
    assert (quota["used"], quota["remaining"], quota["used_ratio"]) == ("50", "50", 0.5)


def test_a_killed_redis_fails_open_and_enforcement_resumes_when_it_is_back(
    replicas: Any, tmp_path: Path
) -> None:
    from exporter.stack import free_port

    port = free_port()
    redis = _start_redis(port, tmp_path)
    try:
        r = replicas(
            {
                "store": {"url": f"redis://127.0.0.1:{port}/0", "retry_seconds": 0.5},
                "teams": {"research": {"enforce": "block", "monthly_tokens": 2 * TOKENS_PER_REQUEST}},
            }
        )
        _chat(r.client(0))
        _chat(r.client(1))
        with pytest.raises(openai.RateLimitError):
            _chat(r.client(0))
        redis.kill()
        redis.wait()
        for i in range(3):
            _chat(r.client(i % 2))  # fail-open: the proxies cannot tell that the quota is used up
        for p in r.proxies:
            samples = read_metrics(p.metrics_url)
            assert metric(samples, "chargeback_limit_store_up") == 0
        redis = _start_redis(port, tmp_path)  # empty again: this Redis keeps nothing on disk
        deadline = time.monotonic() + 10
        while not all(
            metric(read_metrics(p.metrics_url), "chargeback_limit_store_up") == 1 for p in r.proxies
        ):
            assert time.monotonic() < deadline, "the proxies did not notice Redis is back"
            time.sleep(0.2)
        _chat(r.client(0))
        _chat(r.client(1))
        with pytest.raises(openai.RateLimitError):
            _chat(r.client(1))
        assert r.upstream_calls() == 2 + 3 + 2
    finally:
        redis.kill()
        redis.wait()


def test_key_expiry_rotation_and_last_use_on_both_ledger_backends(ledger_url: str) -> None:
    """Schema version 5 on SQLite and PostgreSQL: expiry, rotation and batched last use."""
    from exporter.ledger.store import StoreError, open_store

    store = open_store(ledger_url)
    try:
        assert store.query("SELECT MAX(version) FROM schema_version")[1][0][0] == 5
        _, plain = store.create_key(ALICE, "research")
        _, expiring = store.create_key(ALICE, "research", "2099-06-30T12:00:00Z")
        (_, imported), (_, imported_plain) = store.create_keys(
            [(BOB, "research", "2099-01-01T00:00:00Z"), (BOB, "research")]
        )
        token, new, old = store.rotate_key(expiring.key_id, 3600)
        assert old.rotated_to == new.key_id and old.expires_at is not None
        assert new.expires_at is not None and new.expires_at > old.expires_at
        with pytest.raises(StoreError, match="no key 'key_nope'"):
            store.rotate_key("key_nope", 60)
        store.touch_keys({plain.key_id: "2026-12-01T10:00:00Z", new.key_id: "2026-12-01T11:00:00Z"})
        store.touch_keys({plain.key_id: "2026-12-01T09:00:00Z"})  # older: ignored
        keys = {k.key_id: k for k in store.list_keys()}
        assert keys[plain.key_id].last_used_at == "2026-12-01T10:00:00Z"
        assert keys[new.key_id].last_used_at == "2026-12-01T11:00:00Z"
        assert keys[plain.key_id].expires_at is None
        assert keys[imported.key_id].expires_at == "2099-01-01T00:00:00Z"
        assert keys[imported_plain.key_id].expires_at is None
        active = dict(store.load_active_keys())
        assert {r.key_id for r in active.values()} == set(keys)  # expired keys load too (for the 401 text)
        assert token.startswith("cbk_")
    finally:
        store.close()


def test_usage_on_the_command_line_without_a_limits_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from exporter import cli

    cfg = tmp_path / "chargeback.yaml"
    cfg.write_text(CONFIG.split("limits:")[0] + f"ledger: {{url: 'sqlite:///{tmp_path / 'ledger.db'}'}}\n")
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ("exporter.limits.cli",))
    code = cli.main(["usage", "--user", ALICE, "--now", "2026-11-20T12:00:00", "--config.file", str(cfg)])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert doc["models"] == [] and doc["totals"]["requests"] == 0
    assert doc["team_budget"]["budget"] == "100.00" and doc["team_budget"]["enforce"] == "alert"
    assert [lim["limit"] for lim in doc["limits"]] == ["budget"]


def test_user_budget_and_quota_messages_in_process() -> None:
    """A user's own limits ("their"), checked after the team's; in-process store, injected clock."""
    cfg = parse_config(
        CONFIG.replace("url: %s, namespace: %s", "namespace: x").replace(
            "  teams: {research: {enforce: block, monthly_tokens: 100}}",
            "  teams: {research: {monthly_tokens: 100}}\n"  # alert only: never refuses
            "  users: {alice@corp.example: {enforce: block, budget: 1, monthly_tokens: 1000}}\n"
            "  price_per_million_weighted_tokens: {m: 10000}",  # 0.01 EUR per weighted token
        )
    )
    now = datetime(2026, 3, 15, 12, 0, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
    limiter = Limiter(cfg, store=MemoryStore(), clock=lambda: now)
    model = cfg.models["m"]

    async def scenario() -> None:
        assert await limiter.check(ALICE, "research") is None
        limiter.record(ALICE, "research", model, 80, 40)  # 120 weighted tokens × 0.01 = 1.20 EUR
        refused = await limiter.check(ALICE, "research")
        assert refused is not None and (refused.code, refused.scope) == ("budget_exceeded", "user")
        assert refused.message == (
            "user alice@corp.example has used 1.20 of their 1.00 EUR budget for March 2026"
            " (Europe/Berlin); it resets on 2026-04-01"
        )
        assert await limiter.check(BOB, "research") is None  # the team's quota only alerts
        doc = await limiter.usage(ALICE, "research")
        team_quota, user_budget, user_quota = doc["limits"][1], doc["limits"][2], doc["limits"][3]
        assert (team_quota["limit"], team_quota["used"], team_quota["remaining"]) == (
            "monthly_tokens",
            "120",
            "0",
        )
        assert (user_budget["used"], user_budget["remaining"], user_budget["enforce"]) == (
            "1.20",
            "0.00",
            "block",
        )
        assert doc["totals"]["estimated_spend"] == "1.20" and doc["models"][0]["price_source"] == "configured"
        assert (user_quota["used"], user_quota["used_ratio"]) == ("120", 0.12)
        assert limiter.metrics.rejections == {("research", ALICE, "budget"): 1}

    asyncio.run(scenario())


# --------------------------------------------------------------------------- leases


LEASE_CONFIG = """
pools: {p: {gpu_hourly_cost: 3.6, gpus: 1, capacity_tokens_per_second: 1000}}
models: {m: {upstream: "http://127.0.0.1:1/v1", pool: p}}
teams: {research: {}}
users: {"alice@corp.example": research, "bob@corp.example": research}
limits:
  store: {url: %s, namespace: %s}
  teams: {research: {enforce: block, %s}}
"""


def _two_replicas(limits: str, namespace: str, now: list[float]) -> list[Limiter]:
    cfg = parse_config(LEASE_CONFIG % (REDIS_URL, namespace, limits))
    return [Limiter(cfg, store=RedisStore(REDIS_URL, namespace, 1.0), clock=lambda: now[0]) for _ in range(2)]


async def _sequential_client(
    replicas: list[Limiter], attempts: int, prompt: int, completion: int
) -> list[int]:
    """One client sending one request at a time, alternating between the replicas; each response is
    complete (its usage recorded in Redis) before the next request is sent. Returns the passed ones."""
    model = replicas[0].cfg.models["m"]
    passed = []
    for i in range(attempts):
        lim = replicas[i % 2]
        if await lim.check(ALICE if i % 3 else BOB, "research") is None:
            passed.append(i)
            lim.record(ALICE if i % 3 else BOB, "research", model, prompt, completion)
            assert isinstance(lim.store, RedisStore)
            await lim.store.ping()  # the record is ahead of it on the same connection
    return passed


@pytest.mark.parametrize(
    ("limits", "attempts", "fits", "message"),
    [
        (
            "monthly_tokens: 10000",
            1010,
            1000,
            "team research has used 10,000 of its 10,000 weighted-token quota",
        ),
        (
            "requests_per_minute: 600",
            610,
            600,
            "team research has reached its limit of 600 requests per minute",
        ),
    ],
)
def test_leases_admit_locally_far_from_the_limit_and_exactly_up_to_it(
    namespace: str, limits: str, attempts: int, fits: int, message: str
) -> None:
    """Two replicas sharing Redis: most requests pass on a lease (no round trip), and still exactly
    as many as fit pass (requests of 10 weighted tokens), none after."""
    now = [datetime(2026, 12, 10, 12, 0, 5, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()]  # one minute
    replicas = _two_replicas(limits, namespace, now)

    async def scenario() -> None:
        try:
            passed = await _sequential_client(replicas, attempts, 6, 4)
            assert len(passed) == fits and passed[-1] == fits - 1
            local = sum(r.local_admissions for r in replicas)
            assert local >= fits // 2, local  # leases stop 16 × 8 average requests before the line
            assert all(not r.leases for r in replicas)  # near the line, every lease was given back
            refused = await replicas[0].check(ALICE, "research")
            assert refused is not None and refused.message.startswith(message), refused.message
        finally:
            for r in replicas:
                await r.close()

    asyncio.run(scenario())


def _redis_hash(key: str) -> dict[str, str]:
    async def go() -> dict[str, str]:
        c = RedisClient(REDIS_URL, timeout=2)
        try:
            flat = await c.execute("HGETALL", key)
            return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}
        finally:
            await c.close()

    return asyncio.run(go())


def test_a_lease_is_given_back_at_shutdown_and_freed_when_its_replica_died(namespace: str) -> None:
    now = [datetime(2026, 12, 10, 12, 0, 5, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()]
    key = f"{namespace}:2026-12:team:research:l"

    async def lease_one(lim: Limiter) -> None:
        model = lim.cfg.models["m"]
        for _ in range(2):  # a lease needs usage this month (an average request) to be granted
            assert await lim.check(ALICE, "research") is None
            lim.record(ALICE, "research", model, 6, 4)
            assert isinstance(lim.store, RedisStore)
            await lim.store.ping()

    async def given_back() -> None:
        a, _ = _two_replicas("monthly_tokens: 1000000", namespace, now)
        await lease_one(a)
        assert set(a.leases) == {("team", "research", "m")}
        await a.close()

    asyncio.run(given_back())
    assert _redis_hash(key) == {}
    # the batched usage was sent before the lease went back: both requests are counted
    counters = _redis_hash(key[: -len(":l")])
    assert (counters["requests"], counters["tokens"]) == ("2", "20000")

    async def died() -> tuple[str, Limiter]:
        a, b = _two_replicas("monthly_tokens: 1000000", namespace, now)
        await lease_one(a)
        assert isinstance(a.store, RedisStore)
        a.flush_records()  # usage covered by a lease is sent in batches
        await a.store.ping()
        await a.store.close()  # gone without giving anything back
        return a.replica, b

    dead, b = asyncio.run(died())
    # "spend tokens expiry": granted on its first request (the month had 20 weighted tokens from the
    # first replica): 1/16 of the rest, in thousandths, less both requests' usage
    granted = (1_000_000 - 20) * 1000 // 16
    assert _redis_hash(key)[dead].split()[:2] == ["0", str(granted - 2 * 10_000)]
    now[0] += 31  # past the dead replica's lease expiry

    async def other_replica() -> None:
        assert await b.check(BOB, "research") is None  # its exact check frees the dead lease
        await b.close()

    asyncio.run(other_replica())
    assert dead not in _redis_hash(key)


def test_leases_with_requests_in_flight_on_two_replicas_stop_within_the_requests_in_flight(
    namespace: str,
) -> None:
    """Eight clients at once on two replicas (a request is in flight between its check and its
    record): what passes is what fits plus at most the requests in flight, as without leases."""
    now = [datetime(2026, 12, 10, 12, 0, 5, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()]
    replicas = _two_replicas("monthly_tokens: 10000", namespace, now)
    model = replicas[0].cfg.models["m"]
    passed = 0

    async def client(i: int) -> None:
        nonlocal passed
        lim = replicas[i % 2]
        for _ in range(200):
            if await lim.check(ALICE, "research") is None:
                passed += 1
                await asyncio.sleep(0)  # the upstream answers
                lim.record(ALICE, "research", model, 6, 4)
            await asyncio.sleep(0)

    async def scenario() -> None:
        try:
            await asyncio.gather(*(client(i) for i in range(8)))
            for r in replicas:
                r.flush_records()
                assert isinstance(r.store, RedisStore)
                await r.store.ping()
            assert 1000 <= passed <= 1000 + 8, passed
            assert sum(r.local_admissions for r in replicas) >= 500
        finally:
            for r in replicas:
                await r.close()

    asyncio.run(scenario())
    assert int(_redis_hash(f"{namespace}:2026-12:team:research")["requests"]) == passed  # all recorded
