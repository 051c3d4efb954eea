"""A test upstream that replays recorded model-server responses byte for byte.

Run as ``python -m exporter.sim.replay --listen 127.0.0.1:PORT --transcripts DIR``. A request picks
its transcript with the ``X-Replay`` header (a file name in DIR). A transcript file starts with
comment lines (``#``, naming the server's source file and version) ended by a ``# ---`` line; every
byte after that line is the response body as the server sends it. ``.sse`` files are sent as
``text/event-stream`` one event per write, ``.json`` files as ``application/json``.

Like llama-cpp-python it echoes the request id in its own spelling (``x-request-id``), and like
llama.cpp it ends the body a moment after the last event (``X-Replay-Eof-Delay-Ms``, default 1).

It also serves the tokenize endpoints of each flavour the proxy can use, shaped like the real ones,
with a trivial tokenizer (one token per UTF-8 byte, plus one BOS token where the server adds special
tokens) and template (``<|role|>content\\n`` per message, then ``<|assistant|>``), so tests can
compute exact counts: llama.cpp ``POST /tokenize {content, add_special}`` and ``POST
/apply-template``; vLLM ``POST /tokenize {prompt|messages}`` → ``count``; TGI ``POST /tokenize
{inputs}`` (always with BOS) and ``POST /chat_tokenize``; llama-cpp-python ``POST
/extras/tokenize/count {input}`` (always with BOS). A chat request without ``X-Replay`` is answered
like a non-streamed completion with usage (the llama-cpp-python prompt probe).
"""

from __future__ import annotations

import argparse
import asyncio
import re
from pathlib import Path
from typing import Any

from aiohttp import web

from exporter.health import add_health_routes

HEADER_END = b"# ---\n"
TRANSCRIPTS = web.AppKey("transcripts", Path)
STATS = web.AppKey("stats", dict)
TOKENIZE_DELAY = web.AppKey("tokenize_delay", float)


def load_transcript(path: Path) -> tuple[list[str], bytes]:
    """(header comment lines, body bytes) of a transcript file."""
    raw = path.read_bytes()
    head, sep, body = raw.partition(HEADER_END)
    if not sep:
        raise ValueError(f"{path}: no '# ---' line ends the header")
    lines = [line.decode() for line in head.splitlines()]
    if not lines or not all(line.startswith("#") for line in lines):
        raise ValueError(f"{path}: header lines must start with '#'")
    return lines, body


def sse_events(body: bytes) -> list[bytes]:
    """The body cut after each blank line (LF or CRLF), so each write is one event."""
    parts = re.split(rb"(?<=\n\n)|(?<=\r\n\r\n)", body)
    return [p for p in parts if p]


def template(messages: list[dict[str, Any]]) -> str:
    return "".join(f"<|{m.get('role')}|>{m.get('content')}\n" for m in messages) + "<|assistant|>"


def token_count(text: str, special: bool) -> int:
    return len(text.encode()) + (1 if special else 0)


async def _replay(request: web.Request) -> web.StreamResponse:
    stats = request.app[STATS]
    stats["requests"] = stats.get("requests", 0) + 1
    name = request.headers.get("X-Replay", "")
    if not name and request.path == "/v1/chat/completions":
        return await _probe(request)
    path = request.app[TRANSCRIPTS] / name
    if not name or "/" in name or not path.is_file():
        return web.json_response({"error": {"message": f"no transcript {name!r}"}}, status=404)
    await request.read()
    _, body = load_transcript(path)
    headers = {}
    rid = request.headers.get("X-Request-Id")
    if rid:
        headers["x-request-id"] = rid  # echoed in another spelling, as llama-cpp-python does
    status = int(request.headers.get("X-Replay-Status", "200"))
    if path.suffix == ".json":
        return web.Response(status=status, body=body, content_type="application/json", headers=headers)
    delay = float(request.headers.get("X-Replay-Eof-Delay-Ms", "1")) / 1000
    response = web.StreamResponse(status=status, headers=headers)
    response.content_type = "text/event-stream"
    await response.prepare(request)
    for event in sse_events(body):
        await response.write(event)
    await asyncio.sleep(delay)  # the body ends a moment after the last event, as real servers do
    if request.headers.get("X-Replay-Drop-At-End") and request.transport is not None:
        request.transport.close()  # no terminating chunk: the body ends broken after the last event
        return response
    await response.write_eof()
    return response


async def _probe(request: web.Request) -> web.Response:
    body = await request.json()
    if body.get("stream") or body.get("max_tokens") != 1:
        return web.json_response({"error": {"message": "no transcript named"}}, status=404)
    prompt = token_count(template(body.get("messages") or []), True)
    usage = {"prompt_tokens": prompt, "completion_tokens": 1, "total_tokens": prompt + 1}
    choice = {"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "length"}
    return web.json_response({"object": "chat.completion", "choices": [choice], "usage": usage})


async def _tokenize(request: web.Request) -> web.Response:
    body = await request.json()
    request.app[STATS]["tokenize"] = request.app[STATS].get("tokenize", 0) + 1
    await asyncio.sleep(request.app[TOKENIZE_DELAY])  # a slow tokenizer, for shutdown and timeout tests
    if "inputs" in body:  # TGI: special tokens always added; a list of token objects
        n = token_count(str(body["inputs"]), True)
        return web.json_response([{"id": i, "text": "", "start": 0, "stop": 0} for i in range(n)])
    if "messages" in body:  # vLLM chat: the template already holds what it needs
        n = token_count(template(body["messages"]), bool(body.get("add_special_tokens", False)))
        return web.json_response({"count": n, "max_model_len": 4096, "tokens": list(range(n))})
    if "prompt" in body:  # vLLM text
        n = token_count(str(body["prompt"]), bool(body.get("add_special_tokens", True)))
        return web.json_response({"count": n, "max_model_len": 4096, "tokens": list(range(n))})
    n = token_count(str(body.get("content", "")), bool(body.get("add_special", False)))  # llama.cpp
    return web.json_response({"tokens": list(range(n))})


async def _chat_tokenize(request: web.Request) -> web.Response:
    body = await request.json()  # TGI: the chat request, templated, without extra special tokens
    text = template(body.get("messages") or [])
    tokens = [{"id": i, "text": "", "start": 0, "stop": 0} for i in range(token_count(text, False))]
    return web.json_response({"tokenize_response": tokens, "templated_text": text})


async def _count(request: web.Request) -> web.Response:
    body = await request.json()  # llama-cpp-python: BOS always added
    return web.json_response({"count": token_count(str(body.get("input", "")), True)})


async def _apply_template(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response({"prompt": template(body.get("messages") or [])})


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS])


def create_app(transcripts: Path, tokenize_delay: float = 0.0) -> web.Application:
    app = web.Application()
    app[TRANSCRIPTS] = transcripts
    app[TOKENIZE_DELAY] = tokenize_delay
    app[STATS] = {}
    # every inference endpoint answers from the recorded transcripts; then the tokenizer endpoints
    for endpoint in ("chat/completions", "completions", "embeddings"):
        app.router.add_post(f"/v1/{endpoint}", _replay)
    app.router.add_routes(
        [
            web.post("/tokenize", _tokenize),
            web.post("/apply-template", _apply_template),
            web.post("/chat_tokenize", _chat_tokenize),
            web.post("/extras/tokenize/count", _count),
            web.get("/stats", _stats),
        ]
    )
    add_health_routes(app)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m exporter.sim.replay")
    parser.add_argument("--listen", default="127.0.0.1:8099")
    parser.add_argument("--transcripts", type=Path, required=True)
    parser.add_argument("--tokenize-delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    app = create_app(args.transcripts, args.tokenize_delay_ms / 1000)
    web.run_app(app, host=host, port=int(port), print=None, access_log=None)


if __name__ == "__main__":
    main()
