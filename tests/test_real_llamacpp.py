"""Conformance against a real llama.cpp server: llama-cpp-python (built from PyPI) serving a tiny
random-weight model that this test writes with ``gguf``. The official SDK goes through the proxy for
chat and completions (streamed and not, with and without include_usage) and embeddings; every ledger
row and the counters are compared with the server's own non-streamed usage for the same request
(temperature 0, fixed seed): exact with ``usage_fallback: tokenize``, and the estimate's error is
reported (written to $CHARGEBACK_REAL_RESULTS when set, and printed).

Opt-in: ``make test-real`` installs the cached wheel (or builds it). In ``make test`` this module is
skipped when llama-cpp-python is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from exporter import contract
from exporter.proxy.usage import prompt_chars
from exporter.sim.harness import (
    metric,
    proxy_config,
    read_metrics,
    running_proxy,
    wait_for_rows,
)
from exporter.stack import ManagedProcess, free_port

pytestmark = pytest.mark.skipif(
    any(
        importlib.util.find_spec(m) is None
        for m in ("llama_cpp", "gguf", "sse_starlette", "starlette_context")
    ),
    reason="llama-cpp-python[server] and gguf are not installed (make test-real installs them)",
)

MAX_TOKENS = 12
SEED = 7
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant for the platform team."},
    {"role": "user", "content": "Say hello to the team, and tell them the GPUs are ready."},
]
PROMPT = "Once upon a time, in a data centre far away, the GPUs"
USERS = {"tok@corp.example": "research", "est@corp.example": "research", "emb@corp.example": "research"}


@dataclass
class Real:
    server_url: str
    api_url: str
    metrics_url: str
    ledger_url: str
    tokens: dict[str, str]


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Real]:
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_gguf import write_model

    workdir = tmp_path_factory.mktemp("real")
    model = write_model(workdir / "tiny.gguf")
    port = free_port()
    common = {"model": str(model), "n_ctx": 1024, "n_threads": 1, "verbose": False, "seed": SEED}
    server_cfg = {
        "host": "127.0.0.1",
        "port": port,
        "models": [
            {**common, "model_alias": "tiny"},
            {**common, "model_alias": "tiny-embed", "embedding": True},
        ],
    }
    (workdir / "llama.json").write_text(json.dumps(server_cfg))
    server = ManagedProcess(
        "llama-cpp-python",
        [sys.executable, "-m", "llama_cpp.server", "--config_file", str(workdir / "llama.json")],
        workdir,
        url=f"http://127.0.0.1:{port}",
        ready_path="/v1/models",
    ).start(timeout=180)
    base = f"{server.url}/v1"
    doc = proxy_config(
        upstreams={"tiny": [base], "tiny-est": [base], "tiny-embed": [base]},
        workdir=workdir,
        proxy={"upstream_timeout_seconds": 120},
    )
    doc["models"]["tiny"].update(
        upstream_model="tiny",
        usage_fallback="tokenize",
        tokenize={"api": "llama-cpp-python", "timeout_seconds": 30},
    )
    doc["models"]["tiny-est"]["upstream_model"] = "tiny"
    doc["models"]["tiny-embed"]["upstream_model"] = "tiny-embed"
    try:
        with running_proxy(workdir, doc, USERS) as (proxy, tokens):
            yield Real(server.url, proxy.url, proxy.metrics_url, doc["ledger"]["url"], tokens)
    finally:
        server.stop()


def server_usage(real: Real, path: str, body: dict[str, Any]) -> tuple[int, int]:
    """The server's own usage for the same request, asked directly and non-streamed."""
    direct = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    resp = requests.post(real.server_url + path, json=direct, timeout=120)
    resp.raise_for_status()
    usage = resp.json()["usage"]
    return usage["prompt_tokens"], usage.get("completion_tokens", 0)


CASES = [
    (endpoint, stream, include_usage)
    for endpoint in ("chat", "completions")
    for stream, include_usage in ((False, False), (True, False), (True, True))
]


def test_usage_matches_the_server(real: Real) -> None:
    results: list[dict[str, Any]] = []
    samples_before = read_metrics(real.metrics_url)
    expected_prompt = {"tiny": 0, "tiny-est": 0}
    for endpoint, stream, include_usage in CASES:
        for model, user in (("tiny", "tok@corp.example"), ("tiny-est", "est@corp.example")):
            client = openai.OpenAI(
                base_url=real.api_url + "/v1", api_key=real.tokens[user], max_retries=0, timeout=120
            )
            params: dict[str, Any] = {
                "model": model,
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
                "seed": SEED,
            }
            if stream:
                params["stream"] = True
                if include_usage:
                    params["stream_options"] = {"include_usage": True}
            if endpoint == "chat":
                body = {**params, "messages": MESSAGES}
                path = "/v1/chat/completions"
                resp: Any = client.chat.completions.with_raw_response.create(**body)
            else:
                body = {**params, "prompt": PROMPT}
                path = "/v1/completions"
                resp = client.completions.with_raw_response.create(**body)
            rid = resp.headers.get_list("x-request-id")
            assert len(rid) == 1
            parsed = resp.parse()
            if stream:
                text = ""
                for chunk in parsed:  # to [DONE]; the SDK then closes
                    for choice in chunk.choices:
                        text += (choice.delta.content or "") if endpoint == "chat" else choice.text
            else:
                choice = parsed.choices[0]
                text = choice.message.content if endpoint == "chat" else choice.text
            want = server_usage(real, path, {**body, "model": "tiny"})
            (row,) = wait_for_rows(real.ledger_url, 1, request_id=rid[0])
            got = (row["prompt_tokens"], row["completion_tokens"])
            assert row["status_code"] == 200, row
            assert row["total_tokens"] == sum(got)
            expected_prompt[model] += got[0]
            case = {
                "endpoint": endpoint,
                "stream": stream,
                "include_usage": include_usage,
                "model": model,
                "server": want,
                "ledger": got,
                "usage_source": row["usage_source"],
                "chars": [prompt_chars(body), len(text)],
            }
            results.append(case)
            if not stream:
                assert got == want and row["usage_source"] == "upstream" and not row["estimated"]
            elif model == "tiny":
                assert got == want, case  # exact with the server's tokenizer
                assert row["usage_source"] == "tokenize" and not row["estimated"]
            else:
                assert row["usage_source"] == "estimate" and row["estimated"]
                assert row["usage_reason"] == "stream ended without a usage event"
                assert got == (-(-prompt_chars(body) // 4), -(-len(text) // 4))
    samples = read_metrics(real.metrics_url)
    for model, user in (("tiny", "tok@corp.example"), ("tiny-est", "est@corp.example")):
        before = metric(samples_before, contract.PROMPT_TOKENS_TOTAL, user=user, model=model)
        assert (
            metric(samples, contract.PROMPT_TOKENS_TOTAL, user=user, model=model) - before
            == expected_prompt[model]
        )
        assert metric(samples, contract.REQUESTS_BY_CODE_TOTAL, model=model, code="499") == 0
    assert metric(samples, contract.USAGE_SOURCE_TOTAL, model="tiny", source="tokenize") == 4
    assert metric(samples, contract.USAGE_SOURCE_TOTAL, model="tiny-est", source="estimate") == 4
    report(results)


def test_embeddings_match_the_server(real: Real) -> None:
    user = "emb@corp.example"
    client = openai.OpenAI(
        base_url=real.api_url + "/v1", api_key=real.tokens[user], max_retries=0, timeout=120
    )
    inputs = ["the GPUs are ready", "hello team"]
    resp = client.embeddings.with_raw_response.create(model="tiny-embed", input=inputs)
    parsed = resp.parse()
    assert len(parsed.data) == 2  # (per-token vectors: the tiny model declares no pooling)
    want = server_usage(real, "/v1/embeddings", {"model": "tiny-embed", "input": inputs})
    (row,) = wait_for_rows(real.ledger_url, 1, request_id=resp.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (want[0], 0)
    assert row["usage_source"] == "upstream" and row["status_code"] == 200


def report(results: list[dict[str, Any]]) -> None:
    lines = ["endpoint     stream include_usage model     server(p,c) ledger(p,c) source    error(p,c)"]
    for r in results:
        (sp, sc), (lp, lc) = r["server"], r["ledger"]
        err = f"{(lp - sp) / sp:+.0%},{(lc - sc) / sc:+.0%}" if sp and sc else "-"
        lines.append(
            f"{r['endpoint']:<12} {r['stream']!s:<6} {r['include_usage']!s:<13} {r['model']:<9} "
            f"{sp:>4},{sc:<6} {lp:>4},{lc:<6} {r['usage_source']:<9} {err}"
        )
    print("\n" + "\n".join(lines))
    out = os.environ.get("CHARGEBACK_REAL_RESULTS")
    if out:
        Path(out).write_text(json.dumps(results, indent=1) + "\n")
