"""Validation at the edge: what goes into a ledger row (and the counters) is storable and sane.

One place for the rules, applied where the proxy builds a row, so a hostile client or a broken
upstream can never produce a row the database refuses (which would block the rows behind it) or move
a counter by an absurd amount:

- Text is made storable on SQLite and PostgreSQL alike. Code points UTF-8 cannot encode (lone
  surrogates such as ``"\\ud800"``, which JSON's ``\\ud800`` escape produces) are written as the
  escape ``\\ud800`` (a backslash and the hex digits), and NUL, which PostgreSQL's text type refuses,
  is replaced by the visible marker ``␀`` (U+2400).
- Token counts are integers with 0 ≤ n < 2^31 per request (a bool, a float such as 1e19, a string, a
  negative number or 2^63 is no count), and cached tokens never exceed the prompt. A usage that
  breaks a rule is not used: the request counts as estimated, and the reason names the field.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_TOKENS = 2**31 - 1  # the largest token count one request may report (fits PostgreSQL's INTEGER)
NUL_MARKER = "\u2400"  # ␀, in place of each NUL


def storable_text(value: str, limit: int | None = None) -> str:
    """``value`` as text both backends store unchanged: unencodable code points escaped, NUL marked,
    then cut to ``limit`` characters (if given). Plain ASCII without NUL (almost every value) is
    returned as it is."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    if "\x00" in value:
        value = value.replace("\x00", NUL_MARKER)
    if limit is not None and len(value) > limit:
        value = value[:limit]
    return value


def _shown(value: object) -> str:
    """A reported scalar for a reason, short and storable (upstreams can send anything)."""
    text = repr(value) if isinstance(value, str) else str(value)
    return storable_text(text if len(text) <= 40 else text[:37] + "...")


def count_problem(name: str, value: object) -> str | None:
    """Why ``value`` is not a token count (a reason naming ``name``), or None when it is one."""
    if value is None:
        return f"{name}: expected an integer, got null"
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, bool | float | str):
            kind = "a boolean" if isinstance(value, bool) else f"a {type(value).__name__}"
            return f"{name}: expected an integer, got {kind} {_shown(value)}"
        return f"{name}: expected an integer, got {'an object' if isinstance(value, dict) else 'a list'}"
    if value < 0:
        return f"{name}: {_shown(value)} is negative"
    if value > MAX_TOKENS:
        return f"{name}: {_shown(value)} is out of range (at most {MAX_TOKENS})"
    return None


def usage_problem(
    fields: Sequence[tuple[str, object]], cached: tuple[str, object] | None = None
) -> str | None:
    """Why a usage cannot be used, or None when it can. ``fields``: (name, value) pairs of counts,
    the prompt first; ``cached``: (name, value) of the cached prompt tokens, if reported."""
    for name, value in fields:
        problem = count_problem(name, value)
        if problem:
            return problem
    if cached is not None:
        name, value = cached
        problem = count_problem(name, value)
        if problem:
            return problem
        prompt_name, prompt = fields[0]
        assert isinstance(prompt, int) and isinstance(value, int)  # checked above
        if value > prompt:
            return f"{name} ({value}) exceeds {prompt_name} ({prompt})"
    return None


def tokens_problem(prompt: int, completion: int, total: int, cached: int) -> str | None:
    """The same rules for a usage already read into numbers (the last check before a row is built,
    whichever path counted it)."""
    if (
        type(prompt) is int
        and type(completion) is int
        and type(total) is int
        and type(cached) is int
        and 0 <= cached <= prompt <= MAX_TOKENS
        and 0 <= completion <= MAX_TOKENS
        and 0 <= total <= MAX_TOKENS
    ):
        return None  # the usual case, in one expression: a row is built per request
    return usage_problem(
        (("prompt_tokens", prompt), ("completion_tokens", completion), ("total_tokens", total)),
        ("cached_tokens", cached),
    )
