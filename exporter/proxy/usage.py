"""Reading token usage out of upstream responses (JSON and SSE streams), and estimating it when the
upstream reports none.

Estimate (documented in docs/proxy.md): ceil(characters / 4) of the prompt text the client sent and of
the completion text actually delivered to the client, both counted as decoded characters (Unicode
code points after JSON unescaping, on the streamed and the non-streamed path alike). It is
deliberately simple and stable; rows and counters built from it are marked ``estimated``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from exporter.ledger.validate import count_problem, usage_problem

CHARS_PER_TOKEN = 4
PROMPT_KEYS = ("prompt_tokens", "completion_tokens")
# a usage object (not "usage": null) somewhere in an event, e.g. the final chunk or response.completed
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
# generated text in stream events: chat deltas, completions text, Responses API deltas, tool arguments
_TEXT_FIELDS = re.compile(
    rb'"(?:content|text|delta|reasoning_content|refusal|arguments)"\s*:\s*"((?:[^"\\]|\\.)*)"'
)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class InvalidUsage:
    """A usage object whose figures cannot be used (see exporter/ledger/validate.py)."""

    reason: str  # names the field, e.g. "upstream usage is invalid: usage.prompt_tokens: -5 is negative"


def read_usage(obj: Any) -> Usage | InvalidUsage | None:
    """Usage from a response body or stream event: chat/completions/embeddings (``usage.prompt_tokens``)
    or the Responses API (``usage.input_tokens``, also nested in ``response.completed`` events).

    None when there is no usage (no usage object, or no prompt count in it); ``InvalidUsage`` when
    a count is not an integer in 0..2^31-1, or more tokens are cached than were prompted. Absent
    (or null) completion, total and cached counts mean 0, prompt + completion and 0."""
    if not isinstance(obj, dict):
        return None
    where = "usage"
    usage = obj.get("usage")
    if usage is None and isinstance(obj.get("response"), dict):
        usage = obj["response"].get("usage")
        where = "response.usage"
    if not isinstance(usage, dict):
        return None
    responses = "prompt_tokens" not in usage and "input_tokens" in usage
    prompt_key, completion_key = ("input_tokens", "output_tokens") if responses else PROMPT_KEYS
    prompt = usage.get(prompt_key)
    if prompt is None:
        return None
    completion = usage.get(completion_key, 0)
    if completion is None:
        return None  # as good as no usage (some servers send nulls before the last chunk)
    total = usage.get("total_tokens")
    details_key = "input_tokens_details" if responses else "prompt_tokens_details"
    details = usage.get(details_key)
    if details is None and not responses:
        details_key = "input_tokens_details"
        details = usage.get(details_key)
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    counts: list[tuple[str, object]] = [
        (f"{where}.{prompt_key}", prompt),
        (f"{where}.{completion_key}", completion),
    ]
    if total is not None:
        counts.append((f"{where}.total_tokens", total))
    problem = usage_problem(
        counts, (f"{where}.{details_key}.cached_tokens", cached) if cached is not None else None
    )
    if problem is None and total is None:
        total = prompt + completion  # type: ignore[operator]  # both checked integers
        problem = count_problem(f"{where}.total_tokens (prompt + completion)", total)
    if problem:
        return InvalidUsage(f"upstream usage is invalid: {problem}")
    return Usage(prompt, completion, total, cached or 0)  # type: ignore[arg-type]  # checked above


def extract_usage(obj: Any) -> Usage | None:
    """The usage in ``obj`` when it is there and valid (see ``read_usage``)."""
    found = read_usage(obj)
    return found if isinstance(found, Usage) else None


def _strings(value: Any, out: list[str]) -> None:
    """Text in ``value`` (strings, lists of them, the text fields of objects), in document order.
    Iterative: a request nested a thousand lists deep must not exhaust Python's stack."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, list):
            stack.extend(reversed(v))
        elif isinstance(v, dict):
            stack.extend(v[key] for key in ("arguments", "input", "text", "content") if key in v)


def prompt_chars(body: dict[str, Any]) -> int:
    """Characters of prompt text in a request body (messages, prompt, input, instructions)."""
    parts: list[str] = []
    for key in ("messages", "prompt", "input", "instructions"):
        if key in body:
            _strings(body[key], parts)
    return sum(len(p) for p in parts)


def choice_texts(choices: Any) -> Iterator[str]:
    """Generated text in a list of choices (chat delta/message or completions text)."""
    if not isinstance(choices, list):
        return
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        text = choice.get("text")
        if isinstance(text, str):
            yield text
        for key in ("delta", "message"):
            msg = choice.get(key)
            if not isinstance(msg, dict):
                continue
            for field in ("content", "reasoning_content", "refusal"):
                v = msg.get(field)
                if isinstance(v, str):
                    yield v
            for call in msg.get("tool_calls") or ():
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                    yield fn["arguments"]


def choice_chars(choices: Any) -> int:
    """Characters of generated text in a list of choices (chat delta/message or completions text)."""
    return sum(len(t) for t in choice_texts(choices))


def response_texts(obj: Any) -> list[str]:
    """Generated text in a non-streaming response body (chat, completions or Responses API)."""
    if not isinstance(obj, dict):
        return []
    parts = list(choice_texts(obj.get("choices")))
    output = obj.get("output")
    if isinstance(output, list):
        for item in output:
            if isinstance(item, dict):
                _strings(item.get("content"), parts)
    return parts


def response_chars(obj: Any) -> int:
    """Generated characters in a non-streaming response body (chat, completions or Responses API)."""
    return sum(len(p) for p in response_texts(obj))


def _decode(raw: bytes) -> str:
    """A JSON string's body (between the quotes) as text: escapes decoded, so ``\\u0017`` is one character."""
    if b"\\" not in raw:
        return raw.decode("utf-8", "replace")
    try:
        value = json.loads(b'"' + raw + b'"')
    except ValueError:
        return raw.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def estimate_tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def _last_boundary(buf: bytes, before: int) -> int:
    """The end of the last complete SSE event that ends at or before ``before`` (0 if none)."""
    lf = buf.rfind(b"\n\n", 0, before)
    crlf = buf.rfind(b"\r\n\r\n", 0, before)
    return max(lf + 2 if lf != -1 else 0, crlf + 4 if crlf != -1 else 0)


class SSEFilter:
    """Splits an upstream SSE byte stream into events, passes each complete event on, remembers the
    usage event, and drops the usage-only chunk the proxy asked for when the client did not.

    The generated text (for an estimate, should no usage ever come) is counted lazily: forwarded
    blocks are kept (up to ``PENDING_TEXT_BYTES``) and scanned in one go when ``delivered_chars``
    or ``texts`` is read. The relay reads them only when the stream ended without usage, so the
    usual stream is never scanned for text at all."""

    __slots__ = (
        "_buf",
        "_chars",
        "_pending",
        "_pending_size",
        "_texts",
        "complete",
        "error",
        "hide_usage",
        "usage",
        "usage_problem",
    )

    PENDING_TEXT_BYTES = 64 * 1024

    def __init__(self, hide_usage: bool, keep_text: bool = False) -> None:
        self._buf = b""
        self.hide_usage = hide_usage
        self.usage: Usage | None = None
        self.usage_problem: str | None = None  # why a usage event's figures were not used
        self._chars = 0
        # the delivered text itself, for counting it with the server's tokenizer afterwards
        self._texts: list[str] | None = [] if keep_text else None
        # forwarded blocks whose text is not counted yet (in delivery order)
        self._pending: list[bytes] = []
        self._pending_size = 0
        # set once the stream's end marker ([DONE], or the Responses API's final event) has been
        # returned for forwarding: after it, the client has the whole answer
        self.complete = False
        # the message of an error event the upstream sent inside the stream (status already 200)
        self.error: str | None = None

    @property
    def delivered_chars(self) -> int:
        """Characters of generated text passed on so far (decoded, like the non-streamed path)."""
        if self._pending:
            self._count_pending()
        return self._chars

    @property
    def texts(self) -> list[str] | None:
        """The generated text passed on so far, when asked to keep it (``keep_text``)."""
        if self._pending:
            self._count_pending()
        return self._texts

    def feed(self, chunk: bytes) -> bytes:
        """Bytes to forward now: every complete event in the input so far (possibly rewritten)."""
        if not self._buf and chunk.endswith(b"\n\n"):
            done = chunk  # the usual chunk: whole events, nothing held back
        else:
            buf = self._buf + chunk if self._buf else chunk
            end = _last_boundary(buf, len(buf))
            if end == 0:
                self._buf = buf
                return b""
            done = buf[:end] if end < len(buf) else buf
            self._buf = buf[end:]
        # ``find``, not ``in``: CPython's ``bytes in bytes`` first tries the needle as an integer
        # and formats a TypeError every time, which cost about 3% of the proxy's CPU on paced
        # streams (perf, bench/bench_stream.py). This runs for every event.
        find = done.find
        if find(b'"type":"response.') != -1:
            if find(b'"type":"response.completed"') != -1:
                self._mark_complete(done)
            return self._events(done)  # Responses API typed events: one by one
        if find(b"[DONE]") != -1:
            self._mark_complete(done)
        if find(b'"error"') != -1:
            self._note_error(done)
        found = _USAGE_OBJECT.search(done) if find(b'"usage"') != -1 else None
        if found is None:
            # Almost every chunk: no usage here, so the events pass through as they are (their
            # generated text is counted later, if at all).
            self._count_text(done)
            return done
        # The usage event: pass the events before it as they are; parse from the one that holds it.
        cut = _last_boundary(done, found.start())
        head = done[:cut]
        self._count_text(head)
        return head + self._events(done[cut:])

    def _note_error(self, block: bytes) -> None:
        """Error events as vLLM/TGI/Ollama/llama.cpp send them ({"error": {...}} or {"error": "..."})
        and as SGLang does ({"object": "error", "message": ...})."""
        for line in block.splitlines():
            if not line.startswith(b"data:") or b'"error"' not in line:
                continue
            try:
                obj = json.loads(line[5:])
            except (ValueError, RecursionError):
                continue
            if not isinstance(obj, dict):
                continue
            err = obj.get("error")
            if isinstance(err, dict):
                self.error = str(err.get("message") or err)
            elif isinstance(err, str):
                self.error = err
            elif obj.get("object") == "error":
                self.error = str(obj.get("message") or "error")

    def _mark_complete(self, block: bytes) -> None:
        for line in block.splitlines():
            if line.startswith(b"data:"):
                data = line[5:].strip()
                if data == b"[DONE]" or b'"type":"response.completed"' in data:
                    self.complete = True
                    return

    def _count_text(self, block: bytes) -> None:
        """Note a forwarded block for counting its text later (now, once enough is pending)."""
        self._pending.append(block)
        self._pending_size += len(block)
        if self._pending_size > self.PENDING_TEXT_BYTES:
            self._count_pending()

    def _count_pending(self) -> None:
        pending = self._pending
        self._pending = []
        self._pending_size = 0
        for block in pending:  # block by block: a match never spans two of them
            if b"data:" not in block:
                continue
            if self._texts is None and block.isascii() and b"\\" not in block:
                # the common block: plain ASCII without escapes, so each text is its own length
                self._chars += sum(len(m) for m in _TEXT_FIELDS.findall(block))
            else:
                self._take(_TEXT_FIELDS.findall(block))

    def _take(self, found: list[bytes]) -> None:
        """Count (and keep, if asked) generated text, as decoded characters like the non-streamed path."""
        if self._pending:  # blocks forwarded earlier come first (the kept texts stay in order)
            self._count_pending()
        if self._texts is not None:
            for raw in found:
                text = _decode(raw)
                self._chars += len(text)
                self._texts.append(text)
            return
        self._chars += sum(len(_decode(raw)) for raw in found)

    def _events(self, block: bytes) -> bytes:
        """Complete events, one at a time (possibly rewritten)."""
        out: list[bytes] = []
        start = 0
        while True:
            end = block.find(b"\n\n", start)
            crlf = block.find(b"\r\n\r\n", start)
            if crlf != -1 and (end == -1 or crlf < end):
                stop = crlf + 4
            elif end != -1:
                stop = end + 2
            else:
                break
            event = self._event(block[start:stop])
            if event:
                out.append(event)
            start = stop
        if start < len(block):
            out.append(block[start:])  # a stray line break after the last event: passed on as it is
        return b"".join(out)

    def flush(self) -> bytes:
        """Whatever is left when the upstream ended without a final blank line."""
        rest, self._buf = self._buf, b""
        return self._event(rest + b"\n\n") if rest.strip() else b""

    def _event(self, raw: bytes) -> bytes:
        if raw.startswith(b"data: ") and raw.count(b"\n") == 2:
            data = raw[6:].rstrip(b"\r\n")  # the usual shape: one data line
        else:
            data_lines = [line[5:].lstrip(b" ") for line in raw.splitlines() if line.startswith(b"data:")]
            if not data_lines:
                return raw  # comments, keep-alives, event-only lines: pass through unchanged
            data = b"\n".join(data_lines)
        if data == b"[DONE]":
            return raw
        if _USAGE_OBJECT.search(data) is None:
            # no usage here, so no JSON parse; only count the delivered text for a possible estimate
            if b'"type":"response.' not in data or b'.delta"' in data:  # Responses API: deltas only
                self._take(_TEXT_FIELDS.findall(data))
            return raw
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            return raw
        if not isinstance(obj, dict):
            return raw
        usage = read_usage(obj)
        if usage is None:
            return raw
        if isinstance(usage, InvalidUsage):
            self.usage_problem = usage.reason  # still the usage event: hidden below like a valid one
            self._take(_TEXT_FIELDS.findall(data))  # its figures are not used: count its text too
        else:
            self.usage = usage
        if not self.hide_usage or "choices" not in obj:
            return raw
        if not obj.get("choices"):
            return b""  # the usage-only chunk the client did not ask for
        # usage attached to a content chunk: keep the content, hide the usage
        del obj["usage"]
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
