"""Graceful shutdown: SIGTERM/SIGINT drain the gateway and exit 0 within ``drain_timeout``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.servers import (
    Gateway,
    RawRedis,
    RedisServer,
    encode_command,
    port_open,
    redis_cluster_config,
    wait_for,
)

DRAIN = 2.0
#: Process exit and interpreter teardown on a loaded 2-core machine.
MARGIN = 2.5


def _config(redis_node: RedisServer, drain: float = DRAIN) -> dict[str, Any]:
    config = redis_cluster_config("feed-cache", {"dc-a": [redis_node.port]})
    config["gateway"]["drain_timeout"] = f"{drain:g}s"
    return config


def _stop(gw: Gateway, signum: int = signal.SIGTERM, timeout: float = 15) -> tuple[int, float]:
    """Signal the gateway; return its exit code and how long it took to exit."""
    started = time.monotonic()
    gw.proc.send_signal(signum)
    code = gw.proc.wait(timeout)
    return code, time.monotonic() - started


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_idle_clients_exit_zero_promptly(
    signum: int, redis_node: RedisServer, start_gateway: Callable[[dict[str, Any]], Gateway]
) -> None:
    gw = start_gateway(_config(redis_node))
    idle = RawRedis(gw.port, timeout=DRAIN + MARGIN)
    assert idle.call(("SET", "k", "v"), ("GET", "k")) == [b"+OK\r\n", b"$1\r\nv\r\n"]
    client = redis.Redis(port=gw.port)
    assert client.ping()
    code, elapsed = _stop(gw, signum)
    assert code == 0, gw.log()
    assert elapsed < DRAIN, f"took {elapsed:.2f}s with only idle clients"
    assert idle.read_until_closed() == b""  # the idle client was closed, not left hanging
    idle.close()
    assert not port_open(gw.port)


def test_sigterm_during_blpop_forever(
    redis_node: RedisServer, start_gateway: Callable[[dict[str, Any]], Gateway]
) -> None:
    gw = start_gateway(_config(redis_node))
    direct = redis.Redis(port=redis_node.port)
    outcome: list[Any] = []

    def block() -> None:
        client = redis.Redis(port=gw.port, socket_timeout=30, retry=Retry(NoBackoff(), 0))
        try:
            outcome.append(client.blpop(["drain-q"], timeout=0))
        except redis.RedisError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=block, daemon=True)
    thread.start()
    wait_for(lambda: int(direct.info("clients")["blocked_clients"]) >= 1, 5, "BLPOP to block")
    code, elapsed = _stop(gw)
    assert code == 0, gw.log()
    assert elapsed < DRAIN + MARGIN, elapsed
    thread.join(5)
    assert not thread.is_alive(), "the blocked client was left hanging after the gateway exited"
    assert outcome and isinstance(outcome[0], redis.RedisError), outcome
    wait_for(
        lambda: int(direct.info("clients")["blocked_clients"]) == 0,
        5,
        "the node-side BLPOP to go away with the gateway",
    )
    direct.rpush("drain-q", "kept")
    assert direct.lpop("drain-q") == b"kept"  # not swallowed by an orphaned BLPOP


def test_in_flight_command_finishes_during_drain(
    redis_node: RedisServer, start_gateway: Callable[[dict[str, Any]], Gateway]
) -> None:
    """A BLPOP with a 1 s timeout gets its reply during a 5 s drain; then the gateway exits."""
    gw = start_gateway(_config(redis_node, drain=5))
    direct = redis.Redis(port=redis_node.port)
    conn = RawRedis(gw.port, timeout=10)
    conn.send(b"*3\r\n$5\r\nBLPOP\r\n$7\r\nshort-q\r\n$1\r\n1\r\n")
    wait_for(lambda: int(direct.info("clients")["blocked_clients"]) >= 1, 5, "BLPOP to block")
    started = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    # Stops accepting at once, while the in-flight command is still owed its answer.
    wait_for(lambda: not port_open(gw.port), 2, "the listener to close")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", gw.port), timeout=1).close()
    assert conn.read_replies(1) == [b"*-1\r\n"]
    code = gw.proc.wait(10)
    elapsed = time.monotonic() - started
    assert code == 0, gw.log()
    assert elapsed < 5, f"exited after {elapsed:.2f}s: it waited for the whole drain"
    conn.close()


def test_a_signal_to_every_process_of_a_multi_worker_gateway_still_drains(
    redis_node: RedisServer, start_gateway: Callable[[dict[str, Any]], Gateway]
) -> None:
    """systemd's default KillMode=control-group signals every process: each worker gets it
    directly and again through the supervisor, and must not take the copy as a second
    signal (which skips the drain and cut these BLPOPs)."""
    config = _config(redis_node, drain=5.0)
    config["gateway"]["workers"] = 2
    gw = start_gateway(config)
    wait_for(lambda: gw.log().count("listening on") == 2, 15, "both workers to listen")
    direct = redis.Redis(port=redis_node.port)
    before = int(direct.info("clients")["blocked_clients"])
    clients = [RawRedis(gw.port, timeout=10) for _ in range(4)]
    for index, client in enumerate(clients):
        client.send(encode_command("BLPOP", f"group-signal:{index}", "1"))
    wait_for(lambda: int(direct.info("clients")["blocked_clients"]) >= before + 4, 5, "the BLPOPs")
    children = Path(f"/proc/{gw.proc.pid}/task/{gw.proc.pid}/children").read_text().split()
    assert len(children) == 2
    for pid in children:
        os.kill(int(pid), signal.SIGTERM)
    wait_for(lambda: gw.log().count(": draining") == 2, 5, "both workers to start draining")
    gw.proc.send_signal(signal.SIGTERM)  # the supervisor forwards its copy too
    assert [client.read_replies(1)[0] for client in clients] == [b"*-1\r\n"] * 4
    assert gw.proc.wait(15) == 0, gw.log()
    for client in clients:
        client.close()


def test_an_idle_subscriber_does_not_hold_the_drain(
    redis_node: RedisServer, start_gateway: Callable[[dict[str, Any]], Gateway]
) -> None:
    gw = start_gateway(_config(redis_node, drain=5.0))
    subscriber = RawRedis(gw.port, timeout=10)
    assert subscriber.call(("SUBSCRIBE", "drain:c"))[0].startswith(b"*3\r\n$9\r\nsubscribe")
    code, elapsed = _stop(gw)
    assert code == 0, gw.log()
    assert elapsed < 2.5, f"took {elapsed:.2f}s: the subscriber held the drain"
    assert subscriber.read_until_closed() == b""
    subscriber.close()


def test_a_second_multi_worker_gateway_on_the_same_ports_refuses_to_start(
    redis_node: RedisServer, start_gateway: Callable[[dict[str, Any]], Gateway]
) -> None:
    """SO_REUSEPORT would let it bind, and the kernel would split clients between the two."""
    config = _config(redis_node)
    config["gateway"]["workers"] = 2
    first = start_gateway(config)
    wait_for(lambda: first.log().count("listening on") == 2, 15, "both workers to listen")
    second = subprocess.run(
        [sys.executable, "-m", "resmesh", "run", "-c", str(first.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 1, second.stderr
    assert "another multi-worker gateway listens there" in second.stderr
