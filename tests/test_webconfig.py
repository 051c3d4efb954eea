"""TLS and basic auth on every listener (exporter/webconfig.py), in exporter-toolkit's web config
format: real proxy and GPU exporter processes with a self-signed certificate made here, the
official openai SDK over TLS, and a real Prometheus scraping both over TLS with basic auth."""

from __future__ import annotations

import ssl
import subprocess
import time
from pathlib import Path

import bcrypt
import openai
import pytest
import requests
import yaml

from exporter.sim.harness import create_keys, proxy_argv, proxy_config, start_simulator, write_config
from exporter.stack import ManagedProcess, chargeback_argv, find_binary, free_port, prom_query, wait_for
from exporter.webconfig import WebConfigError, load_web_config

PASSWORD = "scrape-s3cret"


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    key, crt = tmp_path / "tls.key", tmp_path / "tls.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return crt, key


def _web_yml(tmp_path: Path, cert: tuple[Path, Path], **extra: object) -> Path:
    doc: dict[str, object] = {
        "tls_server_config": {"cert_file": str(cert[0]), "key_file": str(cert[1])},
        # cost 4: the lowest bcrypt allows, so the test does not wait on the hash
        "basic_auth_users": {"prometheus": bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()},
        "http_server_config": {"headers": {"X-Content-Type-Options": "nosniff"}},
        **extra,
    }
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ({"tls_server_config": {"cert_file": "tls.crt"}}, "tls_server_config.key_file: required"),
        ({"tls_server_config": {"cert_file": "nope.crt", "key_file": "tls.key"}}, "tls_server_config.cert_file: no such file"),
        ({"tls_server_config": {"cert_file": "tls.crt", "key_file": "tls.key", "cipher_suites": ["x"]}}, "tls_server_config.cipher_suites: unknown or unsupported key"),
        ({"tls_server_config": {"cert_file": "tls.crt", "key_file": "tls.key", "min_version": "SSL3"}}, "tls_server_config.min_version: expected one of"),
        ({"basic_auth_users": {"p": "plaintext"}}, "basic_auth_users.p: expected a bcrypt hash"),
        ({"basic_auth_users": {"p": "$2y$10$tooshort"}}, "basic_auth_users.p: not a valid bcrypt hash"),
        ({"tls_config": {}}, "tls_config: unknown or unsupported key"),
    ],
)  # fmt: skip
def test_bad_web_config_names_file_and_key(
    tmp_path: Path, cert: tuple[Path, Path], doc: dict, where: str
) -> None:
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(WebConfigError) as exc:
        load_web_config(str(path))
    assert str(exc.value).startswith(f"{path}: {where}"), str(exc.value)


def test_relative_paths_are_relative_to_the_web_config(tmp_path: Path, cert: tuple[Path, Path]) -> None:
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({"tls_server_config": {"cert_file": "tls.crt", "key_file": "tls.key"}}))
    cfg = load_web_config(str(path))
    assert cfg is not None and cfg.ssl_context is not None and cfg.scheme == "https" and not cfg.users


# --------------------------------------------------------------------------- real processes


def _get(url: str, crt: Path, auth: tuple[str, str] | None = None) -> requests.Response:
    return requests.get(url, verify=str(crt), auth=auth, timeout=10)


def _assert_protected(url: str, crt: Path) -> str:
    r = _get(url, crt)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic ")
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert _get(url, crt, ("prometheus", "wrong")).status_code == 401
    assert _get(url, crt, ("someone", PASSWORD)).status_code == 401
    ok = _get(url, crt, ("prometheus", PASSWORD))
    assert ok.status_code == 200, ok.text
    assert ok.headers["X-Content-Type-Options"] == "nosniff"
    # plain HTTP to a TLS listener gets no answer
    with pytest.raises(requests.ConnectionError):
        requests.get(url.replace("https://", "http://"), timeout=5)
    return ok.text


@pytest.fixture
def servers(tmp_path: Path, cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert[0]))  # readiness checks over https trust our CA
    web = _web_yml(tmp_path, cert)
    procs: list[ManagedProcess] = []
    try:
        sim = start_simulator(tmp_path, models=["sim-small"])
        procs.append(sim)  # type: ignore[arg-type]
        doc = proxy_config(upstreams={"sim-small": [f"{sim.url}/v1"]}, workdir=tmp_path)
        config = write_config(tmp_path / "chargeback.yaml", doc)
        tokens = create_keys(doc["ledger"]["url"], {"alice@corp.example": "research"})
        api_port, metrics_port, gpu_port = free_port(), free_port(), free_port()
        proxy = ManagedProcess(
            "proxy",
            proxy_argv(
                "--config.file", str(config), "--web.listen-address", f"127.0.0.1:{api_port}",
                "--web.metrics-address", f"127.0.0.1:{metrics_port}", "--web.config.file", str(web),
            ),
            tmp_path, f"https://127.0.0.1:{api_port}", "/healthz",
        ).start()  # fmt: skip
        procs.append(proxy)
        gpu = ManagedProcess(
            "gpu-exporter",
            chargeback_argv(
                "gpu-exporter", "--config.file", str(config), "--simulate", "1",
                "--web.listen-address", f"127.0.0.1:{gpu_port}", "--web.config.file", str(web),
            ),
            tmp_path, f"https://127.0.0.1:{gpu_port}", "/metrics",
        ).start()  # fmt: skip
        procs.append(gpu)
        yield {
            "api": f"https://127.0.0.1:{api_port}",
            "metrics": f"127.0.0.1:{metrics_port}",
            "gpu": f"127.0.0.1:{gpu_port}",
            "token": tokens["alice@corp.example"],
            "cert": cert[0],
            "workdir": tmp_path,
        }
    finally:
        for p in reversed(procs):
            p.stop()


def test_tls_and_basic_auth_on_every_listener(servers) -> None:  # type: ignore[no-untyped-def]
    crt = servers["cert"]
    gpu_text = _assert_protected(f"https://{servers['gpu']}/metrics", crt)
    assert "chargeback_gpu_info{" in gpu_text
    # the proxy API over TLS with the official SDK; its own API keys authenticate (not basic auth)
    client = openai.OpenAI(
        base_url=servers["api"] + "/v1",
        api_key=servers["token"],
        max_retries=0,
        http_client=openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=str(crt))),
    )
    resp = client.chat.completions.create(model="sim-small", messages=[{"role": "user", "content": "a b c"}])
    assert resp.usage is not None and resp.usage.prompt_tokens > 0
    with pytest.raises(requests.ConnectionError):
        requests.get(servers["api"].replace("https://", "http://") + "/healthz", timeout=5)
    metrics_text = _assert_protected(f"https://{servers['metrics']}/metrics", crt)
    counted = [
        ln for ln in metrics_text.splitlines()
        if ln.startswith("chargeback_prompt_tokens_total{") and 'user="alice@corp.example"' in ln
    ]  # fmt: skip
    assert len(counted) == 1 and float(counted[0].rsplit(" ", 1)[1]) == resp.usage.prompt_tokens, counted


def test_prometheus_scrapes_over_tls_with_basic_auth(servers) -> None:  # type: ignore[no-untyped-def]
    try:
        binary = find_binary("prometheus")
    except Exception as exc:
        pytest.skip(str(exc))
    work: Path = servers["workdir"] / "prom"
    work.mkdir()
    tls = {"ca_file": str(servers["cert"])}

    def job(name: str, target: str, password: str) -> dict[str, object]:
        return {
            "job_name": name,
            "scheme": "https",
            "tls_config": tls,
            "basic_auth": {"username": "prometheus", "password": password},
            "static_configs": [{"targets": [target]}],
        }

    cfg = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            job("chargeback-proxy", servers["metrics"], PASSWORD),
            job("chargeback-gpu-exporter", servers["gpu"], PASSWORD),
            job("wrong-password", servers["gpu"], "nope"),
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    argv = [
        binary,
        f"--config.file={work / 'prometheus.yml'}",
        f"--storage.tsdb.path={work / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with ManagedProcess("prometheus", argv, work, f"http://127.0.0.1:{port}", "/-/ready").start() as prom:
        url = prom.url or ""

        def up() -> dict[str, float]:
            return {r["metric"]["job"]: float(r["value"][1]) for r in prom_query(url, "up", time.time())}  # type: ignore[index]

        wait_for(lambda: len(up()) == 3, timeout=30, what="a scrape of every job")
        assert up() == {"chargeback-proxy": 1.0, "chargeback-gpu-exporter": 1.0, "wrong-password": 0.0}
        gpus = prom_query(url, 'chargeback_gpu_info{job="chargeback-gpu-exporter"}', time.time())
        assert len(gpus) == 1
