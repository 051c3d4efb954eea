"""exporter/proxy/redact.py, value by value (end to end: test_hostile_edge.py)."""

from __future__ import annotations

import base64

from multidict import CIMultiDict

from exporter.config import Model
from exporter.proxy.redact import Redactor, clean_message, model_redactor, public_url, scrub_log_text


def test_public_url_drops_userinfo() -> None:
    assert public_url("http://alice:pw%40x@10.0.0.5:8000/v1") == "http://[redacted]@10.0.0.5:8000/v1"
    assert public_url("https://token@host/v1") == "https://[redacted]@host/v1"
    assert public_url("http://host:8000/v1") == "http://host:8000/v1"
    assert public_url("") == ""


def test_every_form_of_a_credential_is_redacted() -> None:
    model = Model(
        name="m",
        upstreams=("http://alice:p%2Fw0rd@h:1/v1", "http://h2:1/v1"),
        pool="p",
        api_key='sk-"quoted"/key',
    )
    red = model_redactor(model)
    basic = base64.b64encode(b"alice:p/w0rd").decode()
    text = (
        'raw sk-"quoted"/key json sk-\\"quoted\\"/key url sk-%22quoted%22%2Fkey '
        f"basic {basic} userinfo alice:p%2Fw0rd decoded p/w0rd"
    )
    assert red.text(text) == (
        "raw [redacted] json [redacted] url [redacted] basic [redacted] userinfo [redacted] decoded [redacted]"
    )
    assert red.data(text.encode()) == red.text(text).encode()
    headers = CIMultiDict([("X-Echo", f"Basic {basic}"), ("Vary", "a"), ("Vary", "b")])
    assert list(red.headers(headers).items()) == [
        ("X-Echo", "Basic [redacted]"),
        ("Vary", "a"),
        ("Vary", "b"),
    ]
    assert (
        clean_message(model, "failed: http://alice:p%2Fw0rd@h:1/v1/chat")
        == "failed: http://[redacted]@h:1/v1/chat"
    )


def test_short_secrets_are_not_looked_for() -> None:
    assert Redactor(["abc"]).text("abc abc") == "abc abc"
    assert not Redactor([]) and Redactor(["abcd"])


def test_log_text_loses_client_keys_and_userinfo() -> None:
    key = "cbk_" + "x" * 43
    assert scrub_log_text(f"bad header {key}\x00 from http://u:p@h/v1") == (
        "bad header cbk_[redacted]\x00 from http://[redacted]@h/v1"
    )
    assert scrub_log_text("alice@corp.example and cbk_1234") == "alice@corp.example and cbk_1234"
