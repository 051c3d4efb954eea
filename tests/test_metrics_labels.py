"""``proxy.metrics_labels`` (user | team) through a real proxy process and the openai SDK, and gzip on
every ``/metrics`` listener (exporter/exposition.py).

In both modes the counters must hold exact figures, status codes live on
``chargeback_requests_by_code_total{team, model, code}`` (never a user label), and the ledger keeps
one row per request with its user whatever the mode.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import openai
import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CONTENT_TYPE_LATEST

from exporter import contract
from exporter.config import ConfigError, parse_config
from exporter.exposition import gzip_accepted, metrics_response
from exporter.sim.harness import metric, proxy_stack, read_metrics, wait_for_rows
from exporter.sim.upstream import expected_usage
from exporter.stack import ManagedProcess, chargeback_argv, free_port

USERS = {"ana@corp.example": "research", "bo@corp.example": "research", "cid@corp.example": "support"}
SENT = {"ana@corp.example": 3, "bo@corp.example": 2, "cid@corp.example": 1}  # sim-small each
MESSAGES = [{"role": "user", "content": "count me exactly"}]
USAGE_FAMILIES = (
    contract.REQUESTS_TOTAL,
    contract.PROMPT_TOKENS_TOTAL,
    contract.COMPLETION_TOKENS_TOTAL,
    contract.CACHED_PROMPT_TOKENS_TOTAL,
    contract.REQUEST_SECONDS_TOTAL,
    contract.USAGE_ESTIMATED_TOTAL,
)


def _raw_get(url: str, headers: dict[str, str]) -> requests.Response:
    """GET without requests' transparent decompression: ``.content`` is the body as sent."""
    resp = requests.get(url, headers=headers, timeout=10, stream=True)
    resp._content = resp.raw.read(decode_content=False)
    return resp


@pytest.mark.parametrize("mode", ["user", "team"])
def test_counters_are_exact_in_each_label_mode(tmp_path: Path, mode: str) -> None:
    with proxy_stack(tmp_path, users=USERS, models=("sim-small",), proxy={"metrics_labels": mode}) as st:
        want = expected_usage(
            "/v1/chat/completions", {"model": "sim-small", "messages": MESSAGES, "max_tokens": 5}
        )
        prompt, completion = want["prompt_tokens"], want["completion_tokens"]
        for user, n in SENT.items():
            c = openai.OpenAI(base_url=st.api_url + "/v1", api_key=st.tokens[user], max_retries=0)
            for _ in range(n):
                c.chat.completions.create(model="sim-small", messages=MESSAGES, max_tokens=5)  # type: ignore[arg-type]
        bad = openai.OpenAI(base_url=st.api_url + "/v1", api_key=st.tokens["cid@corp.example"], max_retries=0)
        with pytest.raises(openai.InternalServerError):
            bad.chat.completions.create(
                model="sim-small",
                messages=MESSAGES,  # type: ignore[arg-type]
                max_tokens=5,
                extra_headers={"X-Sim-Fault": "500"},
            )
        for user, n in SENT.items():  # the ledger is per user in both modes
            rows = wait_for_rows(st.ledger_url, n + (user == "cid@corp.example"), user_email=user)
            assert [r["prompt_tokens"] for r in rows if r["status_code"] == 200] == [prompt] * n
        samples = read_metrics(st.metrics_url)

    per_team = {"research": 5, "support": 1}
    for team, n in per_team.items():
        labels = {"team": team, "model": "sim-small"}
        assert metric(samples, contract.PROMPT_TOKENS_TOTAL, **labels) == prompt * n
        assert metric(samples, contract.COMPLETION_TOKENS_TOTAL, **labels) == completion * n
        assert metric(samples, contract.REQUESTS_BY_CODE_TOTAL, code="200", **labels) == n
    assert metric(samples, contract.REQUESTS_TOTAL, team="research", model="sim-small") == 5
    assert metric(samples, contract.REQUESTS_TOTAL, team="support", model="sim-small") == 2  # 200 and 500
    assert (
        metric(samples, contract.REQUESTS_BY_CODE_TOTAL, team="support", model="sim-small", code="500") == 1
    )
    assert not any(n == contract.REQUESTS_BY_CODE_TOTAL and "user" in dict(ls) for n, ls in samples)
    assert not any(n == contract.REQUESTS_TOTAL and "code" in dict(ls) for n, ls in samples)

    usage = {(n, ls) for n, ls in samples if n in USAGE_FAMILIES}
    if mode == "user":
        for user, n in SENT.items():
            assert metric(samples, contract.PROMPT_TOKENS_TOTAL, user=user) == prompt * n
        assert metric(samples, contract.REQUESTS_TOTAL, user="cid@corp.example") == 2
        # one series per family and user × model that sent a request
        assert len(usage) == len(USAGE_FAMILIES) * len(SENT)
        assert all("user" in dict(ls) for _, ls in usage)
    else:
        # one series per family and team × model; no user label at all
        assert len(usage) == len(USAGE_FAMILIES) * len(per_team)
        assert not any("user" in dict(ls) for _, ls in usage)
        assert metric(samples, contract.REQUESTS_TOTAL, team="research") == 5


def test_metrics_labels_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r'proxy\.metrics_labels: expected one of user, team, got "users"'):
        parse_config("proxy: {metrics_labels: users}\n", "chargeback.yaml")
    assert parse_config("{}\n", "chargeback.yaml").proxy.metrics_labels == "user"
    assert parse_config("proxy: {metrics_labels: team}\n", "chargeback.yaml").proxy.metrics_labels == "team"


# --------------------------------------------------------------------------- gzip


@pytest.mark.parametrize(
    ("header", "want"),
    [
        (None, False),
        ("", False),
        ("identity", False),
        ("gzip", True),
        ("br, GZIP;q=0.5", True),
        ("gzip;q=0", False),
        ("*", True),
        ("deflate, x-gzip", False),
    ],
)
def test_gzip_accepted(header: str | None, want: bool) -> None:
    assert gzip_accepted(header) is want


async def test_gzip_body_decompresses_to_the_plain_body() -> None:
    body = "".join(
        f'chargeback_prompt_tokens_total{{user="u{i}",team="t",model="m"}} {i}\n' for i in range(5000)
    )
    raw = body.encode()

    async def handler(request: web.Request) -> web.Response:
        return await metrics_response(request, lambda: raw)

    app = web.Application()
    app.router.add_get("/metrics", handler)
    async with TestClient(TestServer(app)) as client:
        plain = await client.get("/metrics", headers={"Accept-Encoding": "identity"}, auto_decompress=False)
        assert "Content-Encoding" not in plain.headers
        assert await plain.read() == raw
        zipped = await client.get("/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
        assert zipped.headers["Content-Encoding"] == "gzip"
        assert zipped.headers["Vary"] == "Accept-Encoding"
        assert zipped.headers["Content-Type"] == CONTENT_TYPE_LATEST
        compressed = await zipped.read()
        assert gzip.decompress(compressed) == raw
        assert len(compressed) * 10 < len(raw)


def test_every_metrics_listener_honours_gzip(tmp_path: Path) -> None:
    """The proxy's metrics listener and the GPU exporter, as real processes."""
    port = free_port()
    cfg = tmp_path / "gpu.yaml"
    cfg.write_text("pools:\n  a10: {gpu_hourly_cost: 0.75}\ngpu_exporter: {default_pool: a10}\n")
    argv = chargeback_argv(
        "gpu-exporter",
        f"--config.file={cfg}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--simulate=1",
        "--simulate-pattern=period=60,duty=1,levels=0.5",
    )
    with (
        ManagedProcess(
            "gpu-exporter", argv, tmp_path, f"http://127.0.0.1:{port}", "/-/healthy"
        ).start() as gpu,
        proxy_stack(tmp_path / "proxy", users=USERS, models=("sim-small",)) as st,
    ):
        for url, family in ((gpu.url, contract.GPU_INFO), (st.metrics_url, contract.TEAM_INFO)):
            plain = _raw_get(url + "/metrics", {"Accept-Encoding": "identity"})
            assert "Content-Encoding" not in plain.headers
            assert f"# TYPE {family} gauge" in plain.content.decode()
            zipped = _raw_get(url + "/metrics", {"Accept-Encoding": "gzip"})
            assert zipped.headers["Content-Encoding"] == "gzip"
            assert f"# TYPE {family} gauge" in gzip.decompress(zipped.content).decode()


@pytest.mark.parametrize("mode", ["user", "team"])
def test_render_and_collect_agree_in_each_mode(mode: str) -> None:
    """The fast text renderer and client_python's collect() expose the same samples."""
    from prometheus_client.parser import text_string_to_metric_families

    from exporter.proxy.metrics import ProxyMetrics

    cfg = parse_config(
        "pools:\n  p: {gpu_hourly_cost: 1}\nmodels:\n  m: {upstreams: [http://127.0.0.1:1/v1], pool: p}\nteams:\n  a: {}\n  b: {}\n"
        f"proxy: {{metrics_labels: {mode}}}\n",
        "chargeback.yaml",
    )
    m = ProxyMetrics(cfg)
    m.usage.record("x@corp", "a", "m", 200, 10, 2, 1, 0.5, False)
    m.usage.record("y@corp", "a", "m", 200, 20, 3, 0, 0.25, True)
    m.usage.record("z@corp", "b", "m", 503, 5, 0, 0, 0.125, True)
    reg = m.full_registry
    if mode == "user":
        assert (
            reg.get_sample_value(contract.PROMPT_TOKENS_TOTAL, {"user": "y@corp", "team": "a", "model": "m"})
            == 20
        )
    else:
        assert reg.get_sample_value(contract.PROMPT_TOKENS_TOTAL, {"team": "a", "model": "m"}) == 30
        assert reg.get_sample_value(contract.REQUEST_SECONDS_TOTAL, {"team": "a", "model": "m"}) == 0.75
        assert reg.get_sample_value(contract.USAGE_ESTIMATED_TOTAL, {"team": "b", "model": "m"}) == 1
    assert (
        reg.get_sample_value(contract.REQUESTS_BY_CODE_TOTAL, {"team": "a", "model": "m", "code": "200"}) == 2
    )
    assert (
        reg.get_sample_value(contract.REQUESTS_BY_CODE_TOTAL, {"team": "b", "model": "m", "code": "503"}) == 1
    )

    def samples(families: object) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
        return {
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for f in families  # type: ignore[attr-defined]
            for s in f.samples
            if not s.name.endswith("_created")
        }

    assert samples(text_string_to_metric_families(m.usage.render())) == samples(m.usage.collect())
