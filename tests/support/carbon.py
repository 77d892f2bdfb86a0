"""A real ``carbon-cache`` (Graphite's storage daemon) for tests that push metrics to it.

:class:`CarbonCache` runs Debian's ``graphite-carbon`` in the foreground on free ports, with
its config, storage and whisper directories under a work directory, and reads back what it
stored: a key ``a.b.c`` lands in ``<whisper>/a/b/c.wsp`` once carbon's writer flushes its
cache. The whisper files are read with the ``whisper`` module graphite-carbon installs for
the system Python (``/usr/lib/python3/dist-packages/whisper.py``), run as a subprocess since
the venv does not see it.

A missing binary fails the run loudly with the command that installs it (never a skip).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.servers import free_port, port_open, wait_for

CARBON_HINT = "carbon-cache not found: apt-get install graphite-carbon"

#: The interpreter graphite-carbon's modules (``whisper``) are installed for.
SYSTEM_PYTHON = "/usr/bin/python3"

_FETCH = r"""
import json, sys, time, whisper
path, since = sys.argv[1], int(sys.argv[2])
(start, end, step), values = whisper.fetch(path, since, int(time.time()) + 2)
print(json.dumps([[start + i * step, v] for i, v in enumerate(values) if v is not None]))
"""


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CarbonCache:
    """``carbon-cache --nodaemon`` on free ports, storing under ``workdir``.

    Attributes:
        port: the plaintext line receiver (TCP).
        udp_port: the plaintext line receiver over UDP.
        whisper_dir: where the ``.wsp`` files appear.
    """

    def __init__(self, workdir: Path, startup_timeout: float = 20.0) -> None:
        binary = shutil.which("carbon-cache") or (
            "/usr/bin/carbon-cache" if Path("/usr/bin/carbon-cache").exists() else None
        )
        if binary is None:
            pytest.fail(CARBON_HINT, pytrace=False)
        self.workdir = workdir
        self.conf_dir = workdir / "conf"
        self.storage_dir = workdir / "storage"
        self.whisper_dir = self.storage_dir / "whisper"
        self.log_dir = workdir / "log"
        for directory in (self.conf_dir, self.whisper_dir, self.log_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.udp_port = free_udp_port()
        self.pickle_port = free_port()
        self.query_port = free_port()
        (self.conf_dir / "storage-schemas.conf").write_text(
            "[everything]\npattern = .*\nretentions = 1s:1h\n"
        )
        (self.conf_dir / "carbon.conf").write_text(
            "[cache]\n"
            f"STORAGE_DIR = {self.storage_dir}/\n"
            f"LOCAL_DATA_DIR = {self.whisper_dir}/\n"
            f"CONF_DIR = {self.conf_dir}/\n"
            f"LOG_DIR = {self.log_dir}/\n"
            f"PID_DIR = {workdir}/\n"
            "DATABASE = whisper\n"
            "ENABLE_LOGROTATION = False\n"
            "MAX_CACHE_SIZE = inf\n"
            "MAX_UPDATES_PER_SECOND = inf\n"
            "MAX_CREATES_PER_MINUTE = inf\n"
            "MIN_TIMESTAMP_RESOLUTION = 1\n"
            "LINE_RECEIVER_INTERFACE = 127.0.0.1\n"
            f"LINE_RECEIVER_PORT = {self.port}\n"
            "ENABLE_UDP_LISTENER = True\n"
            "UDP_RECEIVER_INTERFACE = 127.0.0.1\n"
            f"UDP_RECEIVER_PORT = {self.udp_port}\n"
            "PICKLE_RECEIVER_INTERFACE = 127.0.0.1\n"
            f"PICKLE_RECEIVER_PORT = {self.pickle_port}\n"
            "CACHE_QUERY_INTERFACE = 127.0.0.1\n"
            f"CACHE_QUERY_PORT = {self.query_port}\n"
            "USE_FLOW_CONTROL = True\n"
            "LOG_UPDATES = False\n"
            "LOG_CREATES = True\n"
            "CACHE_WRITE_STRATEGY = sorted\n"
            "WHISPER_AUTOFLUSH = True\n"
            "WHISPER_FALLOCATE_CREATE = False\n"
            "CARBON_METRIC_INTERVAL = 0\n"
        )
        self.log_path = workdir / "carbon-cache.out"
        self._log = self.log_path.open("wb")
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [
                binary,
                "--nodaemon",
                f"--config={self.conf_dir / 'carbon.conf'}",
                f"--pidfile={workdir / 'carbon-cache.pid'}",
                f"--logdir={self.log_dir}",
                "start",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
        try:
            wait_for(
                lambda: self.proc is not None and self.proc.poll() is None and port_open(self.port),
                startup_timeout,
                f"carbon-cache's line receiver on {self.port}",
            )
        except AssertionError:
            self.stop()
            raise AssertionError(f"carbon-cache did not start; its output:\n{self.log()}") from None

    def log(self) -> str:
        """Its console output and its log files, for failure messages."""
        parts = [self.log_path.read_text(errors="replace")]
        for path in sorted(self.log_dir.rglob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')}")
        return "\n".join(parts)

    def path_of(self, key: str) -> Path:
        """The whisper file of ``key`` (``a.b.c`` → ``<whisper>/a/b/c.wsp``)."""
        return self.whisper_dir.joinpath(*key.split(".")).with_suffix(".wsp")

    def stored_keys(self) -> list[str]:
        """Every key stored so far."""
        return sorted(
            ".".join(path.relative_to(self.whisper_dir).with_suffix("").parts)
            for path in self.whisper_dir.rglob("*.wsp")
        )

    def fetch(self, key: str, since: int = 0) -> list[tuple[int, float]]:
        """The (timestamp, value) points stored for ``key`` since ``since`` (unix time; 0: the
        whole retention), oldest first; ``[]`` when its file does not exist yet."""
        path = self.path_of(key)
        if not path.exists():
            return []
        since = since or int(time.time()) - 3500
        done = subprocess.run(
            [SYSTEM_PYTHON, "-c", _FETCH, str(path), str(since)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"reading {path} failed:\n{done.stderr}")
        return [(int(t), float(v)) for t, v in json.loads(done.stdout)]

    def wait_values(
        self, expected: dict[str, list[float]], timeout: float = 30.0, since: int = 0
    ) -> dict[str, list[float]]:
        """Wait until every key's stored values (oldest first) are ``expected``'s, and return
        what was stored; fail after ``timeout`` seconds showing what was there."""
        seen: dict[str, list[float]] = {}

        def arrived() -> bool:
            for key, values in expected.items():
                seen[key] = [v for _, v in self.fetch(key, since)]
                if seen[key] != values:
                    return False
            return True

        deadline = time.monotonic() + timeout
        while not arrived():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"carbon did not store the expected values within {timeout}s:\n"
                    f"expected {expected}\nstored   {seen}\nkeys     {self.stored_keys()}\n"
                    f"log:\n{self.log()[-3000:]}"
                )
            time.sleep(0.1)
        return seen

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            self.proc = None
        self._log.close()
