"""The proxy's two upstream clients give the same answers, rows and usage: a plain-http upstream goes
through the proxy's own client (exporter/proxy/upstream_client.py), one whose URL carries
``user:password@`` through aiohttp's (as an ``https`` one would). Same upstream behind both."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hostile_upstream import TEXT, HostileUpstream

from exporter.sim.harness import (
    ProxyProcess,
    create_keys,
    proxy_config,
    start_proxy,
    wait_for_rows,
    write_config,
)

USER = "paths@corp.example"
USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, str, str]]:
    workdir: Path = tmp_path_factory.mktemp("paths")
    ledger_url = f"sqlite:///{workdir / 'ledger.db'}"
    with HostileUpstream() as up:
        doc = proxy_config(
            upstreams={"own": [f"{up.url}/v1"], "aiohttp": [f"http://bob:pw@127.0.0.1:{up.port}/v1"]},
            ledger_url=ledger_url,
            spool_dir=str(workdir / "spool"),
        )
        del doc["models"]["aiohttp"]["api_key"]  # one credential per upstream: the URL's
        config = write_config(workdir / "chargeback.yaml", doc)
        token = create_keys(ledger_url, {USER: "research"})[USER]
        proxy = start_proxy(workdir, config)
        try:
            yield proxy, ledger_url, token
        finally:
            proxy.stop()


def _post(
    paths: tuple[ProxyProcess, str, str], model: str, stream: bool, include_usage: bool
) -> requests.Response:
    proxy, _, token = paths
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": json.dumps({"usage": USAGE})}],
    }
    if stream:
        body["stream"] = True
        if include_usage:
            body["stream_options"] = {"include_usage": True}
    return requests.post(
        f"{proxy.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {token}"},
        json=body,
        timeout=10,
    )


@pytest.mark.parametrize("model", ["own", "aiohttp"])
@pytest.mark.parametrize(("stream", "include_usage"), [(False, False), (True, True), (True, False)])
def test_both_clients_relay_and_count_alike(
    paths: tuple[ProxyProcess, str, str], model: str, stream: bool, include_usage: bool
) -> None:
    resp = _post(paths, model, stream, include_usage)
    assert resp.status_code == 200
    if stream:
        events = [e for e in resp.text.split("\n\n") if e]
        chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
        assert events[-1] == "data: [DONE]"
        assert chunks[0]["choices"][0]["delta"]["content"] == TEXT
        # the usage event reaches the client only when it asked for it
        assert [c.get("usage") for c in chunks[1:]] == ([USAGE] if include_usage else [])
        assert resp.headers["Content-Type"].startswith("text/event-stream")
    else:
        assert resp.json()["usage"] == USAGE
    (row,) = wait_for_rows(paths[1], 1, request_id=resp.headers["X-Request-Id"])
    assert (row["status_code"], row["stream"], row["estimated"], row["usage_source"]) == (
        200,
        stream,
        False,
        "upstream",
    )
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (7, 3, 10)
