"""A real Mosquitto for the tests: started on a free loopback port, stopped afterwards.

Each broker has its own configuration and persistence directory, so a test can stop it
(SIGTERM: it saves its sessions and queued messages), kill it, and start it again on the
same port with the same state, as a broker restart in a hospital would.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

MOSQUITTO = (
    os.environ.get("CALGUARD_MOSQUITTO") or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    def __init__(
        self,
        directory: Path,
        *,
        extra: str = "",
        port: int | None = None,
        anonymous: bool = True,
        persistence: bool = True,
    ) -> None:
        if not Path(MOSQUITTO).exists():
            pytest.fail(
                f"Mosquitto is needed for this test and was not found ({MOSQUITTO}). Install it "
                "(apt-get install mosquitto) or set CALGUARD_MOSQUITTO.",
                pytrace=False,
            )
        self.directory = directory
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.extra = extra
        self.anonymous = anonymous
        # persistence saves the broker's state every second (restart tests need it); with a
        # backlog of thousands of messages each save stalls deliveries: benchmarks turn it off
        self.persistence = persistence
        self.process: subprocess.Popen[bytes] | None = None
        (directory / "data").mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}/calguard/test"

    def config(self) -> Path:
        path = self.directory / "mosquitto.conf"
        path.write_text(
            f"listener {self.port} 127.0.0.1\n"
            # run as ourselves: started as root, Mosquitto would switch to its own user, which
            # cannot write this test's private directory - and silently persist nothing
            f"user {getpass.getuser()}\n"
            f"allow_anonymous {'true' if self.anonymous else 'false'}\n"
            f"persistence {'true' if self.persistence else 'false'}\n"
            f"persistence_location {self.directory / 'data'}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 0\n"  # unlimited: a monitor away for a while loses nothing
            "max_inflight_messages 100\n"
            # as deploy/mosquitto/calguard.conf: the monitor acknowledges readings once they
            # are logged, so Nagle's algorithm would hold each next one back for a TCP ACK
            "set_tcp_nodelay true\n"
            f"log_dest file {self.directory / 'mosquitto.log'}\n"
            "log_type all\n" + self.extra
        )
        return path

    def start(self) -> Broker:
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config())], stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                pytest.fail(f"Mosquitto exited at start: {err or self.log()}", pytrace=False)
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"Mosquitto did not listen on {self.port}: {self.log()}", pytrace=False)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM saves the persistence database; SIGKILL does not."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def restart(self) -> Broker:
        self.stop()
        return self.start()

    def log(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text()[-2000:] if path.exists() else ""
