"""One client's trouble stays its own: a bug met by one session, two sessions racing for the
last pinned connection, a node that stalls every connect. The gateway runs in this
process so the test can provoke each case directly, against a real redis-server."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import trio
import trio.testing

from resmesh.config import BackendConfig, parse_config
from resmesh.net.backend.errors import BackendError
from resmesh.net.backend.redis_pool import NodePool
from resmesh.net.listen import bind_tcp
from resmesh.net.redis.runtime import RedisRuntime
from resmesh.protocols.resp.session import RespSession
from tests.support.servers import RedisServer, encode_command, redis_cluster_config


@pytest.fixture(scope="module")
def node() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


async def test_a_session_s_unexpected_error_closes_only_that_client(
    node: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_echo(command: object) -> bytes:
        raise RuntimeError("a bug in one command's handler")

    monkeypatch.setattr(RespSession, "echo", staticmethod(broken_echo))
    config = parse_config(
        redis_cluster_config("c", {"a": [node.port]}), tmp_path / "isolation.yaml"
    )
    listener = bind_tcp("127.0.0.1", 0)
    port = listener.getsockname()[1]
    with trio.fail_after(20):
        async with trio.open_nursery() as backend:
            runtime = RedisRuntime(config.clusters["c"], config.users, backend)
            async with trio.open_nursery() as connections:
                connections.start_soon(runtime.serve, listener, connections)
                bystander = await trio.open_tcp_stream("127.0.0.1", port)
                await bystander.send_all(encode_command("PING"))
                assert await bystander.receive_some(100) == b"+PONG\r\n"
                victim = await trio.open_tcp_stream("127.0.0.1", port)
                await victim.send_all(encode_command("ECHO", "x"))
                assert await victim.receive_some(100) == b""  # closed, nothing half-written
                await bystander.send_all(encode_command("PING"))
                assert await bystander.receive_some(100) == b"+PONG\r\n"
                await bystander.aclose()
                await victim.aclose()
                connections.cancel_scope.cancel()
            runtime.close()
            backend.cancel_scope.cancel()


async def test_sessions_racing_for_the_last_pinned_connection_wait_their_turn(
    node: RedisServer,
) -> None:
    """The slot went from a temporary borrower to the connection with a gap in which a
    waiting task took it; the loser then raised WouldBlock and took the gateway down.

    Each holder keeps the slot until every other racer is parked waiting for it (not for a
    fixed time, which a slow machine could outlast), and the wait for a slot is bounded by a
    connect_timeout no slow machine reaches: a refusal can only be the bug.
    """
    results: list[str] = []
    async with trio.open_nursery() as nursery:
        backend = BackendConfig(max_dedicated=1, connect_timeout=30)
        pool = NodePool("127.0.0.1", node.port, backend, nursery)

        async def take() -> None:
            try:
                conn = await pool.acquire_dedicated(0, 2)
            except BackendError as exc:
                results.append(f"refused: {exc.reason}")
                return
            await trio.testing.wait_all_tasks_blocked()  # the others wait for this slot
            pool.release(conn)
            results.append("ok")

        async with trio.open_nursery() as racers:
            for _ in range(4):
                racers.start_soon(take)
        assert results == ["ok"] * 4
        assert pool.statistics().dedicated_in_use == 0
        pool.close()
        nursery.cancel_scope.cancel()


async def test_callers_waiting_for_a_connect_share_its_failure(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A node that takes the TCP connect but never answers the handshake: every caller must
    fail within about one connect_timeout, not queue behind each other's attempts.

    The node is real, the clock virtual: it jumps to the next deadline once nothing has
    happened for 0.1 s of real time. Sharing the attempt, all 8 callers fail at exactly one
    connect_timeout (0.5 s); queued, the last would fail at 8 of them (4 s).
    """
    mock_clock.autojump_threshold = 0.1
    server = RedisServer()
    redis.Redis(port=server.port).config_set("requirepass", "sekret")
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    took: list[float] = []
    try:
        async with trio.open_nursery() as nursery:
            backend = BackendConfig(password="sekret", connect_timeout=0.5)
            pool = NodePool("127.0.0.1", server.port, backend, nursery)

            async def call() -> None:
                started = trio.current_time()
                with pytest.raises(BackendError):
                    await pool.shared(0, 2)
                took.append(trio.current_time() - started)

            async with trio.open_nursery() as callers:
                for _ in range(8):
                    callers.start_soon(call)
            pool.close()
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()
    assert took == pytest.approx([0.5] * 8), sorted(took)
