"""``usage_fallback: tokenize``: count a response that carried no usage with the model server's own
tokenizer, after the response has reached the client.

The request's prompt (chat template applied where the server offers that) and the completion text
the client received are sent to the server's tokenize endpoint. The call runs as a background task
with the model's ``tokenize.timeout_seconds``; the request's ledger row and counters are recorded
when it finishes. If it fails or times out, the request keeps the character estimate and the reason
says why. Shutdown waits for these tasks (bounded) before the ledger is flushed.

Flavours (``tokenize.api``):

- ``llama.cpp`` (llama-server): ``POST /apply-template`` {messages} → {prompt}, then
  ``POST /tokenize`` {content, add_special, parse_special} → {tokens}.
- ``llama-cpp-python``: ``POST /extras/tokenize/count`` {input} → {count}; it always adds BOS, so the
  count of "" is subtracted for completion text. It has no chat-template endpoint: a chat prompt is
  counted by asking the server for the same request once more, non-streamed with ``max_tokens: 1``,
  and taking its ``usage.prompt_tokens`` (the prompt is still in its cache, so this is cheap).
- ``vllm``: ``POST /tokenize`` {model, messages, add_generation_prompt} or {model, prompt,
  add_special_tokens} → {count}.
- ``tgi``: ``POST /chat_tokenize`` (a chat request) → {tokenize_response: [...]}, ``POST /tokenize``
  {inputs} → [tokens]; TGI adds special tokens, so the count of "" is subtracted for completion text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import aiohttp
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter import contract
from exporter.logs import get_logger
from exporter.proxy.usage import Usage

if TYPE_CHECKING:
    from exporter.config import Model, TokenizeConfig

log = get_logger(__name__, "tokenize")

SHUTDOWN_WAIT_SECONDS = 10.0  # at most this long at shutdown, then the rest is recorded as estimated


class TokenizeError(Exception):
    pass


class UsageSourceCollector(Collector):
    """``chargeback_usage_source_total{model, source}``: which path counted each request's usage."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def inc(self, model: str, source: str) -> None:
        key = (model, source)
        self.counts[key] = self.counts.get(key, 0) + 1

    def collect(self) -> Iterable[Metric]:
        fam = contract.spec(contract.USAGE_SOURCE_TOTAL).family()
        for (model, source), n in self.counts.copy().items():
            fam.add_metric((model, source), n)
        yield fam


def _root(upstream: str) -> str:
    """The server root of an OpenAI base URL (``http://h:8000/v1`` → ``http://h:8000``)."""
    base = upstream.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


class Tokenizer:
    """Talks to one model server's tokenize endpoint."""

    def __init__(
        self, session: aiohttp.ClientSession, model: Model, upstream: str, api_key: str | None
    ) -> None:
        assert model.tokenize is not None
        self.cfg: TokenizeConfig = model.tokenize
        self.model = model
        self.upstream = upstream
        self.url = (self.cfg.url or _root(upstream)).rstrip("/")
        self.session = session
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def _post(self, url: str, body: dict[str, Any]) -> Any:
        async with self.session.post(url, json=body, headers=self.headers) as resp:
            if resp.status >= 300:
                text = (await resp.text())[:200]
                raise TokenizeError(f"POST {url} returned {resp.status}: {text}")
            return await resp.json(content_type=None)

    # -- one count per flavour ---------------------------------------------------------------

    async def count_text(self, text: str, special: bool) -> int:
        """Tokens in ``text``; ``special``: with the BOS/special tokens a prompt gets."""
        api = self.cfg.api
        if api == "llama.cpp":
            got = await self._post(
                self.url + "/tokenize", {"content": text, "add_special": special, "parse_special": special}
            )
            return _length(got, "tokens")
        if api == "vllm":
            body: dict[str, Any] = {"prompt": text, "add_special_tokens": special}
            if self.model.upstream_model or self.model.name:
                body["model"] = self.model.upstream_model or self.model.name
            return _count(await self._post(self.url + "/tokenize", body))
        if api == "llama-cpp-python":
            url = self.url + "/extras/tokenize/count"
            name = self.model.upstream_model or self.model.name  # it serves several models by alias
            n = _count(await self._post(url, {"input": text, "model": name}))
            if special:
                return n
            return n - _count(await self._post(url, {"input": "", "model": name}))  # minus BOS
        if api == "tgi":
            n = _list_length(await self._post(self.url + "/tokenize", {"inputs": text}))
            if special:
                return n
            return n - _list_length(await self._post(self.url + "/tokenize", {"inputs": ""}))
        raise TokenizeError(f"unknown tokenize api {api!r}")

    async def count_chat(self, body: dict[str, Any]) -> int:
        """Prompt tokens of a chat request, chat template applied the way the server applies it."""
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise TokenizeError("the request has no messages list")
        api = self.cfg.api
        if api == "llama.cpp":
            got = await self._post(self.url + "/apply-template", {"messages": messages})
            prompt = got.get("prompt") if isinstance(got, dict) else None
            if not isinstance(prompt, str):
                raise TokenizeError("/apply-template returned no prompt")
            return await self.count_text(prompt, True)
        if api == "vllm":
            req = {
                "model": self.model.upstream_model or self.model.name,
                "messages": messages,
                "add_generation_prompt": True,
            }
            for key in ("tools", "chat_template_kwargs"):
                if key in body:
                    req[key] = body[key]
            return _count(await self._post(self.url + "/tokenize", req))
        if api == "tgi":
            req = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
            got = await self._post(self.url + "/chat_tokenize", req)
            if not isinstance(got, dict):
                raise TokenizeError("/chat_tokenize returned no object")
            return _list_length(got.get("tokenize_response"))
        if api == "llama-cpp-python":
            return await self._probe(body)
        raise TokenizeError(f"unknown tokenize api {api!r}")

    async def _probe(self, body: dict[str, Any]) -> int:
        # the server's own count of the templated prompt, from a one-token non-streamed repeat
        req = {k: v for k, v in body.items() if k not in ("stream", "stream_options", "n")}
        req["max_tokens"] = 1
        req["stream"] = False
        if self.model.upstream_model:
            req["model"] = self.model.upstream_model
        got = await self._post(self.upstream.rstrip("/") + "/chat/completions", req)
        usage = got.get("usage") if isinstance(got, dict) else None
        n = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        if isinstance(n, bool) or not isinstance(n, int):
            raise TokenizeError("the probe response carried no usage.prompt_tokens")
        return n

    async def count_prompt(self, endpoint: str, body: dict[str, Any]) -> int:
        if endpoint == "/v1/chat/completions":
            return await self.count_chat(body)
        key = "prompt" if endpoint == "/v1/completions" else "input"
        prompt = body.get(key)
        if isinstance(prompt, str):
            return await self.count_text(prompt, True)
        if isinstance(prompt, list) and all(isinstance(p, int) for p in prompt):
            return len(prompt)  # already token ids
        if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
            return sum([await self.count_text(p, True) for p in prompt])
        raise TokenizeError(f"cannot tokenize a {type(prompt).__name__} '{key}'")


def _count(got: Any) -> int:
    n = got.get("count") if isinstance(got, dict) else None
    if isinstance(n, bool) or not isinstance(n, int):
        raise TokenizeError("the tokenize response has no count")
    return n


def _length(got: Any, key: str) -> int:
    tokens = got.get(key) if isinstance(got, dict) else None
    return _list_length(tokens)


def _list_length(tokens: Any) -> int:
    if not isinstance(tokens, list):
        raise TokenizeError("the tokenize response has no token list")
    return len(tokens)


async def count_usage(session: aiohttp.ClientSession, call: Any) -> Usage:
    """The request's usage counted with the server's tokenizer (prompt + delivered completion)."""
    model: Model = call.model
    tok = Tokenizer(session, model, call.upstream, model.api_key)
    prompt = await tok.count_prompt(call.endpoint, call.body)
    text = "".join(call.texts or ())
    completion = await tok.count_text(text, False) if text else 0
    completion = max(completion, 0)
    return Usage(prompt, completion, prompt + completion, 0)


class UsageCounter:
    """Runs the deferred counts and keeps them bounded at shutdown."""

    def __init__(self) -> None:
        self.sources = UsageSourceCollector()
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    def defer(self, state: Any, call: Any, finish: Callable[[Any, Any], None]) -> bool:
        """Start counting ``call`` with the server's tokenizer, recording it afterwards; False when the
        request is not one for that (then the caller records it now)."""
        model = call.model
        if (
            self.closed
            or not call.estimated
            or model is None
            or model.usage_fallback != "tokenize"
            or model.tokenize is None
            or not call.forwarded
            or call.body is None
            or state.session is None
        ):
            return False
        ended = time.perf_counter()
        recorded: list[bool] = []
        task = asyncio.get_running_loop().create_task(self._run(state, call, finish, ended, recorded))
        self.tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self.tasks.discard(task)
            if not recorded:  # cancelled before it ever ran: its finally never did
                call.usage_reason = f"{call.usage_reason}; tokenize cancelled at shutdown"
                finish(state, call)

        task.add_done_callback(done)
        return True

    async def _run(
        self,
        state: Any,
        call: Any,
        finish: Callable[[Any, Any], None],
        ended: float,
        recorded: list[bool],
    ) -> None:
        recorded.append(True)  # from here on the finally below records the request
        timeout = call.model.tokenize.timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                usage = await count_usage(state.session, call)
            call.usage = usage
            call.estimated = False
            call.usage_source = "tokenize"
        except TimeoutError:
            call.usage_reason = f"{call.usage_reason}; tokenize timed out after {timeout:g}s"
        except asyncio.CancelledError:
            call.usage_reason = f"{call.usage_reason}; tokenize cancelled at shutdown"
            raise
        except Exception as exc:  # any failure leaves the estimate, with its reason
            call.usage_reason = f"{call.usage_reason}; tokenize failed: {exc}"
            log.warning("tokenize for %s failed: %s", call.request_id, exc)
        finally:
            # the row's duration is the response's, not the response's plus the count's
            call.started += time.perf_counter() - ended
            finish(state, call)

    async def drain(self, timeout: float = SHUTDOWN_WAIT_SECONDS) -> None:  # noqa: ASYNC109
        """At shutdown: let running counts finish for up to ``timeout`` seconds, then cancel the rest
        (they are recorded with the estimate)."""
        self.closed = True
        pending = set(self.tasks)
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)
