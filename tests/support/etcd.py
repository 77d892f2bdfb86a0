"""Start a real single-member ``etcd`` for the registry tests.

Like :mod:`tests.support.servers`: every wait has a deadline (no bare sleeps), and a missing
binary fails the run loudly with the command that installs it: a skipped test would count as
passing while testing nothing.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

import pytest

from tests.support.servers import free_port, wait_for

ETCD_HINT = "etcd not found: install it with `apt-get install etcd-server`"

#: How long etcd may take to start answering.
START_TIMEOUT = 15.0


class EtcdServer:
    """An ``etcd`` child process on free ports with its data in ``workdir``; tests may stop,
    kill, pause and start it again (same ports, same data).

    Attributes:
        url: the client URL (``http://127.0.0.1:PORT``).
        port: the client port.
    """

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            pytest.fail(ETCD_HINT, pytrace=False)
        self.binary = binary
        self.port = free_port()
        self.peer_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = workdir / "etcd-data"
        self.log_path = workdir / "etcd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.start()

    def start(self) -> None:
        """Start etcd (again) and wait until it serves reads."""
        peer = f"http://127.0.0.1:{self.peer_port}"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--name",
                "t",
                "--data-dir",
                str(self.data_dir),
                "--listen-client-urls",
                self.url,
                "--advertise-client-urls",
                self.url,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"t={peer}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(self._ready, START_TIMEOUT, f"etcd on port {self.port}")
        except AssertionError:
            self.kill()
            raise AssertionError(f"etcd did not start; its log:\n{self.log()[-4000:]}") from None

    def _ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"etcd exited; its log:\n{self.log()[-4000:]}")
        try:
            answer = self.post("/v3/kv/range", {"key": "AA=="}, timeout=0.5)
        except (OSError, ValueError):
            return False
        return "header" in answer

    def post(self, path: str, body: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """POST ``body`` to etcd's JSON gateway (for setting things up behind the registry)."""
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer: dict[str, Any] = json.loads(response.read())
        return answer

    def stop(self) -> None:
        """SIGTERM and wait: a clean shutdown."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)  # a paused etcd would not act on SIGTERM
            self.proc.terminate()
            self.proc.wait(10)
        self._reap()

    def kill(self) -> None:
        """SIGKILL: etcd vanishes mid-whatever, as in a crash."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
        self._reap()

    def pause(self) -> None:
        """SIGSTOP: etcd hangs with its sockets open (connections succeed, nothing answers)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _reap(self) -> None:
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
