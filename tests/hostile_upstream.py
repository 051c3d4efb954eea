"""A misbehaving OpenAI-compatible upstream for the fault tests: a real aiohttp server (in a thread of
the test process, so real HTTP between it and the proxy process) that answers what each request's
last message asks for.

The last message's content is a JSON object:
- ``usage``: the usage object to report (anything: ``2**63``, ``1e19``, ``-5`` ...), or absent;
- ``echo``: answer 401 with the ``Authorization`` header it received, in the body and in the
  ``X-Upstream-Auth`` header (and in a ``WWW-Authenticate``-like ``X-Debug`` header), like a server
  that prints what it was sent;
- ``echo_ok``: answer 200 whose generated text quotes the ``Authorization`` header.
The generated text is always ``TEXT`` (11 characters) unless ``echo_ok`` is set.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from aiohttp import web

TEXT = "hello world"


def _spec(body: dict[str, Any]) -> dict[str, Any]:
    try:
        spec = json.loads(body["messages"][-1]["content"])
    except (KeyError, IndexError, TypeError, ValueError):
        return {}
    return spec if isinstance(spec, dict) else {}


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    spec = _spec(body)
    auth = request.headers.get("Authorization", "")
    if spec.get("echo"):
        return web.json_response(
            {"error": {"message": f"rejected credential {auth!s}", "type": "auth"}},
            status=401,
            headers={"X-Upstream-Auth": auth, "X-Debug": f"got={auth}"},
        )
    text = f"you sent {auth}" if spec.get("echo_ok") else TEXT
    usage = spec.get("usage")
    if not body.get("stream"):
        answer: dict[str, Any] = {
            "id": "cmpl-1",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
        }
        if usage is not None:
            answer["usage"] = usage
        return web.json_response(answer, headers={"X-Upstream-Auth": auth} if spec.get("echo_ok") else None)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}}],
    }
    await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    if usage is not None:
        last = {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": usage}
        await resp.write(b"data: " + json.dumps(last).encode() + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


class HostileUpstream:
    """``with HostileUpstream() as up: up.url`` (root; the OpenAI base URL is ``up.url + "/v1"``)."""

    def __init__(self) -> None:
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="hostile-upstream", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", _chat)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> HostileUpstream:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the hostile upstream did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
