"""`chargeback keys import` (bulk keys, tokens once to a 0600 file) and `chargeback ledger maintain`
(partitions ahead, retention) as the real command, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import os
import stat
import subprocess
from datetime import date
from pathlib import Path

import psycopg
from support.ledger import make_row, write_ledger_config

from exporter.ledger.keys import hash_token
from exporter.ledger.store import open_store
from exporter.stack import chargeback_argv


def write_config(tmp_path: Path, url: str, n_users: int, n_teams: int) -> Path:
    users = {f"u{u:05d}@corp.example": f"t{u % n_teams:03d}" for u in range(n_users)}
    return write_ledger_config(tmp_path / "chargeback.yaml", url, users)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(chargeback_argv(*args), capture_output=True, text=True, timeout=300)


def test_import_20000_keys_tokens_once_to_a_0600_file(ledger_url, tmp_path) -> None:
    cfg = write_config(tmp_path, ledger_url, 10_000, 1_000)
    src = tmp_path / "keys.csv"
    with src.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "team"])
        for i in range(20_000):  # two keys per user; the team column may be left empty
            u = i % 10_000
            w.writerow([f"u{u:05d}@corp.example", f"t{u % 1000:03d}" if i < 10_000 else ""])
    out = tmp_path / "tokens.csv"
    r = run("keys", "import", str(src), "--out", str(out), "--config.file", str(cfg))
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"created 20000 keys; tokens written to {out} (mode 0600, shown nowhere else)\n"
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    with out.open() as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 20_000
    assert len({line["token"] for line in lines}) == 20_000
    store = open_store(ledger_url)
    try:
        active = {h: rec for h, rec in store.load_active_keys()}
        assert len(active) == 20_000
        for line in lines[:50] + lines[-50:]:
            rec = active[hash_token(line["token"])]
            assert (rec.user_email, rec.team, rec.key_id) == (
                line["user_email"],
                line["team"],
                line["key_id"],
            )
        assert sum(1 for rec in active.values() if rec.user_email == "u00042@corp.example") == 2
        # the file is never overwritten: a second import into it is refused, nothing stored
        r = run("keys", "import", str(src), "--out", str(out), "--config.file", str(cfg))
        assert r.returncode == 2
        assert f"--out {out} exists" in r.stderr
        assert len(store.load_active_keys()) == 20_000
        # `keys create` for one user at this directory size
        r = run("keys", "create", "--user", "u09999@corp.example", "--token-only", "--config.file", str(cfg))
        assert r.returncode == 0, r.stderr
        assert active.get(hash_token(r.stdout.strip())) is None
        assert len(store.load_active_keys()) == 20_001
    finally:
        store.close()


def test_import_with_bad_lines_names_each_and_creates_nothing(ledger_url, tmp_path) -> None:
    cfg = write_config(tmp_path, ledger_url, 10, 2)
    src = tmp_path / "keys.csv"
    src.write_text(
        "u00001@corp.example,t001\n"
        "not-an-email,t000\n"
        "u00002@corp.example,t001\n"  # config says t000
        "u00003@corp.example,t001,2025-01-01\n"
        "nobody@corp.example,t000\n"
        "u00004@corp.example,t000,x,y\n"
    )
    out = tmp_path / "tokens.csv"
    r = run("keys", "import", str(src), "--out", str(out), "--config.file", str(cfg))
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "chargeback: no keys created:",
        f"{src} line 2: user 'not-an-email' is not an email address",
        f"{src} line 3: u00002@corp.example belongs to team 't000' in {cfg}, not 't001'",
        f"{src} line 4: expires '2025-01-01' is in the past",
        f"{src} line 5: unknown user 'nobody@corp.example': add it under users: in {cfg} first",
        f"{src} line 6: expected user,team[,expires], got 4 columns",
    ]
    assert not out.exists()
    store = open_store(ledger_url)
    try:
        assert store.load_active_keys() == []
    finally:
        store.close()


def test_ledger_maintain_retention_on_both_backends(ledger_url, tmp_path) -> None:
    cfg = write_config(tmp_path, ledger_url, 3, 1)
    with (tmp_path / "chargeback.yaml").open("a") as f:
        f.write("  retention_months: 2\n")
    store = open_store(ledger_url)
    try:
        if store.backend == "postgresql":
            store.ensure_partitions([date(2024, 3, 1), date(2024, 4, 1), date(2024, 5, 1)])
        rows = [make_row(i, timestamp=f"2024-0{3 + i % 3}-1{i % 10}T08:00:00.000000Z") for i in range(30)]
        assert store.insert_rows(rows) == 30
    finally:
        store.close()
    r = run("ledger", "maintain", "--now", "2024-05-20T00:00:00Z", "--config.file", str(cfg))
    assert r.returncode == 0, r.stderr
    if ledger_url.startswith("postgresql"):
        assert "created partition for 2024-06\ncreated partition for 2024-07\n" in r.stdout
        assert (
            "retention: keep 2 months (rows from 2024-04-01); dropped 1 partitions: http_analytics_2024_03;"
            " deleted 0 older rows; the daily rollup is kept" in r.stdout
        )
        with psycopg.connect(ledger_url) as conn:
            names = [
                n
                for (n,) in conn.execute(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                    " WHERE i.inhparent = 'http_analytics'::regclass ORDER BY 1"
                )
                if not n.startswith("http_analytics_20") or n < "http_analytics_2025"  # not today's
            ]
        assert names == [
            "http_analytics_2024_04",
            "http_analytics_2024_05",
            "http_analytics_2024_06",
            "http_analytics_2024_07",
            "http_analytics_default",
        ]
    else:
        assert r.stdout == (
            "retention: keep 2 months (rows from 2024-04-01); dropped 0 partitions; deleted 10 older rows;"
            " the daily rollup is kept\n"
        )
    store = open_store(ledger_url)
    try:
        _, got = store.query("SELECT request_id FROM http_analytics ORDER BY request_id")
        assert [g[0] for g in got] == [r.request_id for r in rows if not r.timestamp.startswith("2024-03")]
        # the rollup still holds March
        _, march = store.query(
            "SELECT SUM(requests) FROM http_analytics_daily WHERE day < " + store.placeholder,
            ["2024-04-01" if store.backend == "sqlite" else date(2024, 4, 1)],
        )
        assert int(march[0][0]) == 10
    finally:
        store.close()
