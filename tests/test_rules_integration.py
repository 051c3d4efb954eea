"""The rules in a real Prometheus (Debian package) scraping the real proxy and the real GPU exporter
(simulated GPUs) under traffic sent with the official openai SDK.

Exactness: rate() extrapolates, but it treats all series alike when they have the same first and last
scrape and the same ratio of first value to increase. So the warm-up traffic is sent *before*
Prometheus starts (every counter already exists at its first scrape) and the measured batch is the
warm-up sent again (the simulator's usage is deterministic). The shares Prometheus computes are then
exactly the token ratios of the measured batch, up to float rounding.
"""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest
from rules_inline import inline

from exporter.sim.harness import (
    create_keys,
    proxy_config,
    read_metrics,
    start_proxy,
    start_simulator,
    write_config,
)
from exporter.stack import (
    ManagedProcess,
    StackError,
    chargeback_argv,
    find_binary,
    free_port,
    prom_query,
    rule_files,
    start_prometheus,
    wait_for,
)

pytestmark = pytest.mark.slow

USERS = {"alice@corp.example": "research", "carol@corp.example": "research", "bob@corp.example": "support"}
# pool → (GPU hourly cost, capacity in weighted tokens/s); GPU 0 is "big", GPU 1 "small"
POOLS = {"big": (3.6, 1000), "small": (1.8, 500)}
MODELS = {
    "big-model": ("big", 1, 3),
    "small-model": ("small", 1, 2),
}  # pool, prompt weight, completion weight
# (user, model, prompt words): the batch every user sends, twice
BATCH = [
    ("alice@corp.example", "big-model", 40),
    ("alice@corp.example", "big-model", 12),
    ("bob@corp.example", "big-model", 25),
    ("carol@corp.example", "small-model", 30),
    ("alice@corp.example", "small-model", 7),
    ("bob@corp.example", "small-model", 18),
]
WORDS = ["tokens", "cost", "money", "so", "every", "team", "pays", "for", "what", "it", "uses"]


def _send_batch(api_url: str, tokens: dict[str, str]) -> dict[tuple[str, str], list[int]]:
    """One request per BATCH entry; returns (user, model) → [prompt, completion] tokens from usage."""
    used: dict[tuple[str, str], list[int]] = {}
    for user, model, words in BATCH:
        client = openai.OpenAI(base_url=api_url + "/v1", api_key=tokens[user], max_retries=0)
        text = " ".join(WORDS[i % len(WORDS)] for i in range(words))
        resp = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])
        assert resp.usage is not None
        cell = used.setdefault((user, model), [0, 0])
        cell[0] += resp.usage.prompt_tokens
        cell[1] += resp.usage.completion_tokens
    return used


def _values(prom_url: str, query: str, at: float, *labels: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(r["metric"].get(k, "") for k in labels): float(r["value"][1])
        for r in prom_query(prom_url, query, at)
    }


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


@pytest.fixture
def stack(tmp_path: Path):
    try:
        find_binary("prometheus")
    except StackError as exc:
        pytest.skip(str(exc))
    procs: list[object] = []
    try:
        sim = start_simulator(tmp_path, models=list(MODELS))
        procs.append(sim)
        doc = proxy_config(upstreams={m: [f"{sim.url}/v1"] for m in MODELS}, workdir=tmp_path)
        doc["pools"] = {
            p: {"gpu_hourly_cost": c, "gpus": 1, "capacity_tokens_per_second": cap}
            for p, (c, cap) in POOLS.items()
        }
        for m, (pool, wp, wc) in MODELS.items():
            doc["models"][m].update(pool=pool, token_weights={"prompt": wp, "completion": wc})
        gpu_port = free_port()
        doc["gpu_exporter"] = {"listen": f"127.0.0.1:{gpu_port}", "pool_by_index": {0: "big", 1: "small"}}
        config = write_config(tmp_path / "chargeback.yaml", doc)
        tokens = create_keys(doc["ledger"]["url"], USERS)
        proxy = start_proxy(tmp_path, config)
        procs.append(proxy)
        gpu = ManagedProcess(
            "gpu-exporter",
            chargeback_argv(
                "gpu-exporter",
                "--config.file",
                str(config),
                "--simulate",
                "2",
                "--simulate-pattern",
                "period=2,duty=0.5,levels=0.8/0.4",
            ),
            tmp_path,
            f"http://127.0.0.1:{gpu_port}",
            "/metrics",
        ).start()
        procs.append(gpu)
        yield tmp_path, proxy, gpu, tokens
    finally:
        for p in reversed(procs):
            p.stop()  # type: ignore[attr-defined]


def test_recorded_series_match_the_traffic(stack):
    workdir, proxy, gpu, tokens = stack
    _send_batch(proxy.url, tokens)  # warm-up: every counter exists before Prometheus' first scrape
    prom = start_prometheus(
        workdir,
        {
            "chargeback-proxy": [proxy.metrics_url.removeprefix("http://")],
            "chargeback-gpu-exporter": [gpu.url.removeprefix("http://")],
        },
        rule_files=rule_files(),
        scrape_interval="1s",
        evaluation_interval="1s",
    )
    try:
        _check(prom.url, proxy, tokens)
    except BaseException:
        print(prom.log_tail())
        raise
    finally:
        prom.stop()


def _check(prom_url: str, proxy, tokens) -> None:
    wait_for(
        lambda: (
            all(float(r["value"][1]) >= 3 for r in prom_query(prom_url, "count_over_time(up[1m])"))
            and len(prom_query(prom_url, "up == 1")) == 2
        ),
        timeout=30,
        what="three scrapes of both targets",
    )
    used = _send_batch(proxy.url, tokens)  # the measured batch
    final = read_metrics(proxy.metrics_url)
    total_prompt = sum(v for (n, _), v in final.items() if n == "chargeback_prompt_tokens_total")
    wait_for(
        lambda: (
            _values(prom_url, 'sum(chargeback_prompt_tokens_total{job="chargeback-proxy"})', time.time())
            == {(): total_prompt}
        ),
        timeout=20,
        what="Prometheus to scrape the final counters",
    )
    time.sleep(2.5)  # at least two rule evaluations over the final samples
    at = max(
        float(r["value"][1])
        for r in prom_query(prom_url, "timestamp(team_pool:chargeback_token_share:ratio5m)")
    )

    # --- tokens: increases equal the measured batch, so ratios are the batch's token ratios
    weighted: dict[tuple[str, str, str], float] = {}  # (user, team, pool) → weighted tokens of the batch
    for (user, model), (prompt, completion) in used.items():
        pool, wp, wc = MODELS[model]
        key = (user, USERS[user], pool)
        weighted[key] = weighted.get(key, 0) + prompt * wp + completion * wc
    pool_total = {p: sum(v for (_, _, q), v in weighted.items() if q == p) for p in POOLS}
    team_pool: dict[tuple[str, str], float] = {}
    for (_, team, pool), v in weighted.items():
        team_pool[(team, pool)] = team_pool.get((team, pool), 0) + v

    shares = _values(prom_url, "team_pool:chargeback_token_share:ratio5m", at, "team", "pool")
    assert set(shares) == set(team_pool)
    for key, v in team_pool.items():
        assert _close(shares[key], v / pool_total[key[1]]), (key, shares[key], v / pool_total[key[1]])
    user_shares = _values(
        prom_url, "user_team_pool:chargeback_token_share:ratio5m", at, "user", "team", "pool"
    )
    assert set(user_shares) == set(weighted)
    for key, v in weighted.items():
        assert _close(user_shares[key], v / pool_total[key[2]])
    for pool in POOLS:
        assert _close(sum(v for (_, p), v in shares.items() if p == pool), 1.0)
        assert _close(sum(v for (_, _, p), v in user_shares.items() if p == pool), 1.0)

    # weighted rate / prompt rate ratios are the batch's, too
    w_rate = _values(prom_url, "user_team_model:chargeback_weighted_tokens:rate5m", at, "user", "model")
    p_rate = _values(prom_url, "user_team_model:chargeback_prompt_tokens:rate5m", at, "user", "model")
    for (user, model), (prompt, completion) in used.items():
        _, wp, wc = MODELS[model]
        assert _close(w_rate[(user, model)] / p_rate[(user, model)], (prompt * wp + completion * wc) / prompt)
    errors = _values(prom_url, "model:chargeback_upstream_errors:ratio5m", at, "model")
    assert errors == {(m,): 0.0 for m in MODELS}

    # --- GPU pools: cost and price from the config
    cost = _values(prom_url, "pool:chargeback_gpu_hourly_cost:sum", at, "pool")
    assert cost == {(p,): c for p, (c, _) in POOLS.items()}
    price = _values(prom_url, "pool:chargeback_price_per_token:ratio", at, "pool")
    for p, (c, cap) in POOLS.items():
        assert _close(price[(p,)], c / 3600 / cap)
    assert _values(prom_url, "pool:chargeback_gpus:count", at, "pool") == {("big",): 1.0, ("small",): 1.0}
    # GPU 0 works at 0.8 and GPU 1 at 0.4 during the same half of every period: busy 2:1, idle equal
    busy = _values(prom_url, "pool:chargeback_gpu_busy:ratio5m", at, "pool")
    idle = _values(prom_url, "pool:chargeback_gpu_idle:ratio5m", at, "pool")
    assert 0 < busy[("small",)] < busy[("big",)] <= 1, (busy, idle)
    assert _close(busy[("big",)] / busy[("small",)], 2.0)
    assert 0 < idle[("big",)] <= 1 and _close(idle[("big",)], idle[("small",)])
    idle_cost = _values(prom_url, "pool:chargeback_idle_cost_per_hour:rate5m", at, "pool")
    for p, (c, _) in POOLS.items():
        assert _close(idle_cost[(p,)], c * idle[(p,)])

    # --- spend (token-share, the default): each pool's cost split by the shares
    spend = _values(prom_url, "team_pool:chargeback_spend_per_hour:rate5m", at, "team", "pool")
    for (team, pool), v in team_pool.items():
        assert _close(spend[(team, pool)], POOLS[pool][0] * v / pool_total[pool])
    team_spend = _values(prom_url, "team:chargeback_spend_per_hour:rate5m", at, "team")
    assert _close(sum(team_spend.values()), sum(c for c, _ in POOLS.values()))
    # Month-to-date sums closed 5-minute tiles: evaluate its rule (inlined) just after the tile
    # that holds the batch closes, instead of waiting up to 5 minutes for Prometheus to do it.
    # Both in one query: that time is usually still ahead, so two queries could each see the
    # samples scraped up to their own moment (a scrape landing between them made them disagree).
    tile_end = (int(at) // 300 + 1) * 300 + 1
    both = _values(
        prom_url,
        f'label_replace({inline("team:chargeback_spend:month_to_date")}, "series", "mtd", "", "")'
        f' or label_replace({inline("team:chargeback_budget_consumption:ratio")}, "series", "ratio", "", "")',
        tile_end,
        "series",
        "team",
    )
    mtd = {(team,): v for (series, team), v in both.items() if series == "mtd"}
    ratio = {(team,): v for (series, team), v in both.items() if series == "ratio"}
    assert set(mtd) == {("research",), ("support",)} and all(v > 0 for v in mtd.values())
    budget = {"research": 5000.0, "support": 1200.0}  # exporter.sim.harness.DEFAULT_TEAMS
    assert set(ratio) == set(mtd)
    for (team,), v in mtd.items():
        assert _close(ratio[(team,)], v / budget[team])
    # the gauges the month is taken from: the proxy's billing month (sim config: UTC)
    start = _values(prom_url, "chargeback_billing_month_start_timestamp_seconds", at, "timezone")
    assert list(start) == [("UTC",)] and start[("UTC",)] <= at
