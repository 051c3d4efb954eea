"""Simulated user traffic through the proxy, with the official openai SDK.

    result = await run_traffic("http://127.0.0.1:8080", {"alice@corp.example": "cbk_..."},
                               ["sim-small", "sim-large"], requests_per_user=10, stream_ratio=0.5, seed=1)
    result.totals[("alice@corp.example", "sim-small")].total_tokens

Totals are taken from the usage in the responses the clients received (streams ask for
``include_usage``), i.e. exactly what the proxy must have counted for successful requests.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import openai

TOPICS = (
    "quarterly GPU budget for the research team",
    "summarise the incident report from last night",
    "translate the release notes into German",
    "write a haiku about idle accelerators",
    "explain token based chargeback to finance",
    "draft an email about the new inference cluster",
)
SYSTEM_PROMPT = "You are a helpful assistant for the central IT department."


@dataclass
class Totals:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0

    def add(self, usage: Any) -> None:
        self.requests += 1
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += getattr(usage, "completion_tokens", 0) or 0
        self.total_tokens += usage.total_tokens
        details = getattr(usage, "prompt_tokens_details", None)
        self.cached_tokens += (getattr(details, "cached_tokens", 0) or 0) if details else 0

    def merge(self, other: Totals) -> None:
        """Add another (user, model)'s or run's totals to these."""
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)


@dataclass
class TrafficResult:
    totals: dict[tuple[str, str], Totals] = field(default_factory=dict)  # (user, model) → totals
    errors: list[str] = field(default_factory=list)
    requests: int = 0
    streamed: int = 0
    seconds: float = 0.0

    def total_for(self, user: str | None = None, model: str | None = None) -> Totals:
        out = Totals()
        for (u, m), t in self.totals.items():
            if (user is None or u == user) and (model is None or m == model):
                out.merge(t)
        return out

    def add(self, other: TrafficResult) -> None:
        """Count another run's traffic into this one (several drives through the same stack)."""
        self.requests += other.requests
        self.streamed += other.streamed
        self.seconds += other.seconds
        self.errors.extend(other.errors)
        for key, t in other.totals.items():
            self.totals.setdefault(key, Totals()).merge(t)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "streamed": self.streamed,
            "seconds": round(self.seconds, 3),
            "errors": self.errors,
            "totals": [{"user": u, "model": m, **vars(t)} for (u, m), t in sorted(self.totals.items())],
        }


def _client(base_url: str, token: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url.rstrip("/") + "/v1", api_key=token, max_retries=0, timeout=60)


async def one_request(
    client: openai.AsyncOpenAI,
    model: str,
    messages: list[dict[str, str]],
    stream: bool,
    max_tokens: int,
    seed: int,
) -> Any:
    """One chat completion; returns the usage object the client received."""
    if not stream:
        resp = await client.chat.completions.create(
            model=model, messages=messages, max_tokens=max_tokens, seed=seed
        )  # type: ignore[arg-type]
        return resp.usage
    usage = None
    chunks = await client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        seed=seed,
        stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )
    async for chunk in chunks:
        if chunk.usage is not None:
            usage = chunk.usage
    return usage


async def run_traffic(
    base_url: str,
    tokens_by_user: dict[str, str],
    models: list[str],
    requests_per_user: int = 10,
    stream_ratio: float = 0.5,
    seed: int = 1,
    concurrency: int = 8,
) -> TrafficResult:
    """Send ``requests_per_user`` chat requests for each user (random model, prompt, streaming or not,
    all from ``seed``), ``concurrency`` at a time. Errors are collected, not raised."""
    rng = random.Random(seed)
    plan: list[tuple[str, str, list[dict[str, str]], bool, int, int]] = []
    for user in sorted(tokens_by_user):
        for i in range(requests_per_user):
            topic = rng.choice(TOPICS)
            messages = [{"role": "user", "content": f"{topic} (request {i} from {user.split('@')[0]})"}]
            if rng.random() < 0.5:
                messages.insert(0, {"role": "system", "content": SYSTEM_PROMPT})
            plan.append(
                (
                    user,
                    rng.choice(models),
                    messages,
                    rng.random() < stream_ratio,
                    rng.randint(4, 64),
                    rng.randint(0, 1000),
                )
            )
    rng.shuffle(plan)
    clients = {u: _client(base_url, t) for u, t in tokens_by_user.items()}
    result = TrafficResult()
    sem = asyncio.Semaphore(max(1, concurrency))

    async def send(
        user: str, model: str, messages: list[dict[str, str]], stream: bool, max_tokens: int, req_seed: int
    ) -> None:
        async with sem:
            try:
                usage = await one_request(clients[user], model, messages, stream, max_tokens, req_seed)
            except openai.OpenAIError as exc:
                result.errors.append(f"{user} {model}: {type(exc).__name__}: {exc}")
                return
            result.requests += 1
            result.streamed += int(stream)
            if usage is None:
                result.errors.append(f"{user} {model}: no usage in the response")
                return
            result.totals.setdefault((user, model), Totals()).add(usage)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(send(*p) for p in plan))
    finally:
        for c in clients.values():
            await c.close()
    result.seconds = time.perf_counter() - started
    return result
