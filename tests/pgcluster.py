"""A private PostgreSQL cluster for outage tests: ``initdb`` and ``pg_ctl`` on a free
loopback port, stopped and started at will (as a database server going down and coming
back), removed at the end. The shared server of ``conftest.pg_url`` is never touched.

``initdb`` refuses to run as root: a root test run starts the cluster as the ``postgres``
user (``CALGUARD_PG_USER`` to choose another) in a directory of its own under /tmp.
PostgreSQL missing is a failure with instructions, never a skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.brokers import free_port


def _bindir() -> Path:
    env = os.environ.get("CALGUARD_PG_BIN")
    if env:
        return Path(env)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if found:
        return Path(found[-1])
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    pytest.fail(
        "PostgreSQL's server binaries (initdb, pg_ctl) are needed for this test and were not "
        "found. Install them (apt-get install postgresql) or set CALGUARD_PG_BIN.",
        pytrace=False,
    )


class PgCluster:
    """``start()``, ``stop()`` (fast shutdown: clients are cut off), ``remove()``."""

    def __init__(self) -> None:
        self.bin = _bindir()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="calguard-pg-"))
        self.data = self.root / "data"
        self.logfile = self.root / "server.log"
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = os.environ.get("CALGUARD_PG_USER", "postgres")
            try:
                entry = pwd.getpwnam(self.user)
            except KeyError:
                pytest.fail(
                    f"initdb will not run as root and there is no {self.user!r} user to run it "
                    "as; create one or set CALGUARD_PG_USER",
                    pytrace=False,
                )
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.running = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 120) -> None:
        extra: dict[str, Any] = {}
        if self.user is not None:
            extra = {"user": self.user, "group": pwd.getpwnam(self.user).pw_gid, "extra_groups": []}
        result = subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            env={**os.environ, "LC_ALL": "C"},
            check=False,
            **extra,
        )
        if result.returncode != 0:
            pytest.fail(
                f"{' '.join(args[:2])} failed ({result.returncode}): {result.stderr.strip()}\n"
                f"{self.log()}",
                pytrace=False,
            )

    def init(self) -> PgCluster:
        # --no-sync: the cluster is thrown away; the server itself still fsyncs its commits
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip
        return self

    def start(self) -> PgCluster:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.root} -c max_connections=40"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-o", options,
            "-w", "-t", "90", "start",
        )  # fmt: skip
        self.running = True
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "90", "stop")
            self.running = False

    def remove(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        try:
            return self.logfile.read_text()[-2000:]
        except OSError:
            return ""
