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
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
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


def start_replica(primary: RedisServer) -> RedisServer:
    """A ``redis-server`` replicating ``primary`` (``REPLICAOF``), returned once in sync."""
    import redis

    replica = RedisServer("--replicaof", "127.0.0.1", str(primary.port))
    client = redis.Redis(port=replica.port)
    wait_for(
        lambda: client.info("replication").get("master_link_status") == "up",
        10,
        f"replica {replica.port} to sync",
    )
    return replica


class Gateway:
    """``resmesh run`` as a subprocess on a config built by the test."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.config_path = workdir / f"resmesh-{free_port()}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        listens = [cluster.get("listen") for cluster in config["clusters"].values()]
        agent = config.get("motan2") or {}
        listens += [agent.get("client"), agent.get("server")]
        self.ports = [int(listen.rsplit(":", 1)[1]) for listen in listens if listen]
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


def resmesh(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``resmesh ARGS...`` as a subprocess of this interpreter, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "resmesh", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def redis_cluster_config(
    name: str,
    nodes: dict[str, list[int]],
    *,
    listen_port: int | None = None,
    users: dict[str, Any] | None = None,
    **cluster: Any,
) -> dict[str, Any]:
    """A gateway config with one Redis cluster; ``nodes`` maps group → node ports.

    In a replicated cluster of several nodes the first port listed is the primary.
    """
    groups: dict[str, list[Any]] = {
        g: [f"127.0.0.1:{p}" for p in ports] for g, ports in nodes.items()
    }
    if cluster.get("mode") != "sharded" and sum(map(len, groups.values())) > 1:
        first = next(iter(groups.values()))
        first[0] = {"address": first[0], "role": "primary"}
    config: dict[str, Any] = {
        "gateway": {"drain_timeout": "5s"},
        "clusters": {
            name: {
                "protocol": "redis",
                "listen": f"127.0.0.1:{listen_port or free_port()}",
                "groups": groups,
                **cluster,
            }
        },
    }
    if users:
        config["users"] = users
    return config


# ------------------------------------------------------------------------------------------------
# Raw RESP over a plain socket: for byte-exact comparisons (gateway vs direct) and for clients
# that misbehave on purpose. The frame scanner is written here, independently of the gateway's
# own codec, so a bug there cannot hide itself in the tests.


def encode_command(*args: bytes | str | int) -> bytes:
    """A RESP2 multibulk request (what every client sends)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


_LINE_TYPES = frozenset(b"+-:,#_(")
_BLOB_TYPES = frozenset(b"$!=")
_AGGREGATE_TYPES = frozenset(b"*~>")
_PAIR_TYPES = frozenset(b"%|")


def resp_frame_end(buf: bytes | bytearray, pos: int = 0) -> int:
    """Index just past the RESP2/RESP3 reply starting at ``pos``; -1 while incomplete.

    Raises:
        ValueError: the bytes at ``pos`` are not a RESP reply.
    """
    pending = 1  # frames still to skip
    while pending:
        if pos >= len(buf):
            return -1
        kind = buf[pos]
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return -1
        header = bytes(buf[pos + 1 : eol])
        pos = eol + 2
        pending -= 1
        if kind in _LINE_TYPES:
            continue
        try:
            length = int(header)
        except ValueError:
            raise ValueError(f"bad RESP length {header!r}") from None
        if kind in _BLOB_TYPES:
            if length < 0:
                continue
            if len(buf) < pos + length + 2:
                return -1
            if buf[pos + length : pos + length + 2] != b"\r\n":
                raise ValueError("RESP blob not followed by CRLF")
            pos += length + 2
        elif kind in _AGGREGATE_TYPES:
            pending += max(length, 0)
        elif kind in _PAIR_TYPES:
            pending += 2 * length + (1 if kind == ord("|") else 0)
        else:
            raise ValueError(f"unknown RESP type byte {bytes([kind])!r}")
    return pos


class RawRedis:
    """A plain socket speaking RESP: every read has a deadline, replies come back as raw bytes."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def __enter__(self) -> RawRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def call(self, *commands: tuple[bytes | str | int, ...]) -> list[bytes]:
        """Send ``commands`` as one pipelined write; return their raw replies in order."""
        self.send(b"".join(encode_command(*c) for c in commands))
        return self.read_replies(len(commands))

    def read_replies(self, count: int) -> list[bytes]:
        """Read ``count`` complete replies.

        Raises:
            AssertionError: the peer closed first, or the deadline passed.
        """
        deadline = time.monotonic() + self.timeout
        replies: list[bytes] = []
        while len(replies) < count:
            end = resp_frame_end(self.buf)
            if end >= 0:
                replies.append(bytes(self.buf[:end]))
                del self.buf[:end]
                continue
            try:
                self._fill(deadline, f"{count - len(replies)} more replies")
            except EOFError:
                raise AssertionError(
                    f"connection closed after {len(replies)} of {count} replies: {replies!r}"
                ) from None
        return replies

    def read_until_closed(self) -> bytes:
        """Everything the peer sends until it closes the connection (within the timeout)."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self._fill(deadline, "the connection to close")
            except EOFError:
                data = bytes(self.buf)
                self.buf.clear()
                return data

    def _fill(self, deadline: float, what: str) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out after {self.timeout}s waiting for {what}")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(1 << 16)
        except TimeoutError:
            raise AssertionError(
                f"timed out after {self.timeout}s waiting for {what}; got {bytes(self.buf)[:200]!r}"
            ) from None
        except ConnectionResetError:
            data = b""
        if not data:
            raise EOFError(what)
        self.buf += data


def vm_rss_kib(pid: int) -> int:
    """Resident memory of process ``pid`` in KiB (Linux ``/proc``)."""
    return _proc_status_kib(pid, "VmRSS")


def vm_size_kib(pid: int) -> int:
    """Virtual memory of process ``pid`` in KiB: catches huge reservations RSS does not show."""
    return _proc_status_kib(pid, "VmSize")


def _proc_status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")
