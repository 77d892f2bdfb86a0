"""Edges of a session's life found in review, each with a real redis-server behind an
in-process gateway: slots, connections and state must come back whatever path a session takes,
and nothing may reach the node that the gateway refuses."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import trio
import trio.testing

from resmesh.cluster.topology import ClusterState, NodeSpec
from tests.support.driver import inprocess_gateway
from tests.support.servers import RedisServer

EXECABORT = b"-EXECABORT Transaction discarded because of previous errors.\r\n"


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    node = RedisServer()
    yield node
    node.stop()


@pytest.fixture
def acl_server() -> Iterator[RedisServer]:
    """A node whose gateway user ``gw`` may touch ``app:*`` keys only."""
    node = RedisServer()
    redis.Redis(port=node.port).acl_setuser(
        "gw", enabled=True, passwords=["+gwpw"], keys=["app:*"], channels=["*"], commands=["+@all"]
    )
    yield node
    node.stop()


def _in_flight(runtime: object) -> int:
    limiter = runtime.policies.limiter  # type: ignore[attr-defined]
    return int(limiter.statistics(0.0).cluster.concurrency.in_flight)


async def test_a_multi_that_gets_no_connection_gives_its_slot_back(
    tmp_path: Path, server: RedisServer
) -> None:
    async with inprocess_gateway(
        tmp_path,
        [server.port],
        clients=2,
        backend={"max_dedicated": 1, "connect_timeout": "200ms"},
        limit={"concurrency": 10},
    ) as (runtime, (a, b)):
        assert await a.call(("WATCH", "k")) == [b"+OK\r\n"]  # holds the only pinned connection
        refused = await b.call(("MULTI",))
        assert b"pinned connections are in use" in refused[0]
        assert await b.call(("EXEC",)) == [EXECABORT]
        assert await b.call(("QUIT",)) == [b"+OK\r\n"]
        assert await b.closed()
        assert await a.call(("UNWATCH",)) == [b"+OK\r\n"]
        assert _in_flight(runtime) == 0


async def test_a_refused_multi_after_watch_never_pools_the_watched_connection(
    tmp_path: Path, server: RedisServer
) -> None:
    """The watch lives on the dedicated connection: a MULTI refused after it ends the watch
    (as EXEC would), so that connection is closed, never handed to another session whose
    transaction it would abort."""
    redis.Redis(port=server.port).flushall()
    async with inprocess_gateway(
        tmp_path, [server.port], operations={"MULTI": {"limit": {"rate": 0.001, "burst": 1}}}
    ) as (runtime, (a,)):
        pool = runtime.pool(runtime.home)
        assert (await a.call(("MULTI",), ("EXEC",)))[0] == b"+OK\r\n"  # the only token
        assert pool.statistics().dedicated_idle == 1  # a clean one, pooled
        assert await a.call(("WATCH", "k")) == [b"+OK\r\n"]  # takes it again
        limited = await a.call(("MULTI",), ("EXEC",), ("GET", "x"))
        assert b"rate limit" in limited[0] and limited[1:] == [EXECABORT, b"$-1\r\n"]
        stats = pool.statistics()
        assert (stats.dedicated_in_use, stats.dedicated_idle) == (0, 0)


async def test_every_select_made_while_watching_is_followed(
    tmp_path: Path, server: RedisServer
) -> None:
    redis.Redis(port=server.port).flushall()
    async with inprocess_gateway(tmp_path, [server.port]) as (_, (a,)):
        assert await a.call(("WATCH", "k")) == [b"+OK\r\n"]
        first, second = await a.call(("SELECT", "1"), ("SELECT", "99"))
        assert first == b"+OK\r\n" and second.startswith(b"-ERR")
        assert await a.call(("SET", "x", "in-db-1"), ("UNWATCH",)) == [b"+OK\r\n"] * 2
        assert await a.call(("GET", "x")) == [b"$7\r\nin-db-1\r\n"]


async def test_a_transaction_whose_connection_is_lost_runs_nothing_outside_it(
    tmp_path: Path, server: RedisServer
) -> None:
    direct = redis.Redis(port=server.port)
    direct.flushall()
    async with inprocess_gateway(tmp_path, [server.port]) as (_, (a,)):
        assert await a.call(("MULTI",), ("SET", "a", "1")) == [b"+OK\r\n", b"+QUEUED\r\n"]
        direct.client_kill_filter(_type="normal", skipme=True)  # the node drops the gateway
        lost = await a.call(("SET", "b", "2"))
        assert lost[0].startswith(b"-ERR resmesh: backend")
        after = await a.call(("SET", "c", "3"), ("EXEC",))
        assert after[0].startswith(b"-ERR resmesh: not run: its MULTI was refused")
        assert after[1] == EXECABORT
        assert await a.call(("GET", "c")) == [b"$-1\r\n"]
    assert direct.get("c") is None


async def test_reset_on_a_subscribed_connection_keeps_the_gateway_s_backend_user(
    tmp_path: Path, acl_server: RedisServer
) -> None:
    """Redis's RESET logs its connection in as the node's ``default`` user: the relay's
    connection is closed after it, and later commands go out as the gateway's user."""
    direct = redis.Redis(port=acl_server.port)
    backend = {"username": "gw", "password": "gwpw"}
    async with inprocess_gateway(tmp_path, [acl_server.port], backend=backend) as (_, (a,)):
        assert (await a.call(("SET", "other:x", "1")))[0].startswith(b"-NOPERM")
        assert (await a.call(("SUBSCRIBE", "ch")))[0].startswith(b"*3\r\n$9\r\nsubscribe")
        assert await a.call(("RESET",)) == [b"+RESET\r\n"]
        assert (await a.call(("SET", "other:x", "1")))[0].startswith(b"-NOPERM")
        assert await a.call(("SET", "app:x", "1")) == [b"+OK\r\n"]
    assert direct.get("other:x") is None


async def test_noperm_is_the_caller_s_error_and_never_trips_the_breaker(
    tmp_path: Path, acl_server: RedisServer
) -> None:
    backend = {"username": "gw", "password": "gwpw"}
    async with inprocess_gateway(
        tmp_path, [acl_server.port], backend=backend, breaker={"enabled": True}
    ) as (_, (a,)):
        for _ in range(12):
            assert (await a.call(("SET", "other:x", "1")))[0].startswith(b"-NOPERM")
        assert await a.call(("SET", "app:y", "1")) == [b"+OK\r\n"]


async def test_switches_serve_watch_and_subscriptions_where_they_change_nothing(
    tmp_path: Path, server: RedisServer
) -> None:
    for mode in ("readonly", "miss"):
        async with inprocess_gateway(tmp_path, [server.port], switch={"mode": mode}) as (_, (a,)):
            assert await a.call(("WATCH", "k"), ("UNWATCH",)) == [b"+OK\r\n"] * 2
            first = await a.call(("SUBSCRIBE", "ch1"))
            second = await a.call(("SUBSCRIBE", "ch2"))  # on the relay now
            assert first[0].startswith(b"*3\r\n$9\r\nsubscribe"), (mode, first)
            assert second[0].startswith(b"*3\r\n$9\r\nsubscribe"), (mode, second)


async def test_selects_of_databases_the_node_lacks_leave_nothing_behind(
    tmp_path: Path, server: RedisServer
) -> None:
    async with inprocess_gateway(tmp_path, [server.port]) as (runtime, (a,)):
        pool = runtime.pool(runtime.home)
        for db in range(1000, 1100):
            assert await a.call(("SELECT", str(db))) == [b"-ERR DB index is out of range\r\n"]
        assert set(pool._shared) <= {(0, 2)}


async def test_client_commands_inside_a_transaction_answer_for_the_client(
    tmp_path: Path, server: RedisServer
) -> None:
    async with inprocess_gateway(tmp_path, [server.port]) as (_runtime, (a,)):
        (own_id,) = await a.call(("CLIENT", "ID"))
        replies = await a.call(("MULTI",), ("CLIENT", "ID"), ("PING",), ("EXEC",))
        assert replies[:3] == [b"+OK\r\n", b"+QUEUED\r\n", b"+QUEUED\r\n"]
        assert replies[3] == b"*2\r\n" + own_id + b"+PONG\r\n"  # the gateway's id, not the node's
        listed = (await a.call(("MULTI",), ("CLIENT", "LIST"), ("EXEC",)))[-1]
        assert b"laddr=127.0.0.1:1 " in listed  # the gateway's sessions, not the node's clients


async def test_a_cluster_that_grows_from_one_node_backs_reads_up(
    tmp_path: Path, server: RedisServer
) -> None:
    """The engine's timer runs from the start, so hedging works once a new layout spreads
    reads over more nodes."""
    second = RedisServer()
    try:
        async with inprocess_gateway(
            tmp_path, [server.port], hedge={"enabled": True, "budget": 1.0, "floor": "2ms"}
        ) as (runtime, (a,)):
            await trio.testing.wait_all_tasks_blocked()  # the runtime's tasks have started
            runtime.apply(
                ClusterState(
                    2,
                    (
                        NodeSpec("127.0.0.1", server.port, "dc-a", 100, True),
                        NodeSpec("127.0.0.1", second.port, "dc-a", 100, False),
                    ),
                    {"dc-a": 100},
                )
            )
            for _ in range(60):
                await a.call(("GET", "grow"))
            hedger = runtime.policies.hedger("GET")
            assert hedger is not None and hedger.delay(trio.current_time()) is not None
            assert second.proc is not None
            os.kill(second.proc.pid, signal.SIGSTOP)
            try:
                for _ in range(20):
                    assert await a.call(("GET", "grow")) == [b"$-1\r\n"]
            finally:
                os.kill(second.proc.pid, signal.SIGCONT)
            assert hedger.budget.statistics().wins >= 1
    finally:
        second.stop()
