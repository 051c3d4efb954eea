"""The config loader: the shipped example loads, every bad value is named by file and key path."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from exporter.config import ConfigError, load_config, parse_config, parse_listen

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "chargeback.example.yaml"

MINIMAL = """
pools: {a100: {gpu_hourly_cost: 2.5, gpus: 2, capacity_tokens_per_second: 1000}}
teams: {research: {budget: 100, billing_contacts: [lead@corp.example]}}
models: {m1: {upstreams: [http://127.0.0.1:8000/v1], pool: a100}}
users: {alice@corp.example: {team: research}}
"""


def test_example_config_loads() -> None:
    cfg = load_config(EXAMPLE, environ={})
    assert cfg.currency == "EUR"
    assert cfg.pools["h100"].gpu_hourly_cost == Decimal("2.80")
    assert cfg.pools["h100"].hourly_cost == Decimal("11.20")
    assert cfg.pools["l40s"].gpus == 2
    assert cfg.models["bge-m3"].allowed_teams == ("research", "support")
    assert cfg.models["llama-3.1-70b-instruct"].token_weights.completion == Decimal(3)
    assert cfg.teams["research"].budget == Decimal(5000)
    assert cfg.report.hybrid.weights == {
        "token_share": Decimal("0.6"),
        "time_share": Decimal("0.2"),
        "fixed_share": Decimal("0.2"),
    }
    assert [t.up_to_tokens for t in cfg.report.tiers] == [100_000_000, 1_000_000_000, None]
    assert cfg.gpu_exporter.pool_by_uuid["GPU-5c1e2a44-0000-0000-0000-000000000001"] == "l40s"
    assert cfg.ledger.journal_fsync_seconds == 0.01


def test_money_is_decimal_not_float() -> None:
    cfg = parse_config(MINIMAL.replace("2.5", "0.1"))
    assert cfg.pools["a100"].gpu_hourly_cost == Decimal("0.1")
    assert cfg.pools["a100"].hourly_cost == Decimal("0.2")


def test_env_substitution() -> None:
    text = MINIMAL.replace("pool: a100}", "pool: a100, api_key: '${UP_KEY}'}")
    cfg = parse_config(text, environ={"UP_KEY": "s3cret"})
    assert cfg.models["m1"].api_key == "s3cret"
    with pytest.raises(ConfigError, match=r"models\.m1\.api_key: environment variable UP_KEY is not set"):
        parse_config(text, "chargeback.yaml", environ={})
    assert (
        parse_config(text.replace("${UP_KEY}", "${UP_KEY:-fallback}"), environ={}).models["m1"].api_key
        == "fallback"
    )


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (
            "teams: {research: {budget: lots}}",
            'chargeback.yaml: teams.research.budget: expected a number, got "lots"',
        ),
        (
            "teams: {research: {budget: -5}}",
            "chargeback.yaml: teams.research.budget: must be at least 0, got -5",
        ),
        (
            "teams: {research: {billing_contacts: [nobody]}}",
            'teams.research.billing_contacts[0]: not an email address: "nobody"',
        ),
        ("teams: {research: {colour: red}}", "teams.research.colour: unknown key"),
        ("models: {m1: {upstreams: [http://x/v1], pool: nope}}", 'models.m1.pool: unknown pool "nope"'),
        (
            "models: {m1: {upstreams: [ftp://x], pool: a100}}",
            'models.m1.upstreams[0]: expected an http(s) URL, got "ftp://x"',
        ),
        ("models: {m1: {pool: a100}}", "models.m1.upstreams: at least one upstream base URL is required"),
        (
            "models: {m1: {upstreams: [http://x/v1], pool: a100, teams: [ghosts]}}",
            'models.m1.teams[0]: unknown team "ghosts"',
        ),
        ("pools: {a100: {gpu_hourly_cost: -1}}", "pools.a100.gpu_hourly_cost: must be at least 0, got -1"),
        (
            "pools: {a100: {gpu_hourly_cost: 1, capacity_tokens_per_second: 0}}",
            "pools.a100.capacity_tokens_per_second: must be greater than 0",
        ),
        (
            "users: {alice@corp.example: {team: ghosts}}",
            'users.alice@corp.example.team: unknown team "ghosts"',
        ),
        ("users: {alice: {team: research}}", "users.alice: user keys must be email addresses"),
        ("currency: euro", 'currency: expected a 3-letter ISO 4217 code such as EUR, got "euro"'),
        ("timezone: Mars/Olympus", 'timezone: unknown time zone "Mars/Olympus"'),
        (
            "ledger: {url: 'mysql://x'}",
            'ledger.url: expected sqlite:///PATH or postgresql://..., got "mysql://x"',
        ),
        (
            "ledger: {journal_fsync_seconds: 0}",
            "ledger.journal_fsync_seconds: must be at least 0.001, got 0",
        ),
        ("proxy: {listen: ['nohost']}", 'proxy.listen[0]: expected HOST:PORT or :PORT, got "nohost"'),
        ("gpu_exporter: {default_pool: nope}", 'gpu_exporter.default_pool: unknown pool "nope"'),
        (
            "report: {method: guesswork}",
            'report.method: expected one of proxy-price-per-token, token-share, time-based, hybrid, tiered, flat-fee-with-overages, got "guesswork"',
        ),
        (
            "report: {hybrid: {weights: {token_share: 0.5, time_share: 0.4}}}",
            "report.hybrid.weights: weights must sum to 1, got 0.9",
        ),
        (
            "report: {tiers: [{up_to_tokens: 1000, price_per_million: 1}, {up_to_tokens: 500, price_per_million: 0.5}]}",
            "report.tiers[1].up_to_tokens: tiers out of order: 500 is not above the previous bound 1000",
        ),
        ("report: {method: tiered}", "report.tiers: required when report.method is tiered"),
        ("smtp: {security: tls}", 'smtp.security: expected one of none, starttls, ssl, got "tls"'),
        ("bogus: 1", "bogus: unknown key"),
        ("teams: [1, 2", "not valid YAML"),
    ],
)
def test_errors_name_file_key_and_problem(patch: str, message: str) -> None:
    # later keys replace earlier ones, so the patch overrides MINIMAL's section
    import yaml

    base = yaml.safe_load(MINIMAL)
    try:
        override = yaml.safe_load(patch)
    except yaml.YAMLError:
        text = patch
    else:
        base.update(override)
        text = yaml.safe_dump(base)
    with pytest.raises(ConfigError) as err:
        parse_config(text, "/etc/chargeback/chargeback.yaml")
    assert str(err.value).startswith("chargeback.yaml: ")
    assert message in str(err.value)


def test_parse_listen() -> None:
    assert parse_listen(":9841") == ("0.0.0.0", 9841)
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:8080") == ("::1", 8080)
    with pytest.raises(ConfigError):
        parse_listen("127.0.0.1:70000")


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_check_config_command(tmp_path: Path) -> None:
    good = tmp_path / "chargeback.yaml"
    good.write_text(MINIMAL)
    out = subprocess.run(
        [sys.executable, "-m", "exporter.cli", "check-config", "--config.file", str(good)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "1 pools, 1 models, 1 teams, 1 users" in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("teams: {research: {budget: lots}}\n")
    out = subprocess.run(
        [sys.executable, "-m", "exporter.cli", "check-config", "--config.file", str(bad)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert 'bad.yaml: teams.research.budget: expected a number, got "lots"' in out.stderr
