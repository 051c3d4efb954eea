"""A private PostgreSQL server for fault tests: made with ``initdb`` in a temporary directory, so a
test may stop it (``pg_ctl stop -m immediate``), start it again, or freeze every one of its
processes (SIGSTOP) without touching the shared server other tests use.

As root, ``initdb`` refuses to run; the server then runs as the ``postgres`` user (``runuser``).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from exporter.stack import free_port


def pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


class PrivatePostgres:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cb-private-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.dir, "postgres", "postgres")
        self.frozen: list[int] = []

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.as_user, *argv], capture_output=True, text=True, check=check, timeout=60)

    def init(self) -> PrivatePostgres:
        initdb = pg_bin("initdb")
        if initdb is None:
            raise RuntimeError("initdb not found (make deps installs postgresql)")
        self._run(initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        return self

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(pg_bin("pg_ctl") or "pg_ctl", "-D", str(self.data), "-o", opts, "-l",
                  str(self.dir / "server.log"), "-w", "-t", "30", "start")  # fmt: skip

    def stop_immediate(self) -> None:
        """What a crash of the server looks like to clients: connections reset, no shutdown."""
        self._run(pg_bin("pg_ctl") or "pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def _pids(self) -> list[int]:
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        out = [pid]
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(stat.split("/")[2]))
        return out

    def freeze(self) -> None:
        """SIGSTOP the server and all its backends: it accepts TCP but never answers."""
        self.frozen = self._pids()
        for p in self.frozen:
            os.kill(p, signal.SIGSTOP)

    def thaw(self) -> None:
        for p in self.frozen:
            try:
                os.kill(p, signal.SIGCONT)
            except ProcessLookupError:
                continue
        self.frozen = []

    def destroy(self) -> None:
        self.thaw()
        if (self.data / "postmaster.pid").exists():
            self._run(pg_bin("pg_ctl") or "pg_ctl", "-D", str(self.data), "-m", "immediate", "stop",
                      check=False)  # fmt: skip
        shutil.rmtree(self.dir, ignore_errors=True)
