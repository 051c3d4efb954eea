"""Start and stop the stack's processes on one machine: used by ``chargeback demo`` and by the tests.

Everything binds to 127.0.0.1 on free ports and lives in a working directory the caller owns.

    prom = start_prometheus(workdir, {"chargeback-proxy": ["127.0.0.1:9841"]}, rule_files=[...])
    prom.url  # http://127.0.0.1:PORT
    prom.stop()

``ManagedProcess`` is also a context manager; ``stop()`` sends SIGTERM, waits, then SIGKILLs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import requests
import yaml

from exporter import assets

BINARY_PACKAGES = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
    "victoria-metrics": "victoria-metrics",
}


class StackError(RuntimeError):
    """A process of the stack could not be found, started or reached."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Debian names some binaries differently from upstream.
BINARY_ALIASES = {"alertmanager": ("alertmanager", "prometheus-alertmanager")}


def find_binary(name: str) -> str:
    path = None
    for candidate in BINARY_ALIASES.get(name, (name,)):
        path = shutil.which(candidate) or (
            f"/usr/bin/{candidate}" if os.access(f"/usr/bin/{candidate}", os.X_OK) else None
        )
        if path:
            break
    if not path:
        package = BINARY_PACKAGES.get(name, name)
        raise StackError(
            f"{name} not found: install the Debian package '{package}' (apt-get install {package})"
        )
    return path


def rule_files() -> list[Path]:
    """The project's rule files (recording and alerting), not their tests: the installed package's
    copy, or the checkout's rules/ (exporter.assets)."""
    return assets.asset_files("rules")


class ManagedProcess:
    """A child process with a log file, a readiness URL and a clean stop."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        workdir: Path,
        url: str | None = None,
        ready_path: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.workdir = Path(workdir)
        self.url = url
        self.ready_path = ready_path
        self.env = dict(os.environ, **(env or {}))
        self.log_path = self.workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 30.0) -> ManagedProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        if self.url and self.ready_path is not None:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.url is not None
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise StackError(
                    f"{self.name} exited with {self.proc.returncode} during start-up:\n{self.log_tail()}"
                )
            try:
                r = requests.get(self.url + (self.ready_path or "/"), timeout=1)
                if r.status_code < 500:
                    return
                last = f"HTTP {r.status_code}"
            except requests.RequestException as exc:
                last = type(exc).__name__
            time.sleep(0.1)
        raise StackError(
            f"{self.name} not ready at {self.url}{self.ready_path} after {timeout:.0f}s ({last}):\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait up to timeout, then SIGKILL the whole process group. Returns the exit code."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(5)
            code = self.proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def chargeback_argv(*args: str) -> list[str]:
    """argv that runs the ``chargeback`` CLI with this interpreter (works from a venv or not)."""
    return [sys.executable, "-m", "exporter.cli", *args]


def prometheus_config(
    scrape_targets: Mapping[str, Sequence[str]],
    rule_files: Sequence[Path] = (),
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    alertmanager: str | None = None,
    remote_write_url: str | None = None,
) -> dict[str, object]:
    cfg: dict[str, object] = {
        "global": {
            "scrape_interval": scrape_interval,
            "evaluation_interval": evaluation_interval,
            "scrape_timeout": scrape_interval,
        },
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(targets)}]}
            for job, targets in scrape_targets.items()
        ],
    }
    if alertmanager:
        cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    if remote_write_url:
        cfg["remote_write"] = [{"url": remote_write_url}]
    return cfg


def start_prometheus(
    workdir: Path,
    scrape_targets: Mapping[str, Sequence[str]] | None = None,
    rule_files: Sequence[Path] = (),
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    alertmanager: str | None = None,
    storage_dir: Path | None = None,
    retention: str = "400d",
    remote_write_url: str | None = None,
    extra_args: Sequence[str] = (),
    port: int | None = None,
    name: str = "prometheus",
) -> ManagedProcess:
    """A real Prometheus (Debian package) with the given scrape jobs and rule files.

    ``storage_dir`` lets a test point it at a TSDB filled by ``promtool tsdb create-blocks-from``.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    cfg_path = workdir / f"{name}.yml"
    cfg_path.write_text(
        yaml.safe_dump(
            prometheus_config(
                scrape_targets or {},
                rule_files,
                scrape_interval,
                evaluation_interval,
                alertmanager,
                remote_write_url,
            ),
            sort_keys=False,
        )
    )
    argv = [
        find_binary("prometheus"),
        f"--config.file={cfg_path}",
        f"--storage.tsdb.path={storage_dir or workdir / (name + '-data')}",
        f"--storage.tsdb.retention.time={retention}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        "--web.enable-admin-api",
        "--log.level=warn",
        *extra_args,
    ]
    return ManagedProcess(name, argv, workdir, f"http://127.0.0.1:{port}", "/-/ready").start()


def start_alertmanager(
    workdir: Path,
    smtp_smarthost: str,
    receiver_email: str = "ops@example.test",
    sender: str = "alertmanager@example.test",
    group_wait: str = "1s",
    group_interval: str = "2s",
    repeat_interval: str = "1h",
    routes: Sequence[Mapping[str, object]] = (),
    extra_receivers: Sequence[Mapping[str, object]] = (),
    port: int | None = None,
) -> ManagedProcess:
    """A real Alertmanager routing every alert by email through ``smtp_smarthost`` (host:port)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    cluster_port = free_port()
    cfg = {
        "global": {"smtp_smarthost": smtp_smarthost, "smtp_from": sender, "smtp_require_tls": False},
        "route": {
            "receiver": "email",
            "group_by": ["alertname", "team"],
            "group_wait": group_wait,
            "group_interval": group_interval,
            "repeat_interval": repeat_interval,
            "routes": list(routes),
        },
        "receivers": [
            {"name": "email", "email_configs": [{"to": receiver_email, "send_resolved": False}]},
            *extra_receivers,
        ],
    }
    cfg_path = workdir / "alertmanager.yml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    argv = [
        find_binary("alertmanager"),
        f"--config.file={cfg_path}",
        f"--storage.path={workdir / 'alertmanager-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        # links in notifications ("view in Alertmanager", silences) point here, not at the hostname
        f"--web.external-url=http://127.0.0.1:{port}",
        f"--cluster.listen-address=127.0.0.1:{cluster_port}",
        "--log.level=warn",
    ]
    return ManagedProcess("alertmanager", argv, workdir, f"http://127.0.0.1:{port}", "/-/ready").start()


def start_victoria_metrics(
    workdir: Path,
    scrape_targets: Mapping[str, Sequence[str]] | None = None,
    scrape_interval: str = "1s",
    retention: str = "2y",
    extra_args: Sequence[str] = (),
    port: int | None = None,
) -> ManagedProcess:
    """Single-node VictoriaMetrics (Debian package); scrapes the targets itself when given, and
    accepts Prometheus remote write at ``url + '/api/v1/write'``."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv = [
        find_binary("victoria-metrics"),
        f"-storageDataPath={workdir / 'vm-data'}",
        f"-httpListenAddr=127.0.0.1:{port}",
        f"-retentionPeriod={retention}",
        "-search.latencyOffset=0s",
        "-loggerLevel=WARN",
    ]
    if scrape_targets:
        cfg_path = workdir / "vm-scrape.yml"
        cfg_path.write_text(
            yaml.safe_dump(prometheus_config(scrape_targets, (), scrape_interval), sort_keys=False)
        )
        argv.append(f"-promscrape.config={cfg_path}")
    argv.extend(extra_args)
    return ManagedProcess("victoria-metrics", argv, workdir, f"http://127.0.0.1:{port}", "/health").start()


def wait_for(
    predicate: object, timeout: float = 30.0, interval: float = 0.2, what: str = "condition"
) -> object:
    """Poll ``predicate()`` until it returns something truthy; raise StackError naming ``what`` on timeout."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # keep polling; report the last failure
            last_exc = exc
        time.sleep(interval)
    raise StackError(
        f"timed out after {timeout:.0f}s waiting for {what}"
        + (f" (last error: {last_exc})" if last_exc else "")
    )


def prom_query(
    base_url: str, query: str, at: float | None = None, timeout: float = 10.0
) -> list[dict[str, object]]:
    """Instant query → the result list; raises StackError with the query on any error."""
    params: dict[str, str] = {"query": query}
    if at is not None:
        params["time"] = f"{at:.3f}"
    try:
        r = requests.get(f"{base_url}/api/v1/query", params=params, timeout=timeout)
        body = r.json()
    except (requests.RequestException, ValueError) as exc:
        raise StackError(f"query {query!r} against {base_url} failed: {exc}") from exc
    if body.get("status") != "success":
        raise StackError(f"query {query!r} against {base_url}: {body.get('errorType')}: {body.get('error')}")
    return list(body["data"]["result"])
