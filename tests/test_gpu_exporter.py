"""``chargeback gpu-exporter`` as a command: config errors, and a real process scraped by Prometheus."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from exporter import contract as c
from exporter.cli import main
from exporter.gpu.simulated import simulated_uuid
from exporter.stack import ManagedProcess, chargeback_argv, free_port, prom_query, start_prometheus, wait_for

CONFIG = """
currency: EUR
pools:
  h100: {gpu_hourly_cost: 2.80, gpu_indexes: [0]}
  a10: {gpu_hourly_cost: 0.75}
gpu_exporter:
  default_pool: a10
"""


def exporter_process(tmp_path: Path, port: int, *flags: str) -> ManagedProcess:
    """``chargeback gpu-exporter`` on CONFIG at 127.0.0.1:``port`` with ``flags`` (not started yet)."""
    cfg = tmp_path / "chargeback.yaml"
    cfg.write_text(CONFIG)
    argv = chargeback_argv(
        "gpu-exporter", f"--config.file={cfg}", f"--web.listen-address=127.0.0.1:{port}", *flags
    )
    return ManagedProcess("gpu-exporter", argv, tmp_path, f"http://127.0.0.1:{port}", "/-/healthy")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            "pools:\n  h100: {gpu_hourly_cost: 1}\ngpu_exporter: {default_pool: nope}\n",
            'gpu_exporter.default_pool: unknown pool "nope"',
        ),
        ("pools:\n  h100: {gpu_hourly_cost: -2}\n", "pools.h100.gpu_hourly_cost: must be at least 0"),
    ],
)
def test_bad_config_exits_non_zero_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: str, message: str
) -> None:
    path = tmp_path / "chargeback.yaml"
    path.write_text(config)
    with pytest.raises(SystemExit) as exc:
        main(["gpu-exporter", "--config.file", str(path), "--simulate", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("chargeback: config error: chargeback.yaml: ") and message in err


def test_bad_simulate_pattern_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "chargeback.yaml"
    path.write_text(CONFIG)
    assert (
        main(["gpu-exporter", "--config.file", str(path), "--simulate", "2", "--simulate-pattern", "duty=3"])
        == 2
    )
    assert "duty must be between 0 and 1" in capsys.readouterr().err


def test_exporter_process_scraped_by_prometheus(tmp_path: Path) -> None:
    port = free_port()
    # GPU 0 works at 75 % all the time, GPU 1 never works.
    process = exporter_process(
        tmp_path, port, "--simulate=2", "--simulate-pattern=period=60,duty=1,levels=0.75/0"
    )
    g0, g1 = simulated_uuid(0), simulated_uuid(1)
    with process.start() as exporter:
        landing = requests.get(exporter.url + "/", timeout=5)
        assert "/metrics" in landing.text and "simulated (2 GPUs" in landing.text
        # The same health endpoints as the proxy's listeners (exporter/health.py).
        for path in ("/-/healthy", "/-/ready", "/healthz"):
            answer = requests.get(exporter.url + path, timeout=5)
            assert (answer.status_code, answer.text) == (200, "ok\n"), path
        with start_prometheus(tmp_path / "prom", {"chargeback-gpu-exporter": [f"127.0.0.1:{port}"]}) as prom:

            def scraped_twice() -> bool:
                r = prom_query(prom.url, f'count_over_time({c.GPU_BUSY_SECONDS_TOTAL}{{uuid="{g0}"}}[1m])')
                return bool(r) and float(r[0]["value"][1]) >= 2  # type: ignore[index]

            wait_for(scraped_twice, timeout=30, what="two scrapes of the GPU exporter")

            def one(query: str) -> dict[str, float]:
                return {
                    str(r["metric"].get("uuid", "")): float(r["value"][1])  # type: ignore[index,union-attr]
                    for r in prom_query(prom.url, query)
                }

            def by_scrape(metric: str, uuid: str) -> dict[float, float]:
                """{scrape timestamp: value} over the last minute (all series of a scrape share it)."""
                r = prom_query(prom.url, f'{metric}{{uuid="{uuid}"}}[1m]')
                return {float(t): float(v) for t, v in r[0]["values"]}  # type: ignore[index,union-attr]

            info = prom_query(prom.url, c.GPU_INFO)
            assert sorted((r["metric"]["uuid"], r["metric"]["index"], r["metric"]["pool"]) for r in info) == [  # type: ignore[index]
                (g0, "0", "h100"),
                (g1, "1", "a10"),
            ]
            assert {r["metric"]["job"] for r in info} == {"chargeback-gpu-exporter"}  # type: ignore[index]
            assert {r["metric"]["driver_version"] for r in info} == {"simulated"}  # type: ignore[index]
            assert one(f'{c.GPU_HOURLY_COST}{{pool="h100"}}') == {g0: 2.8}
            assert one(f'{c.GPU_HOURLY_COST}{{pool="a10"}}') == {g1: 0.75}
            assert one(c.GPU_UTILIZATION_RATIO) == {g0: 0.75, g1: 0.0}
            assert one(c.GPU_IDLE) == {g0: 0.0, g1: 1.0}
            assert one(c.NVML_UP) == {"": 1.0}
            assert one(c.GPU_UNMAPPED_GPUS) == {"": 0.0}
            # Both GPUs are read at the same instant in a scrape: at every scrape GPU 0's busy
            # seconds are exactly 75 % of the seconds GPU 1 spent idle, in whole 0.5 s samples.
            busy0 = by_scrape(c.GPU_BUSY_SECONDS_TOTAL, g0)
            idle1 = by_scrape(c.GPU_IDLE_SECONDS_TOTAL, g1)
            assert set(busy0) == set(idle1) and len(busy0) >= 2
            for ts, idle_seconds in idle1.items():
                assert (idle_seconds * 2).is_integer()
                assert busy0[ts] == 0.75 * idle_seconds
            assert max(idle1.values()) > 0
            assert set(by_scrape(c.GPU_IDLE_SECONDS_TOTAL, g0).values()) == {0.0}
            assert set(by_scrape(c.GPU_BUSY_SECONDS_TOTAL, g1).values()) == {0.0}
            energy = one(c.GPU_ENERGY_JOULES_TOTAL)
            assert energy[g0] > energy[g1] > 0
    assert exporter.proc is not None and exporter.proc.returncode == 0  # clean stop on SIGTERM


def test_refused_requests_are_neither_logged_nor_echoed_by_the_exporter(tmp_path: Path) -> None:
    """A scraper's basic-auth header that aiohttp's parser refuses (a NUL in it) is not quoted in
    the exporter's log or its answer (exporter/listener.py)."""
    import socket

    secret = b"Basic " + b"c2NyYXBlcjpTM2NyZXRQYXNzd29yZA" * 2
    port = free_port()
    with exporter_process(tmp_path, port, "--simulate=1", "--log.level=debug").start() as exporter:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: " + secret + b"\x00x\r\n\r\n")
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        assert requests.get(exporter.url + "/metrics", timeout=5).status_code == 200  # still serving
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400"
    assert b"malformed HTTP request: a header is malformed" in body and secret not in body
    log_text = exporter.log_path.read_bytes()
    assert b"refused a malformed HTTP request from 127.0.0.1: a header is malformed" in log_text
    assert b"c2NyYXBlcjpTM2NyZXRQYXNzd29yZA" not in log_text
    assert exporter.proc is not None and exporter.proc.returncode == 0
