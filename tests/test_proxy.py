"""The proxy against a real simulator process, through the official openai SDK: exact counters and
ledger rows, streaming behaviour, every error case, disconnects, drops, round-robin, revocation."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import openai
import pytest
import requests
from support.ledger import VERBATIM_SQL

from exporter import contract
from exporter.sim.harness import Stack, ledger_rows, metric, read_metrics, wait_for_rows
from exporter.sim.traffic import run_traffic
from exporter.sim.upstream import expected_usage


def client(stack: Stack, user: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=stack.api_url + "/v1", api_key=stack.tokens[user], max_retries=0, timeout=30
    )


def usage_of(stack: Stack, user: str, model: str) -> dict[str, float]:
    m = read_metrics(stack.metrics_url)
    labels = {"user": user, "model": model}
    return {
        "requests": metric(m, contract.REQUESTS_TOTAL, **labels),
        "prompt": metric(m, contract.PROMPT_TOKENS_TOTAL, **labels),
        "completion": metric(m, contract.COMPLETION_TOKENS_TOTAL, **labels),
        "cached": metric(m, contract.CACHED_PROMPT_TOKENS_TOTAL, **labels),
        "estimated": metric(m, contract.USAGE_ESTIMATED_TOTAL, **labels),
    }


def by_code_delta(before: Any, after: Any, **labels: str) -> float:
    """Increase of ``chargeback_requests_by_code_total`` (no user label: shared by every test's
    users, hence a delta) between two scrapes."""
    name = contract.REQUESTS_BY_CODE_TOTAL
    return metric(after, name, **labels) - metric(before, name, **labels)


def post(
    stack: Stack, token: str | None, body: Any, path: str = "/v1/chat/completions", **kw: Any
) -> requests.Response:
    headers = kw.pop("headers", {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return requests.post(stack.api_url + path, data=data, headers=headers, timeout=30, **kw)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)


def assert_openai_error(resp: requests.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if code is not None:
        assert err["code"] == code
    return err


# --------------------------------------------------------------------------- exact accounting


async def test_traffic_counters_and_ledger_are_exact(
    proxy_env: Stack, fresh_users: Callable[..., list[str]]
) -> None:
    users = fresh_users(2, "research") + fresh_users(2, "support")
    models = ["sim-small", "sim-large"]
    before = read_metrics(proxy_env.metrics_url)
    result = await run_traffic(
        proxy_env.api_url,
        {u: proxy_env.tokens[u] for u in users},
        models,
        requests_per_user=6,
        stream_ratio=0.5,
        seed=7,
        concurrency=6,
    )
    assert result.errors == []
    assert result.requests == 24 and 0 < result.streamed < 24
    samples = read_metrics(proxy_env.metrics_url)
    for user in users:
        team = "research" if user in users[:2] else "support"
        user_rows = wait_for_rows(proxy_env.ledger_url, 6, user_email=user)
        assert len(user_rows) == 6
        for model in models:
            t = result.total_for(user, model)
            labels = {"user": user, "team": team, "model": model}
            assert metric(samples, contract.REQUESTS_TOTAL, **labels) == t.requests
            assert metric(samples, contract.PROMPT_TOKENS_TOTAL, **labels) == t.prompt_tokens
            assert metric(samples, contract.COMPLETION_TOKENS_TOTAL, **labels) == t.completion_tokens
            assert metric(samples, contract.CACHED_PROMPT_TOKENS_TOTAL, **labels) == t.cached_tokens
            assert metric(samples, contract.USAGE_ESTIMATED_TOTAL, **labels) == 0
            mrows = [r for r in user_rows if r["model"] == model]
            assert len(mrows) == t.requests
            assert sum(r["prompt_tokens"] for r in mrows) == t.prompt_tokens
            assert sum(r["completion_tokens"] for r in mrows) == t.completion_tokens
            assert sum(r["total_tokens"] for r in mrows) == t.total_tokens
            assert sum(r["cached_tokens"] for r in mrows) == t.cached_tokens
            assert all(r["team"] == team and r["status_code"] == 200 and not r["estimated"] for r in mrows)
            assert all(r["upstream"] == proxy_env.sim_url + "/v1" for r in mrows)
            if t.requests:
                assert metric(samples, contract.REQUEST_SECONDS_TOTAL, **labels) > 0
    for team, team_users in (("research", users[:2]), ("support", users[2:])):
        for model in models:
            sent = sum(result.total_for(u, model).requests for u in team_users)
            assert by_code_delta(before, samples, team=team, model=model, code="200") == sent

    # the SQL, verbatim, on the SQLite ledger
    from exporter.ledger.store import open_store

    store = open_store(proxy_env.ledger_url)
    try:
        cols, out = store.query(VERBATIM_SQL)
    finally:
        store.close()
    assert cols == ["user_email", "model", "total_tokens_sum", "prompt_tokens_sum", "output_tokens_sum"]
    got = {(r[0], r[1]): tuple(r[2:]) for r in out if r[0] in users}
    want = {
        (u, m): (t.total_tokens, t.prompt_tokens, t.completion_tokens) for (u, m), t in result.totals.items()
    }
    assert got == want


def test_stream_without_include_usage_hides_usage_chunk(
    proxy_env: Stack, fresh_users: Callable[..., list[str]]
) -> None:
    (user,) = fresh_users(1)
    c = client(proxy_env, user)
    messages = [
        {"role": "system", "content": "be brief and kind"},
        {"role": "user", "content": "stream me a story"},
    ]
    chunks = list(c.chat.completions.create(model="sim-small", messages=messages, stream=True, seed=3))  # type: ignore[arg-type]
    assert chunks and all(ch.usage is None for ch in chunks)
    assert all(ch.choices for ch in chunks), "the usage-only chunk (empty choices) must not reach the client"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    want = expected_usage("chat/completions", {"messages": messages, "seed": 3})
    assert len(text.split()) == want["completion_tokens"]

    with_usage = list(
        c.chat.completions.create(
            model="sim-small",
            messages=messages,
            stream=True,
            seed=3,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )
    )
    usage_chunks = [ch for ch in with_usage if ch.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
    assert usage_chunks[0].usage.completion_tokens == want["completion_tokens"]
    assert usage_chunks[0].usage.prompt_tokens_details.cached_tokens == want["cached_tokens"] == 4

    rows = wait_for_rows(proxy_env.ledger_url, 2, user_email=user)
    for r in rows:
        assert (r["prompt_tokens"], r["completion_tokens"], r["cached_tokens"]) == (
            want["prompt_tokens"],
            want["completion_tokens"],
            want["cached_tokens"],
        )
        assert r["stream"] and r["status_code"] == 200 and not r["estimated"] and r["ttft_ms"] is not None
    u = usage_of(proxy_env, user, "sim-small")
    assert u == {
        "requests": 2,
        "prompt": 2 * want["prompt_tokens"],
        "completion": 2 * want["completion_tokens"],
        "cached": 2 * want["cached_tokens"],
        "estimated": 0,
    }


def test_completions_embeddings_and_responses(
    proxy_env: Stack, fresh_users: Callable[..., list[str]]
) -> None:
    (user,) = fresh_users(1)
    c = client(proxy_env, user)
    comp = c.completions.create(model="sim-large", prompt="once upon a time in a data center", max_tokens=5)
    assert comp.usage.completion_tokens == 5
    streamed = list(c.completions.create(model="sim-large", prompt="tell me more about GPUs", stream=True))
    assert all(ch.usage is None for ch in streamed)
    emb = c.embeddings.create(model="sim-small", input=["alpha beta gamma", "delta"])
    assert emb.usage.prompt_tokens == 4 and len(emb.data) == 2 and len(emb.data[0].embedding) == 8
    resp = c.responses.create(model="sim-small", input="what is chargeback")
    assert resp.usage.input_tokens == 3
    events = list(c.responses.create(model="sim-small", input="what is showback", stream=True))
    completed = [e for e in events if e.type == "response.completed"]
    assert completed and completed[0].response.usage.output_tokens > 0

    exp_stream = expected_usage("completions", {"prompt": "tell me more about GPUs"})
    exp_resp_stream = expected_usage("responses", {"input": "what is showback"})
    large = usage_of(proxy_env, user, "sim-large")
    assert large["requests"] == 2
    assert large["prompt"] == comp.usage.prompt_tokens + exp_stream["prompt_tokens"]
    assert large["completion"] == 5 + exp_stream["completion_tokens"]
    small = usage_of(proxy_env, user, "sim-small")
    assert small["requests"] == 3
    assert small["prompt"] == 4 + 3 + exp_resp_stream["prompt_tokens"]
    assert small["completion"] == resp.usage.output_tokens + completed[0].response.usage.output_tokens
    rows = wait_for_rows(proxy_env.ledger_url, 5, user_email=user)
    assert sorted(r["endpoint"] for r in rows) == sorted(
        ["/v1/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/responses"]
    )
    assert (
        sum(r["total_tokens"] for r in rows)
        == large["prompt"] + large["completion"] + small["prompt"] + small["completion"]
    )


def test_no_usage_from_upstream_is_estimated(proxy_env: Stack, fresh_users: Callable[..., list[str]]) -> None:
    (user,) = fresh_users(1)
    c = client(proxy_env, user)
    prompt = "please estimate my usage"  # 24 characters → 6 tokens
    msgs = [{"role": "user", "content": prompt}]
    r = c.chat.completions.create(model="sim-small", messages=msgs, extra_headers={"X-Sim-Fault": "no-usage"})  # type: ignore[arg-type]
    assert r.usage is None
    text = r.choices[0].message.content
    chunks = list(
        c.chat.completions.create(
            model="sim-small",
            messages=msgs,
            stream=True,  # type: ignore[arg-type]
            extra_headers={"X-Sim-Fault": "no-usage"},
        )
    )
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    rows = wait_for_rows(proxy_env.ledger_url, 2, user_email=user)
    want_completion = {math.ceil(len(text) / 4), math.ceil(len(streamed) / 4)}
    for row in rows:
        assert row["estimated"] and row["status_code"] == 200
        assert row["prompt_tokens"] == math.ceil(len(prompt) / 4)
        assert row["completion_tokens"] in want_completion
    u = usage_of(proxy_env, user, "sim-small")
    assert u["estimated"] == 2
    assert u["completion"] == math.ceil(len(text) / 4) + math.ceil(len(streamed) / 4)


def test_config_team_overrides_key_team(proxy_env: Stack) -> None:
    user = "override@corp.example"  # key created for research, config says support
    client(proxy_env, user).chat.completions.create(
        model="sim-small", messages=[{"role": "user", "content": "hi"}]
    )
    rows = wait_for_rows(proxy_env.ledger_url, 1, user_email=user)
    assert rows[0]["team"] == "support"
    samples = read_metrics(proxy_env.metrics_url)
    assert metric(samples, contract.REQUESTS_TOTAL, user=user, team="support") == 1
    assert metric(samples, contract.REQUESTS_TOTAL, user=user, team="research") == 0


# --------------------------------------------------------------------------- errors


def test_auth_errors(proxy_env: Stack, fresh_users: Callable[..., list[str]]) -> None:
    body = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]}
    before = read_metrics(proxy_env.metrics_url)
    assert_openai_error(post(proxy_env, None, body), 401, "invalid_api_key")
    assert_openai_error(post(proxy_env, "cbk_not-a-real-token", body), 401, "invalid_api_key")
    assert_openai_error(requests.get(proxy_env.api_url + "/v1/models", timeout=5), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=proxy_env.api_url + "/v1", api_key="sk-wrong", max_retries=0
        ).chat.completions.create(model="sim-small", messages=[{"role": "user", "content": "hi"}])
    after = read_metrics(proxy_env.metrics_url)
    assert (
        metric(after, contract.REJECTED_REQUESTS_TOTAL, code="401")
        - metric(before, contract.REJECTED_REQUESTS_TOTAL, code="401")
        == 4
    )
    # unauthenticated requests never create per-user series
    assert not any(n == contract.REQUESTS_TOTAL and ("user", "") in ls for (n, ls) in after)


def test_request_errors(proxy_env: Stack, fresh_users: Callable[..., list[str]]) -> None:
    research, support = fresh_users(1, "research")[0], fresh_users(1, "support")[0]
    tok = proxy_env.tokens[research]
    sim_before = proxy_env.sim_stats()["requests"]
    before = read_metrics(proxy_env.metrics_url)
    msgs = [{"role": "user", "content": "hi"}]
    err = assert_openai_error(
        post(proxy_env, tok, {"model": "gpt-unknown", "messages": msgs}), 404, "model_not_found"
    )
    assert err["param"] == "model"
    assert_openai_error(post(proxy_env, tok, b'{"model": "sim-small", "messages": ['), 400, "invalid_json")
    assert_openai_error(post(proxy_env, tok, b"[1, 2]"), 400, "invalid_json")
    assert_openai_error(post(proxy_env, tok, {"messages": msgs}), 400)
    big = {"model": "sim-small", "messages": [{"role": "user", "content": "x" * 70000}]}
    assert_openai_error(post(proxy_env, tok, big), 413, "request_too_large")
    assert_openai_error(
        post(proxy_env, proxy_env.tokens[support], {"model": "sim-restricted", "messages": msgs}),
        403,
        "model_not_allowed",
    )
    assert proxy_env.sim_stats()["requests"] == sim_before, "rejected requests must not reach the upstream"
    assert post(proxy_env, tok, {"model": "sim-restricted", "messages": msgs}).status_code == 200

    with pytest.raises(openai.NotFoundError):
        client(proxy_env, research).chat.completions.create(model="nope", messages=msgs)  # type: ignore[arg-type]
    with pytest.raises(openai.PermissionDeniedError):
        client(proxy_env, support).chat.completions.create(model="sim-restricted", messages=msgs)  # type: ignore[arg-type]

    samples = read_metrics(proxy_env.metrics_url)
    assert metric(samples, contract.REQUESTS_TOTAL, user=support, model="sim-restricted") == 2
    assert metric(samples, contract.REQUESTS_TOTAL, user=research, model="sim-restricted") == 1
    assert by_code_delta(before, samples, team="support", model="sim-restricted", code="403") == 2
    assert by_code_delta(before, samples, team="research", model="sim-restricted", code="200") == 1
    assert by_code_delta(before, samples, model="sim-restricted") == 3
    # status codes never carry the user label, and the per-user counter no status code
    assert not any(n == contract.REQUESTS_BY_CODE_TOTAL and "user" in dict(ls) for (n, ls) in samples)
    assert not any(n == contract.REQUESTS_TOTAL and "code" in dict(ls) for (n, ls) in samples)
    # the model label only ever holds configured models
    models = {
        dict(ls).get("model") for (n, ls) in samples if n.startswith("chargeback_") and "model" in dict(ls)
    }
    assert models <= {"sim-small", "sim-large", "sim-restricted", "sim-rr", "sim-dead"}
    rows = wait_for_rows(proxy_env.ledger_url, 7, user_email=research)
    assert sorted(r["status_code"] for r in rows) == [200, 400, 400, 400, 404, 404, 413]
    assert all(r["error"] for r in rows if r["status_code"] != 200)


def test_upstream_errors(proxy_env: Stack, fresh_users: Callable[..., list[str]]) -> None:
    (user,) = fresh_users(1)
    tok = proxy_env.tokens[user]
    body = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]}
    before = read_metrics(proxy_env.metrics_url)
    r500 = post(proxy_env, tok, body, headers={"X-Sim-Fault": "500"})
    assert r500.status_code == 500 and r500.json()["error"]["message"] == "simulated 500"
    r429 = post(proxy_env, tok, body, headers={"X-Sim-Fault": "429"})
    assert r429.status_code == 429
    with pytest.raises(openai.RateLimitError):
        client(proxy_env, user).chat.completions.create(
            model="sim-small",
            messages=body["messages"],  # type: ignore[arg-type]
            extra_headers={"X-Sim-Fault": "429"},
        )
    assert_openai_error(post(proxy_env, tok, {**body, "model": "sim-dead"}), 502, "upstream_unreachable")
    slow = post(proxy_env, tok, body, headers={"X-Sim-Fault": "slow", "X-Sim-Slow-Seconds": "3"})
    assert_openai_error(slow, 504, "upstream_timeout")
    samples = read_metrics(proxy_env.metrics_url)
    assert metric(samples, contract.REQUESTS_TOTAL, user=user, model="sim-small") == 4
    assert metric(samples, contract.REQUESTS_TOTAL, user=user, model="sim-dead") == 1
    assert by_code_delta(before, samples, model="sim-small", code="500") == 1
    assert by_code_delta(before, samples, model="sim-small", code="429") == 2
    assert by_code_delta(before, samples, model="sim-dead", code="502") == 1
    assert by_code_delta(before, samples, model="sim-small", code="504") == 1
    assert metric(samples, contract.PROMPT_TOKENS_TOTAL, user=user) == 0
    rows = wait_for_rows(proxy_env.ledger_url, 5, user_email=user)
    assert sorted(r["status_code"] for r in rows) == [429, 429, 500, 502, 504]


def test_upstream_drop_mid_stream(proxy_env: Stack, fresh_users: Callable[..., list[str]]) -> None:
    (user,) = fresh_users(1)
    c = client(proxy_env, user)
    msgs = [{"role": "user", "content": "this stream will break"}]
    before = read_metrics(proxy_env.metrics_url)
    received = []
    with pytest.raises(openai.APIError) as info:
        for ch in c.chat.completions.create(
            model="sim-small",
            messages=msgs,
            stream=True,  # type: ignore[arg-type]
            extra_headers={"X-Sim-Fault": "drop"},
        ):
            received.append(ch)
    assert "mid-stream" in str(info.value)
    assert received, "the chunks before the drop reached the client"
    with pytest.raises(openai.APIError):
        c.chat.completions.create(model="sim-small", messages=msgs, extra_headers={"X-Sim-Fault": "drop"})  # type: ignore[arg-type]
    rows = wait_for_rows(proxy_env.ledger_url, 2, user_email=user)
    stream_row = next(r for r in rows if r["stream"])
    assert stream_row["status_code"] == 502 and stream_row["estimated"]
    delivered = "".join(ch.choices[0].delta.content or "" for ch in received)
    assert stream_row["completion_tokens"] == math.ceil(len(delivered) / 4)
    assert next(r for r in rows if not r["stream"])["status_code"] == 502
    samples = read_metrics(proxy_env.metrics_url)
    assert metric(samples, contract.REQUESTS_TOTAL, user=user) == 2
    assert by_code_delta(before, samples, model="sim-small", code="502") == 2
    assert metric(samples, contract.INFLIGHT_REQUESTS, model="sim-small") == 0


async def test_client_disconnect_cancels_upstream(
    proxy_env: Stack, fresh_users: Callable[..., list[str]]
) -> None:
    (user,) = fresh_users(1)
    before = proxy_env.sim_stats()["cancelled"]
    scrape_before = read_metrics(proxy_env.metrics_url)
    body = {
        "model": "sim-large",
        "messages": [{"role": "user", "content": "a long answer please"}],
        "stream": True,
        "max_tokens": 40,
    }
    headers = {"Authorization": f"Bearer {proxy_env.tokens[user]}", "X-Sim-Tokens-Per-Second": "20"}
    got = b""
    async with aiohttp.ClientSession() as session:
        resp = await session.post(proxy_env.api_url + "/v1/chat/completions", json=body, headers=headers)
        assert resp.status == 200
        while got.count(b"data:") < 4:
            got += await resp.content.readany()
        resp.close()  # the client goes away mid-stream
    await asyncio.to_thread(wait_until, lambda: proxy_env.sim_stats()["cancelled"] > before)
    assert proxy_env.sim_stats()["cancelled"] == before + 1, "the upstream request was not cancelled"
    rows = await asyncio.to_thread(wait_for_rows, proxy_env.ledger_url, 1, user_email=user)
    row = rows[0]
    assert row["status_code"] == 499 and row["estimated"] and row["stream"]
    assert 0 < row["completion_tokens"] < 40
    samples = read_metrics(proxy_env.metrics_url)
    assert metric(samples, contract.REQUESTS_TOTAL, user=user) == 1
    assert by_code_delta(scrape_before, samples, model="sim-large", code="499") == 1
    assert metric(samples, contract.USAGE_ESTIMATED_TOTAL, user=user) == 1
    assert metric(samples, contract.INFLIGHT_REQUESTS, model="sim-large") == 0


# --------------------------------------------------------------------------- routing, security, keys


def test_round_robin_skips_refused_upstream(proxy_env: Stack, fresh_users: Callable[..., list[str]]) -> None:
    (user,) = fresh_users(1)
    sim1 = proxy_env.extra_sims[0]
    before = (
        proxy_env.sim_stats()["models"].get("sim-rr", {}).get("requests", 0),
        proxy_env.sim_stats(sim1)["models"].get("sim-rr", {}).get("requests", 0),
    )
    c = client(proxy_env, user)
    for _ in range(6):
        c.chat.completions.create(model="sim-rr", messages=[{"role": "user", "content": "spread me"}])
    after = (
        proxy_env.sim_stats()["models"]["sim-rr"]["requests"],
        proxy_env.sim_stats(sim1)["models"]["sim-rr"]["requests"],
    )
    # rotation [sim, dead→sim1, sim1] twice: the dead upstream is skipped, never fails a request
    assert (after[0] - before[0], after[1] - before[1]) == (2, 4)
    rows = wait_for_rows(proxy_env.ledger_url, 6, user_email=user)
    assert all(r["status_code"] == 200 for r in rows)
    assert {r["upstream"] for r in rows} == {proxy_env.sim_url + "/v1", sim1.url + "/v1"}


def test_credentials_never_cross(proxy_env: Stack, fresh_users: Callable[..., list[str]]) -> None:
    (user,) = fresh_users(1)
    token = proxy_env.tokens[user]
    r = post(
        proxy_env,
        token,
        {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Connection": "keep-alive, X-Secret-Hop", "X-Secret-Hop": "1"},
    )
    assert r.status_code == 200
    stats = proxy_env.sim_stats()
    assert set(stats["auth"]) == {"Bearer sk-upstream-secret"}, (
        "only the model's credential may reach the upstream"
    )
    assert "sk-upstream-secret" not in r.text and all(
        "sk-upstream-secret" not in v for v in r.headers.values()
    )
    assert r.headers["X-Request-Id"]


def test_models_route_and_separate_metrics_listener(
    proxy_env: Stack, fresh_users: Callable[..., list[str]]
) -> None:
    research, support = fresh_users(1, "research")[0], fresh_users(1, "support")[0]
    ids_r = {m.id for m in client(proxy_env, research).models.list()}
    ids_s = {m.id for m in client(proxy_env, support).models.list()}
    assert ids_r == {"sim-small", "sim-large", "sim-restricted", "sim-rr", "sim-dead"}
    assert ids_s == ids_r - {"sim-restricted"}
    assert requests.get(proxy_env.api_url + "/metrics", timeout=5).status_code == 404
    # Every listener answers the same health endpoints; /healthz stays as an alias of /-/ready.
    for url in (proxy_env.api_url, proxy_env.metrics_url):
        for path in ("/-/healthy", "/-/ready", "/healthz"):
            answer = requests.get(url + path, timeout=5)
            assert (answer.status_code, answer.text) == (200, "ok\n"), url + path
    text = requests.get(proxy_env.metrics_url + "/metrics", timeout=5).text
    for name in (
        contract.TEAM_INFO,
        contract.TEAM_BUDGET,
        contract.MODEL_INFO,
        contract.POOL_CAPACITY_TOKENS_PER_SECOND,
        contract.MODEL_PROMPT_TOKEN_WEIGHT,
        contract.MODEL_COMPLETION_TOKEN_WEIGHT,
        contract.REALTIME_METHOD_INFO,
        contract.BILLING_MONTH_START,
        contract.BILLING_MONTH_END,
        contract.LEDGER_ROWS_WRITTEN_TOTAL,
        contract.LEDGER_QUEUE_ROWS,
        contract.LEDGER_SPOOLED_ROWS,
        contract.LEDGER_WRITE_ERRORS_TOTAL,
        contract.INFLIGHT_REQUESTS,
        contract.REQUEST_DURATION_SECONDS,
    ):
        assert f"\n{name}" in text, name
    samples = read_metrics(proxy_env.metrics_url)
    assert metric(samples, contract.TEAM_BUDGET, team="research") == 5000
    assert (
        metric(
            samples,
            contract.TEAM_INFO,
            team="support",
            business_unit="Customer Operations",
            cost_center="CC-2300",
        )
        == 1
    )
    assert metric(samples, contract.MODEL_COMPLETION_TOKEN_WEIGHT, model="sim-large") == 2
    assert metric(samples, contract.REALTIME_METHOD_INFO, method="token-share") == 1
    # no zero series for users that never sent a request
    assert not any(("user", "user47@corp.example") in ls for (_, ls) in samples)


def test_key_revocation_takes_effect(proxy_env: Stack) -> None:
    from exporter.ledger.store import open_store

    store = open_store(proxy_env.ledger_url)
    try:
        token, record = store.create_key("revoked@corp.example", "research")
        body = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]}
        deadline = time.monotonic() + 10
        while post(proxy_env, token, body).status_code == 401 and time.monotonic() < deadline:
            time.sleep(0.1)  # the proxy picks new keys up within key_refresh_seconds
        assert post(proxy_env, token, body).status_code == 200
        store.revoke_key(record.key_id)
        deadline = time.monotonic() + 10
        while post(proxy_env, token, body).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert_openai_error(post(proxy_env, token, body), 401, "invalid_api_key")
    finally:
        store.close()
    assert ledger_rows(proxy_env.ledger_url, user_email="revoked@corp.example")


async def test_client_disconnect_before_answer(
    proxy_env: Stack, fresh_users: Callable[..., list[str]]
) -> None:
    (user,) = fresh_users(1)
    before = proxy_env.sim_stats()["cancelled"]
    prompt = "a slow non-streaming answer"
    body = {"model": "sim-small", "messages": [{"role": "user", "content": prompt}], "max_tokens": 20}
    headers = {"Authorization": f"Bearer {proxy_env.tokens[user]}", "X-Sim-Tokens-Per-Second": "10"}  # 2 s
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(
            session.post(proxy_env.api_url + "/v1/chat/completions", json=body, headers=headers)
        )

        def waiting() -> bool:
            return (
                metric(read_metrics(proxy_env.metrics_url), contract.INFLIGHT_REQUESTS, model="sim-small")
                == 1
            )

        await asyncio.to_thread(wait_until, waiting)
        task.cancel()  # the client gives up while the upstream is still working
        with pytest.raises(asyncio.CancelledError):
            await task
    await asyncio.to_thread(wait_until, lambda: proxy_env.sim_stats()["cancelled"] > before)
    assert proxy_env.sim_stats()["cancelled"] == before + 1
    row = (await asyncio.to_thread(wait_for_rows, proxy_env.ledger_url, 1, user_email=user))[0]
    assert row["status_code"] == 499 and row["estimated"] and not row["stream"]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (math.ceil(len(prompt) / 4), 0)
