"""The simulated upstream on its own (in-process aiohttp test server): deterministic usage, the
usage chunk only on request, faults (header and admin endpoint), credentials, stats."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

from exporter.sim.upstream import SimOptions, create_sim_app, expected_usage

AUTH = {"Authorization": "Bearer k"}
BODY = {
    "model": "m",
    "messages": [{"role": "system", "content": "one two"}, {"role": "user", "content": "three"}],
}


async def sim(aiohttp_client: Any, **opts: Any) -> Any:
    return await aiohttp_client(create_sim_app(SimOptions(models=("m",), api_key="k", **opts)))


def events(text: str) -> list[Any]:
    out = []
    for block in text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                data = line[6:]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


async def test_non_streaming_usage_is_deterministic(aiohttp_client: Any) -> None:
    client = await sim(aiohttp_client)
    r = await client.post("/v1/chat/completions", json=BODY, headers=AUTH)
    usage = (await r.json())["usage"]
    want = expected_usage("chat/completions", BODY)
    assert usage["prompt_tokens"] == want["prompt_tokens"] == 3 + 2 * 3
    assert usage["completion_tokens"] == want["completion_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 2
    r2 = await client.post("/v1/chat/completions", json={**BODY, "max_tokens": 2}, headers=AUTH)
    assert (await r2.json())["usage"]["completion_tokens"] == 2


async def test_streaming_usage_chunk_only_when_asked(aiohttp_client: Any) -> None:
    client = await sim(aiohttp_client)
    plain = events(
        await (await client.post("/v1/chat/completions", json={**BODY, "stream": True}, headers=AUTH)).text()
    )
    assert plain[-1] == "[DONE]" and all("usage" not in e for e in plain[:-1])
    n = expected_usage("chat/completions", BODY)["completion_tokens"]
    assert sum(1 for e in plain[:-1] if e["choices"][0]["delta"].get("content")) == n
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    withu = events(await (await client.post("/v1/chat/completions", json=body, headers=AUTH)).text())
    usage_events = [e for e in withu[:-1] if e["usage"]]
    assert len(usage_events) == 1 and usage_events[0]["choices"] == []
    assert usage_events[0]["usage"]["completion_tokens"] == n


async def test_faults_credentials_and_stats(aiohttp_client: Any) -> None:
    client = await sim(aiohttp_client)
    assert (await client.post("/v1/chat/completions", json=BODY)).status == 401
    r = await client.post("/v1/chat/completions", json=BODY, headers={**AUTH, "X-Sim-Fault": "500"})
    assert r.status == 500 and (await r.json())["error"]["message"] == "simulated 500"
    assert (await client.post("/sim/fault", json={"fault": "429", "count": 2})).status == 200
    codes = [(await client.post("/v1/chat/completions", json=BODY, headers=AUTH)).status for _ in range(3)]
    assert codes == [429, 429, 200]
    assert (await client.post("/sim/fault", json={"fault": "bogus"})).status == 400
    nousage = await client.post(
        "/v1/chat/completions", json=BODY, headers={**AUTH, "X-Sim-Fault": "no-usage"}
    )
    assert "usage" not in await nousage.json()
    stats = await (await client.get("/sim/stats")).json()
    assert stats["faults"] == {"500": 1, "429": 2, "no-usage": 1}
    assert stats["auth"] == {"": 1, "Bearer k": 5}
    assert stats["models"]["m"]["requests"] == 2
    assert (
        stats["models"]["m"]["reported_prompt_tokens"]
        == expected_usage("chat/completions", BODY)["prompt_tokens"]
    )
    await client.post("/sim/reset")
    assert (await (await client.get("/sim/stats")).json())["requests"] == 0


async def test_embeddings_base64_and_models(aiohttp_client: Any) -> None:
    client = await sim(aiohttp_client)
    r = await client.post(
        "/v1/embeddings",
        json={"model": "m", "input": ["a b", "c"], "encoding_format": "base64"},
        headers=AUTH,
    )
    out = await r.json()
    assert out["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    vec = struct.unpack("<8f", base64.b64decode(out["data"][0]["embedding"]))
    assert len(vec) == 8
    models = await (await client.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["m"]
