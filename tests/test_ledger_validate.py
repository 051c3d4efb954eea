"""exporter/ledger/validate.py and the usage reader built on it: the rules, value by value (the
end-to-end behaviour, on both backends, is in test_hostile_edge.py)."""

from __future__ import annotations

import pytest
from support.ledger import make_row

from exporter.ledger.store import open_store
from exporter.ledger.validate import MAX_TOKENS, count_problem, storable_text, tokens_problem
from exporter.proxy.usage import InvalidUsage, Usage, read_usage


@pytest.mark.parametrize(
    "value, stored",
    [
        ("plain", "plain"),
        ("caf\u00e9 \U0001f600", "caf\u00e9 \U0001f600"),
        ("\ud800", "\\ud800"),
        ("a\udfffb\ud83d", "a\\udfffb\\ud83d"),
        ("a\x00b\x00", "a\u2400b\u2400"),
        ("\x00\ud800", "\u2400\\ud800"),
    ],
)
def test_storable_text(value: str, stored: str) -> None:
    assert storable_text(value) == stored
    stored.encode("utf-8")  # encodable: both backends take it


def test_storable_text_cuts_after_escaping() -> None:
    assert storable_text("\ud800" * 10, 8) == "\\ud800\\u"
    assert storable_text("x" * 300, 200) == "x" * 200


def test_unstorable_text_is_stored_escaped_on_both_backends(ledger_url: str) -> None:
    # what validation makes of it is stored and read back unchanged, by SQLite and PostgreSQL alike
    model = storable_text("a\x00\ud800b\U0001f600")
    store = open_store(ledger_url)
    try:
        store.insert_rows([make_row(1, model=model, error=storable_text("e\x00"))])
        _, rows = store.query("SELECT model, error FROM http_analytics")
    finally:
        store.close()
    assert rows == [("a\u2400\\ud800b\U0001f600", "e\u2400")]


@pytest.mark.parametrize(
    "value, problem",
    [
        (0, None),
        (MAX_TOKENS, None),
        (MAX_TOKENS + 1, "n: 2147483648 is out of range (at most 2147483647)"),
        (2**63, "n: 9223372036854775808 is out of range (at most 2147483647)"),
        (-5, "n: -5 is negative"),
        (1e19, "n: expected an integer, got a float 1e+19"),
        (12.0, "n: expected an integer, got a float 12.0"),
        (True, "n: expected an integer, got a boolean True"),
        ("12", "n: expected an integer, got a str '12'"),
        (None, "n: expected an integer, got null"),
        ([1], "n: expected an integer, got a list"),
        ({"a": 1}, "n: expected an integer, got an object"),
        ("x" * 100, "n: expected an integer, got a str '" + "x" * 36 + "..."),
    ],
)
def test_count_problem(value: object, problem: str | None) -> None:
    assert count_problem("n", value) == problem


def test_tokens_problem() -> None:
    assert tokens_problem(10, 2, 12, 10) is None
    assert tokens_problem(10, 2, 12, 11) == "cached_tokens (11) exceeds prompt_tokens (10)"
    assert (
        tokens_problem(2**40, 2, 12, 0) == "prompt_tokens: 1099511627776 is out of range (at most 2147483647)"
    )


@pytest.mark.parametrize(
    "obj, got",
    [
        ({"usage": {"prompt_tokens": 5, "completion_tokens": 3}}, Usage(5, 3, 8, 0)),
        ({"usage": {"prompt_tokens": 5}}, Usage(5, 0, 5, 0)),
        ({"usage": {"prompt_tokens": 5, "completion_tokens": None}}, None),
        ({"usage": {}}, None),
        ({"usage": None}, None),
        (
            {
                "usage": {
                    "prompt_tokens": 5,
                    "completion_tokens": 1,
                    "prompt_tokens_details": {"cached_tokens": None},
                }
            },
            Usage(5, 1, 6, 0),
        ),
        (
            {
                "response": {
                    "usage": {
                        "input_tokens": 4,
                        "output_tokens": 2,
                        "input_tokens_details": {"cached_tokens": 5},
                    }
                }
            },
            InvalidUsage(
                "upstream usage is invalid: response.usage.input_tokens_details.cached_tokens (5) exceeds "
                "response.usage.input_tokens (4)"
            ),
        ),
        (
            {"usage": {"input_tokens": 4, "output_tokens": -1}},
            InvalidUsage("upstream usage is invalid: usage.output_tokens: -1 is negative"),
        ),
        (
            {"usage": {"prompt_tokens": MAX_TOKENS, "completion_tokens": 1}},
            InvalidUsage(
                "upstream usage is invalid: usage.total_tokens (prompt + completion): 2147483648 is out of "
                "range (at most 2147483647)"
            ),
        ),
    ],
)
def test_read_usage(obj: dict[str, object], got: object) -> None:
    assert read_usage(obj) == got


def test_stream_begin_record_is_validated_like_the_final_row() -> None:
    """The journal's begin record becomes the row when the proxy dies mid-stream: it gets the same
    storable text and the same URL without userinfo as a finished request's row."""
    from exporter.ledger.row import LedgerRow
    from exporter.proxy.app import Call
    from exporter.proxy.lifecycle import journal_begin

    class Ledger:
        def __init__(self) -> None:
            self.rows: list[LedgerRow] = []

        def begin(self, row: LedgerRow) -> None:
            self.rows.append(row)

    call = Call(
        request_id="req-begin-1",
        started=0.0,
        timestamp="2026-11-02T10:00:00+00:00",
        endpoint="/v1/chat/completions",
        user="a@example.com",
        team="alpha",
        model_name="m\ud800\x00x",
        stream=True,
        upstream="http://svc:s3cret@upstream.internal:8000/v1",
    )
    ledger = Ledger()
    journal_begin(ledger, call, 200)
    (row,) = ledger.rows
    assert row.model == "m\\ud800\u2400x"
    assert "s3cret" not in row.upstream and "svc" not in row.upstream
    assert row.upstream.endswith("upstream.internal:8000/v1")
