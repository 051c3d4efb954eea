"""SSEFilter (the proxy's stream scanner): however the upstream's bytes are cut into chunks, the
client gets the same bytes, the usage is found, and the extra usage chunk is hidden when asked."""

from __future__ import annotations

import json
import random

import pytest

from exporter.proxy.usage import SSEFilter, Usage


def event(obj: object, sep: bytes = b"\n\n", name: str | None = None) -> bytes:
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + json.dumps(obj, separators=(",", ":")).encode() + sep


WORDS = ["hello ", 'qu"ote ', "back\\slash ", "usage "]
USAGE = {
    "prompt_tokens": 3,
    "completion_tokens": 4,
    "total_tokens": 7,
    "prompt_tokens_details": {"cached_tokens": 2},
}


def chat(sep: bytes) -> tuple[bytes, bytes]:
    """(what the upstream sends, what a client that did not ask for usage must get)."""
    tokens = [event({"choices": [{"delta": {"content": w}}], "usage": None}, sep) for w in WORDS]
    usage = event({"choices": [], "usage": USAGE}, sep)
    done = b"data: [DONE]" + sep
    return b": ping" + sep + b"".join(tokens) + usage + done, b": ping" + sep + b"".join(tokens) + done


def feed_in_chunks(data: bytes, hide: bool, rng: random.Random) -> tuple[bytes, SSEFilter]:
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 12))))
    sse = SSEFilter(hide)
    out = b"".join(sse.feed(data[a:b]) for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True))
    return out + sse.flush(), sse


@pytest.mark.parametrize("sep", [b"\n\n", b"\r\n\r\n"])
def test_chunking_never_changes_the_result(sep: bytes) -> None:
    rng = random.Random(7)
    upstream, hidden = chat(sep)
    text_chars = sum(len(w) for w in WORDS)  # decoded characters, as the non-streamed path counts them
    for _ in range(300):
        out, sse = feed_in_chunks(upstream, False, rng)
        assert out == upstream
        assert sse.usage == Usage(3, 4, 7, 2)
        assert sse.delivered_chars == text_chars
        out, sse = feed_in_chunks(upstream, True, rng)
        assert out == hidden
        assert sse.usage == Usage(3, 4, 7, 2)


def test_usage_on_a_content_chunk_is_stripped_only_when_hidden() -> None:
    last = {"choices": [{"delta": {"content": "z"}}], "usage": USAGE}
    data = event({"choices": [{"delta": {"content": "a"}}]}) + event(last)
    sse = SSEFilter(True)
    assert sse.feed(data) == event({"choices": [{"delta": {"content": "a"}}]}) + event(
        {"choices": [{"delta": {"content": "z"}}]}
    )
    assert sse.usage == Usage(3, 4, 7, 2)
    sse = SSEFilter(False)
    assert sse.feed(data) == data


def test_responses_api_counts_deltas_only() -> None:
    deltas = [
        event({"type": "response.output_text.delta", "delta": w}, name="response.output_text.delta")
        for w in ("ab", "cd")
    ]
    completed = event(
        {"type": "response.completed", "response": {"output": [{"content": [{"text": "abcd"}]}]}},
        name="response.completed",
    )
    sse = SSEFilter(False)
    data = b"".join(deltas) + completed
    assert sse.feed(data) == data
    assert sse.usage is None
    assert sse.delivered_chars == 4  # the completed event repeats the text: not counted twice


def test_estimate_counts_decoded_characters() -> None:
    """A control character arrives as ``\\u0017`` (6 bytes) and non-ASCII text as several UTF-8 bytes;
    both count as the characters the client decodes, exactly like the non-streamed path."""
    words = ["\x17", "é€", 'a"b', "😀"]
    data = b"".join(event({"choices": [{"index": 0, "delta": {"content": w}}]}) for w in words)
    assert b"\\u0017" in data
    for keep in (False, True):
        sse = SSEFilter(False, keep_text=keep)
        assert sse.feed(data) == data
        assert sse.delivered_chars == len("".join(words)) == 7
        assert sse.texts == (words if keep else None)
        assert not sse.complete
        sse.feed(b"data: [DONE]\n\n")
        assert sse.complete


def test_complete_only_on_the_end_marker() -> None:
    sse = SSEFilter(False)
    sse.feed(event({"choices": [{"delta": {"content": "data: [DONE]"}}]}))
    assert not sse.complete  # the marker inside generated text is not the end
    sse.feed(event({"type": "response.completed", "response": {}}, name="response.completed"))
    assert sse.complete
