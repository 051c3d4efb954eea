"""The config loader: the shipped example loads, every bad value is named by file and key path."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

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


def _check_config(path: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``chargeback check-config`` on ``path`` in a child process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "exporter.cli", "check-config", "--config.file", str(path)],
        capture_output=True,
        text=True,
        **kwargs,
    )


def test_check_config_command(tmp_path: Path) -> None:
    good = tmp_path / "chargeback.yaml"
    good.write_text(MINIMAL)
    out = _check_config(good)
    assert out.returncode == 0, out.stderr
    assert "1 pools, 1 models, 1 teams, 1 users" in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("teams: {research: {budget: lots}}\n")
    out = _check_config(bad)
    assert out.returncode == 2
    assert 'bad.yaml: teams.research.budget: expected a number, got "lots"' in out.stderr


def _bomb(levels: int = 9) -> str:
    """The "billion laughs": each level lists the previous one nine times (9**9 values expanded)."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [{', '.join(['*' + prev] * 9)}]")
    return "\n".join(lines) + "\n"


HOSTILE_FILES: dict[str, tuple[bytes, str]] = {
    "not UTF-8": (
        MINIMAL.encode() + b"# caf\xe9\n",
        f"{{path}}: not UTF-8 text (byte 0xe9 at offset {len(MINIMAL) + 5}); save the file as UTF-8",
    ),
    "recursive alias": (
        b"models: &m {m1: *m}\n",
        "{name}: models.m1: a YAML alias refers to a value that contains it (recursive alias) (line 1, column 9)",
    ),
    "alias bomb": (
        _bomb().encode(),
        "{name}: i[8][8]: YAML aliases expand to more than 2000000 values (an alias bomb) (line 7, column 4)",
    ),
    "space in a variable name": (
        MINIMAL.encode() + b"ledger: {url: '${MISSING VAR}'}\n",
        '{name}: ledger.url: malformed environment reference "${{MISSING VAR}}": expected ${{NAME}} or '
        "${{NAME:-default}}, NAME made of letters, digits and _",
    ),
    "zero timeout": (
        MINIMAL.encode() + b"proxy: {upstream_timeout_seconds: 0}\n",
        "{name}: proxy.upstream_timeout_seconds: must be greater than 0 seconds, got 0",
    ),
    "empty": (b"", "{name}: the file is empty (expected a YAML mapping of settings: models, teams, ...)"),
    "comments only": (
        b"# nothing yet\n",
        "{name}: the file is empty (expected a YAML mapping of settings: models, teams, ...)",
    ),
    "credential twice": (
        MINIMAL.replace("http://127.0.0.1", "http://u:pw@127.0.0.1")
        .replace("pool: a100}", "pool: a100, api_key: k}")
        .encode(),
        "{name}: models.m1.upstreams[0]: has user:password@ and the model has an api_key: an upstream gets "
        "one credential, remove one of them",
    ),
}


def _limits() -> None:
    """The child may use 1 GiB of address space and 20 s of CPU: an unbounded alias expansion dies."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    resource.setrlimit(resource.RLIMIT_CPU, (20, 20))


@pytest.mark.parametrize("case", list(HOSTILE_FILES))
def test_hostile_config_files_get_a_clear_error(tmp_path: Path, case: str) -> None:
    data, message = HOSTILE_FILES[case]
    path = tmp_path / "chargeback.yaml"
    path.write_bytes(data)
    out = _check_config(
        path,
        env={**os.environ, "MISSING": "set, but the name has a space"},
        preexec_fn=_limits,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr == f"chargeback: config error: {message.format(path=path, name=path.name)}\n"
    assert "u:pw" not in out.stderr


# Each kind of problem the section schemas report, in the loader's wording (pydantic's own messages
# never reach the user).
@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (
            "teams: {research: {budget: true}}",
            "teams.research.budget: expected a number, got a boolean (true)",
        ),
        ("teams: {research: {budget: .inf}}", "teams.research.budget: expected a finite number, got inf"),
        (
            "teams: {research: {business_unit: [a]}}",
            "teams.research.business_unit: expected a string, got a list",
        ),
        ("teams: {research: 5}", "teams.research: expected a mapping, got 5"),
        ("teams: {'bad name': {}}", 'teams.bad name: invalid name "bad name"'),
        ("pools: {a100: {gpus: 2}}", "pools.a100.gpu_hourly_cost: is required"),
        (
            "pools: {a100: {gpu_hourly_cost: 1, gpus: 1.5}}",
            "pools.a100.gpus: expected a whole number, got 1.5",
        ),
        (
            "pools: {a100: {gpu_hourly_cost: 1, gpu_indexes: [0, x]}}",
            'pools.a100.gpu_indexes[1]: expected a whole number, got "x"',
        ),
        (
            "pools: {a100: {gpu_hourly_cost: 1, gpu_uuids: ['']}}",
            'pools.a100.gpu_uuids[0]: expected a non-empty string, got ""',
        ),
        (
            "models: {m1: {upstreams: [http://x/v1], pool: a100, token_weights: {prompt: 1, output: 2}}}",
            "models.m1.token_weights.output: unknown key (expected one of: completion, prompt)",
        ),
        (
            "models: {m1: {upstreams: [http://x/v1], pool: a100, tokenize: {api: ollama}}}",
            'models.m1.tokenize.api: expected one of llama.cpp, llama-cpp-python, vllm, tgi, got "ollama"',
        ),
        (
            "models: {m1: {upstreams: [http://x/v1], pool: a100, usage_fallback: tokenize}}",
            "models.m1.tokenize: usage_fallback: tokenize needs a tokenize section",
        ),
        ("models: {m1: {upstream: http://x/v1, pool: a100, colour: red}}", "models.m1.colour: unknown key"),
        (
            "ledger: {url: 'mysql://u:pw@db/x'}",
            'ledger.url: expected sqlite:///PATH or postgresql://..., got "mysql://[redacted]@db/x"',
        ),
        ("ledger: {batch_size: 0}", "ledger.batch_size: must be at least 1, got 0"),
        (
            "proxy: {metrics_labels: everyone}",
            'proxy.metrics_labels: expected one of user, team, got "everyone"',
        ),
        (
            "proxy: {listen: [':8080', ':99999']}",
            'proxy.listen[1]: expected HOST:PORT or :PORT, got ":99999"',
        ),
        (
            "gpu_exporter: {pool_by_index: {-1: a100}}",
            "gpu_exporter.pool_by_index.-1: GPU index must be a whole number ≥ 0",
        ),
        (
            "gpu_exporter: {pool_by_uuid: {GPU-1: nope}}",
            'gpu_exporter.pool_by_uuid.GPU-1: unknown pool "nope"',
        ),
        (
            "gpu_exporter: {idle_threshold_ratio: 2}",
            "gpu_exporter.idle_threshold_ratio: must be at most 1, got 2",
        ),
        (
            "prometheus: {url: 'localhost:9090'}",
            'prometheus.url: expected an http(s) URL, got "localhost:9090"',
        ),
        (
            "report: {realtime_method: hybrid}",
            'report.realtime_method: expected one of token-share, proxy-price-per-token, got "hybrid"',
        ),
        ("report: {locale: xx_YY}", 'report.locale: unknown locale "xx_YY"'),
        (
            "report: {finance_recipients: [finance]}",
            'report.finance_recipients[0]: not an email address: "finance"',
        ),
        (
            "report: {colour: red}",
            "report.colour: unknown key (expected one of: billing_contact, finance_recipients, flat_fee,",
        ),
        ("report: {hybrid: {weights: {gpu_share: 1}}}", "report.hybrid.weights.gpu_share: unknown component"),
        (
            "report: {hybrid: {fixed_shares: {research: 1}}}",
            "report.hybrid.weights: at least one component weight is required",
        ),
        (
            "report: {hybrid: {weights: {token_share: 1}, fixed_shares: {ghosts: 1}}}",
            'report.hybrid.fixed_shares.ghosts: unknown team "ghosts"',
        ),
        (
            "report: {hybrid: {weights: {fixed_share: 1}}}",
            "report.hybrid.fixed_shares: required when the fixed_share component has a weight",
        ),
        (
            "report: {tiers: [{price_per_million: 1}, {up_to_tokens: 5, price_per_million: 1}]}",
            "report.tiers[0].up_to_tokens: only the last tier may be open-ended",
        ),
        ("report: {tiers: [{up_to_tokens: 5}]}", "report.tiers[0].price_per_million: is required"),
        ("report: {tiers: 5}", "report.tiers: expected a list of tiers, got 5"),
        (
            "report: {method: flat-fee-with-overages}",
            "report.flat_fee: required when report.method is flat-fee-with-overages",
        ),
        (
            "report: {flat_fee: {teams: {ghosts: {monthly_fee: 1, overage_per_million: 1}}}}",
            'report.flat_fee.teams.ghosts: unknown team "ghosts"',
        ),
        (
            "report: {flat_fee: {default: {monthly_fee: 1}}}",
            "report.flat_fee.default.overage_per_million: is required",
        ),
        ("smtp: {port: 70000}", "smtp.port: must be at most 65535, got 70000"),
        ("smtp: {from: nobody}", 'smtp.from: not an email address: "nobody"'),
        ("limits: {teams: {ghosts: {}}}", 'limits.teams.ghosts: unknown team "ghosts"'),
        ("limits: {store: {timeout_ms: 0}}", "limits.store.timeout_ms: must be at least 1, got 0"),
        (
            "limits: {reconcile_with_prometheus_seconds: 2}",
            "limits.reconcile_with_prometheus_seconds: must be 0 (off) or at least 5, got 2",
        ),
        (
            "limits: {teams: {research: {tokens_per_minute: {enforce: block}}}}",
            "limits.teams.research.tokens_per_minute.limit: is required",
        ),
        ("currency_minor_units: 5", "currency_minor_units: must be at most 4, got 5"),
        ("[1, 2]", "expected a mapping, got a list"),
    ],
)
def test_every_error_kind_keeps_its_wording(patch: str, message: str) -> None:
    import yaml

    base = yaml.safe_load(MINIMAL)
    override = yaml.safe_load(patch)
    text = yaml.safe_dump({**base, **override} if isinstance(override, dict) else override)
    with pytest.raises(ConfigError) as err:
        parse_config(text, "/etc/chargeback/chargeback.yaml")
    assert str(err.value).startswith("chargeback.yaml: ")
    assert message in str(err.value)
    assert "pydantic" not in str(err.value) and "[type=" not in str(err.value)


def test_a_null_key_is_as_if_absent_and_sections_keep_their_attributes() -> None:
    cfg = parse_config(MINIMAL + "proxy: {listen: null}\nsmtp: {security: ssl}\nreport:\n")
    assert cfg.proxy.listen == ("0.0.0.0:8080",)
    assert cfg.smtp.port == 465 and cfg.smtp.from_address == "chargeback@localhost"
    assert cfg.report.tiers == () and cfg.report.flat_fee.default is None
    assert cfg.report.hybrid.weights == {"token_share": Decimal(1)}
    assert cfg.limits is None


def test_report_method_and_its_parameters_come_from_the_registry() -> None:
    """A method module registers its name and keys; the config accepts them with no other edit."""
    from exporter.report import method_registry
    from exporter.report.method_registry import Param, register
    from exporter.sections import Money

    names = method_registry.method_names()
    assert names == (
        "proxy-price-per-token",
        "token-share",
        "time-based",
        "hybrid",
        "tiered",
        "flat-fee-with-overages",
    )
    register(
        "test-flat-rate", order=99, params={"flat_rate": Param(Money, lambda: None)}, requires="flat_rate"
    )(lambda inputs, cfg: None)
    try:
        cfg = parse_config(MINIMAL + "report: {method: test-flat-rate, flat_rate: '2.50'}\n")
        assert cfg.report.method == "test-flat-rate" and cfg.report.flat_rate == Decimal("2.50")
        with pytest.raises(
            ConfigError, match=r"report\.flat_rate: required when report\.method is test-flat-rate"
        ):
            parse_config(MINIMAL + "report: {method: test-flat-rate}\n")
    finally:
        method_registry._REGISTRY.pop("test-flat-rate")
    with pytest.raises(ConfigError, match=r"report\.flat_rate: unknown key"):
        parse_config(MINIMAL + "report: {flat_rate: 1}\n")
