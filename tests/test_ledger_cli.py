"""`chargeback keys ...` and `chargeback ledger ...` end to end: exact output, config checks,
read-only queries, the verbatim issue SQL on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.ledger import SUMMARY_COLUMNS, VERBATIM_SQL, make_row, write_ledger_config

from exporter import cli
from exporter.ledger.keys import TOKEN_PREFIX, hash_token
from exporter.ledger.store import open_store


@pytest.fixture
def run(monkeypatch, capsys):
    # Only this area's subcommands: these tests must not depend on other modules importing cleanly
    # (test_cli_binary_end_to_end below runs the real, complete command).
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ("exporter.ledger.cli",))

    def _run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return _run


@pytest.fixture
def cfg_file(tmp_path):
    users = {"alice@corp.example": "research", "bob@corp.example": "support"}
    return str(write_ledger_config(tmp_path / "chargeback.yaml", f"sqlite:///{tmp_path}/ledger.db", users))


def test_keys_create_list_revoke(run, cfg_file, tmp_path):
    code, out, err = run(
        "keys", "create", "--user", "alice@corp.example", "--team", "research", "--config.file", cfg_file
    )
    assert code == 0, err
    fields = dict(line.split(":", 1) for line in out.strip().splitlines())
    token, key_id = fields["token"].strip(), fields["key id"].strip()
    assert token.startswith(TOKEN_PREFIX) and key_id.startswith("key_")
    assert "shown only this once" in err

    # --team defaults to the user's team in the config; --token-only prints just the token
    code, out2, _ = run(
        "keys", "create", "--user", "bob@corp.example", "--token-only", "--config.file", cfg_file
    )
    assert code == 0 and out2.strip().startswith(TOKEN_PREFIX) and len(out2.strip().splitlines()) == 1
    bob_token = out2.strip()

    store = open_store(f"sqlite:///{tmp_path}/ledger.db")
    active = {h: k for h, k in store.load_active_keys()}
    assert active[hash_token(token)].user_email == "alice@corp.example"
    assert active[hash_token(bob_token)].team == "support"
    raw = (tmp_path / "ledger.db").read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("ledger.db-*")
    )
    assert token.encode() not in raw and bob_token.encode() not in raw  # only hashes are stored

    code, out, _ = run("keys", "list", "--config.file", cfg_file)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "key_id", "prefix", "user_email", "team", "created_at", "revoked_at", "expires_at", "last_used_at",
        "rotated_to",
    ]  # fmt: skip
    assert lines[-1] == "(2 rows)"
    assert token not in out and bob_token not in out and token[:12] + "…" in out

    code, out, _ = run("keys", "revoke", key_id, "--config.file", cfg_file)
    assert code == 0 and out.startswith(f"revoked {key_id} ") and "alice@corp.example" in out
    code, _, err = run("keys", "revoke", key_id, "--config.file", cfg_file)
    assert code == 1 and "already revoked" in err
    code, _, err = run("keys", "revoke", "key_doesnotexist", "--config.file", cfg_file)
    assert code == 1 and "no key matches" in err
    code, out, _ = run("keys", "revoke", "--user", "bob@corp.example", "--config.file", cfg_file)
    assert code == 0 and out.count("revoked ") == 1
    assert store.load_active_keys() == []

    code, out, _ = run("keys", "list", "--csv", "--config.file", cfg_file)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 2 and all(r["revoked_at"] for r in rows)
    code, out, _ = run("keys", "list", "--active", "--config.file", cfg_file)
    assert out.splitlines()[-1] == "(0 rows)"
    store.close()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--user", "alice@corp.example", "--team", "marketing"], "unknown team 'marketing' (teams in"),
        (
            ["--user", "alice@corp.example", "--team", "support"],
            "alice@corp.example belongs to team 'research'",
        ),
        (["--user", "carol@corp.example", "--team", "support"], "unknown user 'carol@corp.example'"),
        (["--user", "carol@corp.example"], "--team is required"),
        (["--user", "not-an-email", "--team", "support"], "is not an email address"),
    ],
)
def test_keys_create_validates_against_config(run, cfg_file, argv, message):
    code, out, err = run("keys", "create", *argv, "--config.file", cfg_file)
    assert code == 2 and out == "" and message in err


def test_keys_without_config_file_need_ledger_url(run, tmp_path):
    url = f"sqlite:///{tmp_path}/x.db"
    code, out, _ = run(
        "keys",
        "create",
        "--user",
        "z@corp.example",
        "--team",
        "any",
        "--token-only",
        "--ledger.url",
        url,
        "--config.file",
        str(tmp_path / "absent.yaml"),
    )
    assert code == 0 and out.startswith(TOKEN_PREFIX)
    with pytest.raises(SystemExit) as exc:
        run("keys", "list", "--config.file", str(tmp_path / "absent.yaml"))
    assert exc.value.code == 2


def test_ledger_query_verbatim_table_and_csv(run, ledger_url, tmp_path):
    store = open_store(ledger_url)
    # 3 users × 2 models with distinct totals so the order is fully determined
    rows = [
        make_row(
            i,
            prompt_tokens=100 * (i % 6 + 1),
            completion_tokens=i % 6 + 1,
            total_tokens=101 * (i % 6 + 1),
            user_email=f"u{i % 3}@corp.example",
            model=f"m{i % 2}",
        )
        for i in range(60)
    ]
    store.insert_rows(rows)
    store.close()
    absent = str(tmp_path / "absent.yaml")
    # the test database's role is the superuser postgres (tests/test_ledger_query_safety.py: a reader)
    su = ["--allow-superuser"] if ledger_url.startswith("postgresql") else []
    code, out, err = run(
        "ledger", "query", VERBATIM_SQL, "--ledger.url", ledger_url, "--config.file", absent, *su
    )
    assert code == 0, err
    assert out == (
        "user_email       model  total_tokens_sum  prompt_tokens_sum  output_tokens_sum\n"
        "---------------  -----  ----------------  -----------------  -----------------\n"
        "u2@corp.example  m1                 6060               6000                 60\n"
        "u1@corp.example  m0                 5050               5000                 50\n"
        "u0@corp.example  m1                 4040               4000                 40\n"
        "u2@corp.example  m0                 3030               3000                 30\n"
        "u1@corp.example  m1                 2020               2000                 20\n"
        "u0@corp.example  m0                 1010               1000                 10\n"
        "(6 rows)\n"
    )
    code, out, _ = run(
        "ledger", "query", VERBATIM_SQL, "--csv", "--ledger.url", ledger_url, "--config.file", absent, *su
    )
    assert out.splitlines()[:2] == [
        "user_email,model,total_tokens_sum,prompt_tokens_sum,output_tokens_sum",
        "u2@corp.example,m1,6060,6000,60",
    ]
    assert len(out.splitlines()) == 7

    code, out, err = run(
        "ledger",
        "query",
        "DELETE FROM http_analytics",
        "--ledger.url",
        ledger_url,
        "--config.file",
        absent,
        *su,
    )
    assert code == 1 and out == "" and "read-only" in err
    code, _, err = run(
        "ledger",
        "query",
        "SELECT nope FROM public.http_analytics",
        "--ledger.url",
        ledger_url,
        "--config.file",
        absent,
        *su,
    )
    assert code == 1 and "query failed" in err and "nope" in err
    assert open_store(ledger_url).count_rows() == 60


def test_ledger_summary(run, cfg_file, tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/ledger.db")
    store.insert_rows([make_row(i) for i in range(56)])  # days 1..28, twice
    store.close()
    code, out, err = run(
        "ledger", "summary", "--since", "2024-05-01", "--until", "2024-05-03", "--config.file", cfg_file
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == SUMMARY_COLUMNS
    # rows 0, 1, 28, 29 fall on May 1st and 2nd
    want = [make_row(i) for i in (0, 1, 28, 29)]
    total = lines[-2].split()
    assert total[0] == "TOTAL"
    assert [int(x) for x in total[1:]] == [
        4,
        sum(r.prompt_tokens for r in want),
        sum(r.completion_tokens for r in want),
        sum(r.total_tokens for r in want),
        sum(r.cached_tokens for r in want),
        sum(r.estimated for r in want),
    ]
    code, out, _ = run("ledger", "summary", "--csv", "--config.file", cfg_file)
    data = list(csv.DictReader(io.StringIO(out)))
    assert sum(int(r["requests"]) for r in data) == 56 and {r["team"] for r in data} == {
        "research",
        "support",
    }
    code, _, err = run("ledger", "summary", "--since", "yesterday", "--config.file", cfg_file)
    assert code == 2 and "--since 'yesterday' is not an ISO date" in err
    code, _, err = run(
        "ledger", "summary", "--since", "2024-05-02", "--until", "2024-05-01", "--config.file", cfg_file
    )
    assert code == 2 and "must be after" in err


@pytest.mark.parametrize("command", [("ledger", "summary"), ("keys", "list"), ("keys", "revoke", "k-1")])
def test_reading_a_mistyped_sqlite_path_is_an_error_and_creates_nothing(run, tmp_path, command):
    missing = tmp_path / "typo" / "ledgr.db"
    code, _, err = run(
        *command, "--ledger.url", f"sqlite:///{missing}", "--config.file", str(tmp_path / "none.yaml")
    )
    assert code == 1
    assert f"SQLite ledger {missing} does not exist; check ledger.url or --ledger.url" in err
    assert not missing.exists() and not missing.parent.exists()


def test_cli_binary_end_to_end(tmp_path):
    """The installed `chargeback` command, as an operator runs it."""
    exe = Path(sys.executable).parent / "chargeback"
    url = f"sqlite:///{tmp_path}/ledger.db"
    env = {**os.environ, "CHARGEBACK_CONFIG": str(tmp_path / "none.yaml")}
    p = subprocess.run(
        [str(exe), "keys", "create", "--user", "a@corp.example", "--team", "t", "--ledger.url", url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    p = subprocess.run(
        [str(exe), "ledger", "query", VERBATIM_SQL, "--ledger.url", url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1] == "(0 rows)"
