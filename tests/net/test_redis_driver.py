"""The Redis session driver over memory streams (no client socket), in front of an in-process
fake node: pipelining, the gateway's own replies, governance refusals, transactions, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio.testing

from resmesh.config import parse_config
from resmesh.net.redis.runtime import RedisRuntime
from resmesh.net.transport import StreamTransport
from tests.net.fake_node import FakeNode
from tests.support.driver import Client, inprocess_gateway
from tests.support.servers import encode_command


@asynccontextmanager
async def _gateway(tmp_path: Path, **governance: Any) -> AsyncIterator[tuple[Client, FakeNode]]:
    node = FakeNode()
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        data = {
            "clusters": {
                "c": {
                    "protocol": "redis",
                    "listen": "127.0.0.1:1",
                    "groups": {"dc-a": [f"127.0.0.1:{node.port}"]},
                    "policy": "passthrough",
                    "governance": governance,
                }
            }
        }
        config = parse_config(data, tmp_path / "driver.yaml")
        runtime = RedisRuntime(config.clusters["c"], config.users, nursery)
        client_end, gateway_end = trio.testing.memory_stream_pair()
        nursery.start_soon(runtime.handle, StreamTransport(gateway_end))
        yield Client(client_end), node
        runtime.close()
        nursery.cancel_scope.cancel()


async def test_a_pipeline_is_answered_in_order_local_replies_in_their_places(
    tmp_path: Path,
) -> None:
    async with _gateway(tmp_path) as (client, node):
        replies = await client.call(
            ("SET", "k", "v"), ("PING",), ("GET", "k"), ("CLIENT", "ID"), ("ECHO", "e")
        )
        assert replies[0] == b"+OK\r\n" and replies[2] == b"$1\r\nv\r\n"
        assert replies[1] == b"+PONG\r\n" and replies[4] == b"$1\r\ne\r\n"
        assert replies[3].startswith(b":")
        assert [args[0] for args in node.received] == [b"SET", b"GET"]  # local ones stay here


async def test_switch_and_limit_refusals_are_resp_errors_and_the_pipeline_goes_on(
    tmp_path: Path,
) -> None:
    governance = {"operations": {"GET": {"switch": {"mode": "miss"}, "limit": {"rate": 1}}}}
    async with _gateway(tmp_path, **governance) as (client, node):
        replies = await client.call(("SET", "k", "v"), ("GET", "k"), ("INCR", "n"))
        assert replies == [b"+OK\r\n", b"$-1\r\n", b":1\r\n"]  # GET degraded to a miss
        assert [args[0] for args in node.received] == [b"SET", b"INCR"]


async def test_a_transaction_runs_on_a_dedicated_connection(tmp_path: Path) -> None:
    async with _gateway(tmp_path) as (client, node):
        await client.call(("GET", "warm"))  # a shared connection first
        replies = await client.call(("MULTI",), ("INCR", "n"), ("INCR", "n"), ("EXEC",))
        assert replies == [b"+OK\r\n", b"+QUEUED\r\n", b"+QUEUED\r\n", b"*2\r\n:1\r\n:2\r\n"]
        assert node.connections == 2
        assert await client.call(("GET", "n")) == [b"$1\r\n2\r\n"]


async def test_a_node_error_is_an_error_reply_and_the_session_lives_on(tmp_path: Path) -> None:
    async with _gateway(tmp_path) as (client, node):
        node.hook = lambda args: b"-LOADING Redis is loading\r\n" if args[0] == b"GET" else None
        assert await client.call(("GET", "k")) == [b"-LOADING Redis is loading\r\n"]
        node.hook = None
        assert await client.call(("GET", "k")) == [b"$-1\r\n"]


async def test_a_protocol_error_is_answered_then_the_connection_closed(tmp_path: Path) -> None:
    async with _gateway(tmp_path) as (client, _):
        await client.stream.send_all(encode_command("PING") + b"*1\r\n$x\r\n")
        assert await client.replies(2) == [
            b"+PONG\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ]
        assert await client.closed()


async def test_quit_answers_then_closes(tmp_path: Path) -> None:
    async with _gateway(tmp_path) as (client, _):
        assert await client.call(("SET", "k", "v"), ("QUIT",)) == [b"+OK\r\n", b"+OK\r\n"]
        assert await client.closed()


async def test_select_applies_to_later_commands_and_reset_goes_back(tmp_path: Path) -> None:
    async with _gateway(tmp_path) as (client, node):
        assert await client.call(("SELECT", "3"), ("SET", "k", "three")) == [b"+OK\r\n"] * 2
        assert await client.call(("SELECT", "99")) == [b"-ERR DB index is out of range\r\n"]
        assert await client.call(("GET", "k")) == [b"$5\r\nthree\r\n"]
        assert await client.call(("RESET",), ("GET", "k")) == [b"+RESET\r\n", b"$-1\r\n"]
        assert node.data[3] == {b"k": b"three"}


async def test_batches_sent_before_the_replies_are_answered_in_order(tmp_path: Path) -> None:
    """The run of one batch is answered in the backend reader's task while the session
    reads on: a batch that arrives meanwhile waits for it, so replies keep their order."""
    async with _gateway(tmp_path) as (client, node):
        assert await client.call(("SET", "k", "v")) == [b"+OK\r\n"]
        node.stall = trio.Event()  # the node reads but does not answer
        await client.stream.send_all(encode_command("GET", "k"))
        await trio.testing.wait_all_tasks_blocked()
        await client.stream.send_all(encode_command("INCR", "n") + encode_command("PING"))
        await trio.testing.wait_all_tasks_blocked()
        assert [args[0] for args in node.received[-1:]] == [b"GET"]  # INCR not sent yet
        node.stall.set()
        assert await client.replies(3) == [b"$1\r\nv\r\n", b":1\r\n", b"+PONG\r\n"]


async def test_a_run_answered_in_the_reader_s_task_gives_its_slots_back(
    tmp_path: Path,
) -> None:
    node = FakeNode()
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        async with inprocess_gateway(tmp_path, [node.port], limit={"concurrency": 2}) as (
            runtime,
            (client,),
        ):
            limiter = runtime.policies.limiter
            assert limiter is not None
            for _ in range(5):
                replies = await client.call(("SET", "k", "v"), ("GET", "k"))
                assert replies == [b"+OK\r\n", b"$1\r\nv\r\n"]  # admitted whole
                assert await client.call(("INCR", "n")) != []  # admitted alone
            assert limiter.statistics(0.0).cluster.concurrency.in_flight == 0
        nursery.cancel_scope.cancel()


_SUBSCRIBED = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"


async def test_the_idle_timeout_ends_a_silent_client_only_after_its_silence(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """``limits.client_idle_timeout``: a client is closed once silent that long (within a
    quarter of it after), never earlier; a subscriber waiting for messages is spared, as
    redis-server's ``timeout`` spares Pub/Sub clients."""
    node = FakeNode()
    node.hook = lambda args: _SUBSCRIBED if args[0] == b"SUBSCRIBE" else None
    closed_at: dict[str, float] = {}

    async def closed(name: str, client: Client) -> None:
        assert await client.closed()
        closed_at[name] = trio.current_time()

    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        async with inprocess_gateway(
            tmp_path, [node.port], clients=3, limits={"client_idle_timeout": 2.0}
        ) as (runtime, (talker, silent, subscriber)):
            start = trio.current_time()
            nursery.start_soon(closed, "silent", silent)
            assert await subscriber.call(("SUBSCRIBE", "ch")) == [_SUBSCRIBED]
            for _ in range(4):  # talks for 6 s, silent for 1.5 s at a time
                assert await talker.call(("PING",)) == [b"+PONG\r\n"]
                await trio.sleep(1.5)
            assert 2.0 <= closed_at["silent"] - start <= 2.5
            await trio.sleep(0.25)  # between two sweeps
            assert await talker.call(("PING",)) == [b"+PONG\r\n"]
            last_input = trio.current_time()
            await closed("talker", talker)
            assert 2.0 <= closed_at["talker"] - last_input <= 2.5
            await trio.testing.wait_all_tasks_blocked()
            assert len(runtime.sessions) == 1  # the subscriber, after many sweeps
            assert await subscriber.call(("PING",)) == [b"+PONG\r\n"]
        nursery.cancel_scope.cancel()
