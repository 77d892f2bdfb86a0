"""Start real ``redis-server`` processes and the gateway for integration tests.

Everything here waits for a condition with a deadline (never a bare sleep), and a missing
binary fails the test run loudly with the command that installs it: a skipped integration test
would count as passing while testing nothing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REDIS_HINT = (
    "redis-server is required for the integration tests: install it with "
    "`apt-get install redis-server` (Debian/Ubuntu) or `brew install redis` (macOS)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A ``redis-server`` child process on a free port, which tests may kill and restart."""

    def __init__(self, *extra: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(REDIS_HINT, pytrace=False)
        self.binary = binary
        self.port = free_port()
        self.extra = extra
        self.dir = tempfile.mkdtemp(prefix="resmesh-redis-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self.dir,
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: redis_ping(self.port), 10, f"redis-server on port {self.port}")

    def kill(self) -> None:
        """SIGKILL: the node vanishes mid-whatever, as in a crash."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


class Gateway:
    """``resmesh run`` as a subprocess on a config built by the test."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.config_path = workdir / f"resmesh-{free_port()}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.ports = [
            int(cluster["listen"].rsplit(":", 1)[1]) for cluster in config["clusters"].values()
        ]
        self.port = self.ports[0]
        self.log_path = self.config_path.with_suffix(".log")
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "resmesh", "run", "-c", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            for port in self.ports:
                wait_for(
                    lambda port=port: self.proc.poll() is None and port_open(port),
                    15,
                    f"the gateway to listen on {port}",
                )
        except AssertionError:
            self.proc.kill()
            raise AssertionError(f"gateway did not start; its log:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()


def redis_cluster_config(
    name: str,
    nodes: dict[str, list[int]],
    *,
    listen_port: int | None = None,
    users: dict[str, Any] | None = None,
    **cluster: Any,
) -> dict[str, Any]:
    """A gateway config with one Redis cluster; ``nodes`` maps group → node ports."""
    config: dict[str, Any] = {
        "gateway": {"drain_timeout": "5s"},
        "clusters": {
            name: {
                "protocol": "redis",
                "listen": f"127.0.0.1:{listen_port or free_port()}",
                "groups": {g: [f"127.0.0.1:{p}" for p in ports] for g, ports in nodes.items()},
                **cluster,
            }
        },
    }
    if users:
        config["users"] = users
    return config
