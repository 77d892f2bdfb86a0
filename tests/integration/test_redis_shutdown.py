"""Graceful shutdown: SIGTERM/SIGINT drain the gateway and exit 0 within ``drain_timeout``.

Where the gateway must *not* wait for the drain, the drain is a minute long (``LONG_DRAIN``)
and the exit must come within ``EXITED``: only waiting for the drain fails that bound, a slow
machine does not. Where it must wait (a BLPOP that never ends), the drain is short and is a
lower bound, which load cannot break.
"""

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

#: The drain a never-ending command holds the gateway for.
DRAIN = 2.0
#: The drain of the tests where nothing should hold the gateway: waiting for it is a minute.
LONG_DRAIN = 60.0
#: Signal to exit, when nothing holds the drain: normally well under a second.
EXITED = 20.0


def _config(redis_node: RedisServer, drain: float = DRAIN) -> dict[str, Any]:
    config = redis_cluster_config("feed-cache", {"dc-a": [redis_node.port]})
    config["gateway"]["drain_timeout"] = f"{drain:g}s"
    return config


def _stop(gw: Gateway, signum: int = signal.SIGTERM) -> tuple[int, float]:
    """Signal the gateway; return its exit code and how long it took to exit.

    Raises:
        AssertionError: still running ``EXITED`` seconds after the signal (it is killed).
    """
    started = time.monotonic()
    gw.proc.send_signal(signum)
    return _exit_code(gw), time.monotonic() - started


def _exit_code(gw: Gateway) -> int:
    try:
        return gw.proc.wait(EXITED)
    except subprocess.TimeoutExpired:
        gw.proc.kill()
        gw.proc.wait()
        raise AssertionError(
            f"the gateway was still running {EXITED:g}s after the signal; its log:\n{gw.log()}"
        ) from None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_idle_clients_exit_zero_promptly(
    signum: int, redis_node: RedisServer, start_gateway: Callable[[dict[str, Any]], Gateway]
) -> None:
    gw = start_gateway(_config(redis_node, drain=LONG_DRAIN))
    idle = RawRedis(gw.port, timeout=10)
    assert idle.call(("SET", "k", "v"), ("GET", "k")) == [b"+OK\r\n", b"$1\r\nv\r\n"]
    client = redis.Redis(port=gw.port)
    assert client.ping()
    code, _ = _stop(gw, signum)  # within EXITED: idle clients do not hold the drain
    assert code == 0, gw.log()
    assert idle.read_until_closed() == b""  # the idle client was closed, not left hanging
    idle.close()
    assert not port_open(gw.port)


def test_sigterm_during_blpop_forever(
    redis_node: RedisServer, start_gateway: Callable[[dict[str, Any]], Gateway]
) -> None:
    """A BLPOP that never ends holds the drain to its end, no longer: then it is cut (the
    client gets an error), and the gateway exits 0."""
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
    code, elapsed = _stop(gw)  # within EXITED: the drain ends at DRAIN
    assert code == 0, gw.log()
    assert elapsed >= 0.9 * DRAIN, f"exited after {elapsed:.2f}s: in-flight work not waited for"
    thread.join(10)
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
    """A BLPOP in flight at SIGTERM gets its reply during the drain (woken by a push); the
    listener closes at once, while the BLPOP still blocks; once it is answered, the gateway
    exits without waiting for the rest of the minute-long drain."""
    gw = start_gateway(_config(redis_node, drain=LONG_DRAIN))
    direct = redis.Redis(port=redis_node.port)
    direct.delete("drain-wake-q")
    conn = RawRedis(gw.port, timeout=EXITED)
    conn.send(encode_command("BLPOP", "drain-wake-q", "0"))
    wait_for(lambda: int(direct.info("clients")["blocked_clients"]) >= 1, 5, "BLPOP to block")
    gw.proc.send_signal(signal.SIGTERM)
    # Stops accepting at once, while the in-flight command is still owed its answer.
    wait_for(lambda: not port_open(gw.port), 10, "the listener to close")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", gw.port), timeout=1).close()
    assert gw.proc.poll() is None
    assert int(direct.info("clients")["blocked_clients"]) >= 1, "the BLPOP ended already"
    direct.rpush("drain-wake-q", "last")
    assert conn.read_replies(1) == [b"*2\r\n$12\r\ndrain-wake-q\r\n$4\r\nlast\r\n"]
    assert _exit_code(gw) == 0, gw.log()  # within EXITED of the reply, not LONG_DRAIN
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
    gw = start_gateway(_config(redis_node, drain=LONG_DRAIN))
    subscriber = RawRedis(gw.port, timeout=10)
    assert subscriber.call(("SUBSCRIBE", "drain:c"))[0].startswith(b"*3\r\n$9\r\nsubscribe")
    code, _ = _stop(gw)  # within EXITED: the subscriber does not hold the drain
    assert code == 0, gw.log()
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


def test_a_pipelined_batch_in_flight_in_the_poller_gets_its_replies_during_the_drain(
    start_gateway: Callable[[dict[str, Any]], Gateway],
) -> None:
    """A plain batch the poller sent (no task waits for it) is answered and written during
    the drain: the node is paused so the batch is in flight when SIGTERM comes."""
    node = RedisServer()
    try:
        gw = start_gateway(_config(node, drain=LONG_DRAIN))
        conn = RawRedis(gw.port, timeout=EXITED)
        assert conn.call(("SET", "drain-k", "v")) == [b"+OK\r\n"]  # the session is dispatched
        assert node.proc is not None
        node.proc.send_signal(signal.SIGSTOP)  # the node takes the batch and answers nothing
        try:
            conn.send(encode_command("GET", "drain-k") * 3)
            gw.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: not port_open(gw.port), 10, "the listener to close")
            assert gw.proc.poll() is None  # still owed: the drain waits
        finally:
            node.proc.send_signal(signal.SIGCONT)
        assert conn.read_replies(3) == [b"$1\r\nv\r\n"] * 3
        assert _exit_code(gw) == 0, gw.log()  # once answered, the gateway exits
        conn.close()
    finally:
        node.stop()
