"""Dispatched client sessions over real sockets, in front of the in-process fake node.

What this covers: the path a client's bytes take while its session is *dispatched*
(:meth:`resmesh.net.runtime.ClientSession.dispatch`): the cluster's
:class:`~resmesh.net.poller.Poller` reads the socket and calls
:meth:`~resmesh.net.redis.session.RedisSession.handle_nowait` in its own task; the run's
answer writes the replies (``_answered``, in the task that reads the node's connection);
replies that do not fit in the client's socket go to a writer task (``wake_for_output``);
whatever must wait (a local reply, a transaction, EOF, a protocol error) is handed back to
the session's task, which carries on and dispatches again; a request that waited in the
socket while the session was busy is read on afterwards, to its end. Then what ends a
dispatched session (a drain, the idle timeout, a client leaving with its run in flight or
its big reply half written). The poller alone is tested in ``test_poller.py``.

Why real sockets: the poller only takes a session whose transport has a socket
(:class:`~resmesh.net.transport.SocketTransport`). Over memory streams, as in
``tests/net/test_redis_driver.py``, every session stays in its own task, so none of the code
above would run. The gateway here is the real runtime, served from a real listener
(:func:`socket_gateway`); the clients are Trio socket streams.

Every wait is for a condition under a deadline (:func:`wait_until`, ``trio.fail_after``);
the idle-timeout test runs on Trio's ``MockClock`` (pytest-trio's ``autojump_clock``).
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from resmesh.net.listen import bind_tcp
from resmesh.net.redis.runtime import RedisRuntime
from resmesh.net.redis.session import RedisSession
from resmesh.net.runtime import Waiting
from resmesh.net.sockio import close_quietly
from tests.net.fake_node import FakeNode, bulk
from tests.support.driver import Client, inprocess_config, wait_until
from tests.support.servers import encode_command

#: Seconds any one condition may take to come true (real clock): far above what it takes.
DEADLINE = 5.0
OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
QUEUED = b"+QUEUED\r\n"
NIL = b"$-1\r\n"
#: Bytes that no RESP parser accepts (a bulk length that is not a number).
MALFORMED = b"*1\r\n$x\r\n"
PROTOCOL_ERROR = b"-ERR Protocol error: invalid bulk length\r\n"
#: Linux's ``SO_RCVBUFFORCE`` (``<asm-generic/socket.h>``), which Python does not name.
_SO_RCVBUFFORCE = 33

Commands = tuple[tuple[str, ...], ...]


# ------------------------------------------------------------------------------------------
# Helpers


def integer(value: int) -> bytes:
    return b":%d\r\n" % value


def encode(*commands: tuple[str, ...]) -> bytes:
    return b"".join(encode_command(*command) for command in commands)


def unread_bytes(sock: socket.socket) -> int:
    """Bytes waiting in ``sock``'s receive queue (``FIONREAD``)."""
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0])


class SocketClient(Client):
    """A client on a real TCP socket (the driver's ``Client``, plus socket-only moves)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        super().__init__(stream)
        self.socket_stream = stream
        host, port = stream.socket.getsockname()[:2]
        #: The client's address as the gateway names it (``transport.peer``).
        self.peer = f"{host}:{port}"

    async def send(self, data: bytes) -> None:
        await self.socket_stream.send_all(data)

    async def shutdown_write(self) -> None:
        """``shutdown(SHUT_WR)``: the gateway reads EOF, the client still reads replies."""
        await self.socket_stream.send_eof()

    def reset(self) -> None:
        """Close abortively (``SO_LINGER`` 0): the gateway's next write fails."""
        self.socket_stream.socket.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        self.socket_stream.socket.close()

    def close(self) -> None:
        self.socket_stream.socket.close()

    async def closed_or_reset(self) -> bool:
        """Whether the gateway closed the connection, gracefully or not: a socket closed with
        bytes it never read sends a reset (RFC 2525 2.17), as any server's would."""
        try:
            return await self.closed()
        except trio.BrokenResourceError as exc:
            return isinstance(exc.__cause__, ConnectionResetError)


@dataclass
class SocketGateway:
    """A Redis cluster runtime serving a real listener in this process."""

    runtime: RedisRuntime
    port: int
    #: Cancelled to stop accepting (as the gateway does when it drains).
    accepting: trio.CancelScope

    def session_of(self, client: SocketClient) -> RedisSession | None:
        for session in self.runtime.sessions.values():
            if session.transport.peer == client.peer:
                assert isinstance(session, RedisSession)
                return session
        return None

    def session(self, client: SocketClient) -> RedisSession:
        session = self.session_of(client)
        assert session is not None, f"no session for {client.peer}"
        return session

    async def connect(self, *, rcvbuf: int | None = None) -> SocketClient:
        """A new client, returned once its session is dispatched; ``rcvbuf``: the client's
        receive buffer (a small one keeps the kernel from taking big replies for it)."""
        sock = trio.socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(("127.0.0.1", self.port))
        client = SocketClient(trio.SocketStream(sock))

        def dispatched() -> bool:
            session = self.session_of(client)
            return session is not None and session.dispatched

        await wait_until(dispatched, f"the session of {client.peer} to be dispatched")
        return client

    async def drain(self) -> None:
        """What the gateway does on SIGTERM: stop accepting, drain, wait for every session
        to end."""
        self.accepting.cancel()
        self.runtime.start_drain()
        await wait_until(lambda: not self.runtime.sessions, "every session to end")


@asynccontextmanager
async def socket_gateway(
    tmp_path: Path,
    node: FakeNode,
    *,
    backend: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    rcvbuf: int | None = None,
    **governance: Any,
) -> AsyncIterator[SocketGateway]:
    """One cluster (policy ``passthrough`` plus ``governance``) in front of ``node``, served
    on a real listener, so its client sessions are dispatched to the poller. ``rcvbuf``: the
    receive buffer of the gateway's client sockets (they inherit the listener's)."""
    config = inprocess_config(tmp_path, [node.port], backend=backend, limits=limits, **governance)
    listener = bind_tcp("127.0.0.1", 0)
    if rcvbuf is not None:
        set_rcvbuf(listener, rcvbuf)
    accepting = trio.CancelScope()

    async def accept(runtime: RedisRuntime, connections: trio.Nursery) -> None:
        try:
            with accepting:
                await runtime.serve(listener, connections)
        finally:
            close_quietly(listener)

    async with trio.open_nursery() as nursery:
        runtime = RedisRuntime(config.clusters["c"], config.users, nursery)
        nursery.start_soon(runtime.run)
        # A session is only dispatched to a running poller.
        await wait_until(lambda: runtime.poller.running, "the poller to run")
        async with trio.open_nursery() as connections:
            connections.start_soon(accept, runtime, connections)
            yield SocketGateway(runtime, listener.getsockname()[1], accepting)
            connections.cancel_scope.cancel()
        runtime.close()
        nursery.cancel_scope.cancel()


def set_rcvbuf(sock: socket.socket, size: int) -> None:
    """``SO_RCVBUFFORCE`` where allowed (past ``net.core.rmem_max``), else ``SO_RCVBUF``."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


@asynccontextmanager
async def fake_node() -> AsyncIterator[FakeNode]:
    node = FakeNode()
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        yield node
        nursery.cancel_scope.cancel()


async def warm_up(client: SocketClient) -> None:
    """Send SET, GET and INCR once: the runtime learns a plain command's name the first time
    the session's task forwards it, and only then does the poller serve it by itself."""
    assert await client.call(("SET", "warm", "1"), ("GET", "warm"), ("INCR", "warmed")) == [
        OK,
        b"$1\r\n1\r\n",
        integer(1),
    ]


@dataclass
class PollerReads:
    """Every ``handle_nowait`` call (a dispatched session given the bytes read from its
    socket): the session's id and whether it served them without handing the session back
    to its task."""

    calls: list[tuple[int, bool]]

    def served(self, session: RedisSession) -> int:
        """How many reads the poller served for ``session`` without its task."""
        return sum(1 for id_, kept in self.calls if id_ == session.id and kept)

    def of(self, session: RedisSession) -> int:
        """How many reads were handed to ``session`` while dispatched."""
        return sum(1 for id_, _ in self.calls if id_ == session.id)


@pytest.fixture
def poller_reads(monkeypatch: pytest.MonkeyPatch) -> PollerReads:
    reads = PollerReads([])
    handle_nowait = RedisSession.handle_nowait

    def spy(self: RedisSession, data: bytes) -> bool:
        kept = handle_nowait(self, data)
        reads.calls.append((self.id, kept))
        return kept

    monkeypatch.setattr(RedisSession, "handle_nowait", spy)
    return reads


# ------------------------------------------------------------------------------------------
# Plain commands: served from the poller's task


async def test_many_clients_pipelining_and_in_lockstep_get_their_replies_in_order(
    tmp_path: Path, poller_reads: PollerReads
) -> None:
    """20 clients at once, each: 100 SETs in one write, 100 GETs of them in one write, then
    50 INCRs one at a time. Every reply is the client's own, in its order."""
    clients, pipelined, sequential = 20, 100, 50

    async def talk(gw: SocketGateway, n: int) -> None:
        client = await gw.connect()
        sets = [("SET", f"k{n}:{i}", f"v{n}:{i}") for i in range(pipelined)]
        assert await client.call(*sets) == [OK] * pipelined
        gets = [("GET", f"k{n}:{i}") for i in range(pipelined)]
        assert await client.call(*gets) == [bulk(f"v{n}:{i}".encode()) for i in range(pipelined)]
        for i in range(1, sequential + 1):
            assert await client.call(("INCR", f"n{n}")) == [integer(i)]
        session = gw.session(client)
        assert session.dispatched
        # Each INCR came through the poller, served there without the session's task.
        assert poller_reads.served(session) >= sequential

    async with fake_node() as node, socket_gateway(tmp_path, node) as gw:
        await warm_up(await gw.connect())
        async with trio.open_nursery() as nursery:
            for n in range(clients):
                nursery.start_soon(talk, gw, n)
        store = node.data[0]
        assert all(store[f"n{n}".encode()] == b"%d" % sequential for n in range(clients))
        assert len(store) == clients * (pipelined + 1) + 2


async def test_a_pipeline_larger_than_one_read_is_answered_whole_and_in_order(
    tmp_path: Path,
) -> None:
    """About 1.5 MiB of SETs in one write: the poller reads it in several turns (a full read
    means more may wait, and a busy session is read again once answered)."""
    count = 5000
    value = "x" * 256
    async with fake_node() as node, socket_gateway(tmp_path, node) as gw:
        client = await gw.connect()
        await warm_up(client)
        payload = encode(*[("SET", f"big:{i}", f"{i}:{value}") for i in range(count)])
        assert len(payload) > 4 * 256 * 1024  # several reads' worth (RECV_SIZE each)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send, payload)
            assert await client.replies(count) == [OK] * count
        assert await client.call(("GET", f"big:{count - 1}")) == [
            bulk(f"{count - 1}:{value}".encode())
        ]
        assert [args[1] for args in node.received if args[0] == b"SET"][-count:] == [
            f"big:{i}".encode() for i in range(count)
        ]


async def test_a_batch_sent_while_one_is_in_flight_waits_for_it(
    tmp_path: Path, poller_reads: PollerReads
) -> None:
    """While a run is in flight the poller does not read the client (its session is busy):
    what the client sends meanwhile, plain or local, is answered after it, in order."""
    async with fake_node() as node, socket_gateway(tmp_path, node) as gw:
        client = await gw.connect()
        session = gw.session(client)
        await warm_up(client)
        assert await client.call(("SET", "k", "v")) == [OK]
        node.stall = trio.Event()  # the node reads but does not answer
        sent = len(node.received)
        await client.send(encode(("GET", "k")))
        await wait_until(lambda: len(node.received) == sent + 1, "the GET to reach the node")
        assert session.busy
        reads = poller_reads.of(session)
        await client.send(encode(("INCR", "n"), ("PING",), ("GET", "k")))
        await client.send(encode(("ECHO", "e")))
        await trio.testing.wait_all_tasks_blocked()
        assert len(node.received) == sent + 1  # the later batches are not sent yet...
        assert poller_reads.of(session) == reads  # ...nor even read
        node.stall.set()
        assert await client.replies(5) == [
            b"$1\r\nv\r\n",
            integer(1),
            PONG,
            b"$1\r\nv\r\n",
            b"$1\r\ne\r\n",
        ]
        await wait_until(lambda: session.dispatched and not session.busy, "the session idle")


# ------------------------------------------------------------------------------------------
# Handed back to the session's task, then dispatched again


async def test_a_pipeline_with_local_replies_and_a_transaction_then_back_to_the_poller(
    tmp_path: Path, poller_reads: PollerReads
) -> None:
    """One write: a plain SET (queued by the poller), local replies, a transaction (on a
    dedicated connection), a plain GET. The session's task carries on from the PING; every
    reply is in its place; then the session is dispatched again and the poller serves the
    next plain batch by itself."""
    async with fake_node() as node, socket_gateway(tmp_path, node) as gw:
        client = await gw.connect()
        session = gw.session(client)
        await warm_up(client)
        reads = len(poller_reads.calls)
        replies = await client.call(
            ("SET", "a", "1"),
            ("PING",),
            ("CLIENT", "ID"),
            ("ECHO", "hi"),
            ("MULTI",),
            ("INCR", "n"),
            ("INCR", "n"),
            ("EXEC",),
            ("GET", "a"),
        )
        assert replies == [
            OK,
            PONG,
            integer(session.id),
            b"$2\r\nhi\r\n",
            OK,
            QUEUED,
            QUEUED,
            b"*2\r\n" + integer(1) + integer(2),
            b"$1\r\n1\r\n",
        ]
        assert poller_reads.calls[reads:] == [(session.id, False)]  # handed back at PING
        assert node.connections == 2  # the shared connection and the transaction's
        await wait_until(lambda: session.dispatched, "the session to be dispatched again")
        assert session.pinned is None and session.waiting is Waiting.REQUEST
        served = poller_reads.served(session)
        assert await client.call(("SET", "b", "2"), ("GET", "b")) == [OK, b"$1\r\n2\r\n"]
        assert poller_reads.served(session) == served + 1
        assert session.dispatched


@pytest.mark.parametrize(
    "commands, expected",
    [
        pytest.param((("SET", "k", "v"), ("GET", "k")), [OK, b"$1\r\nv\r\n"], id="plain"),
        pytest.param(
            (("SET", "k", "v"), ("PING",), ("GET", "k")),
            [OK, PONG, b"$1\r\nv\r\n"],
            id="handed-back",
        ),
    ],
)
async def test_eof_right_after_a_batch_still_answers_it_then_closes(
    tmp_path: Path, commands: Commands, expected: list[bytes]
) -> None:
    """The client writes a batch and shuts its write side down (the hang-up may come in the
    same poller event as the bytes): it gets every reply, then the gateway closes."""
    async with fake_node() as node, socket_gateway(tmp_path, node) as gw:
        client = await gw.connect()
        await warm_up(client)
        session = gw.session(client)
        await client.send(encode(*commands))
        await client.shutdown_write()
        assert await client.replies(len(expected)) == expected
        assert await client.closed()
        await wait_until(lambda: session.id not in gw.runtime.sessions, "the session to end")
        assert node.data[0][b"k"] == b"v"


@pytest.mark.parametrize(
    "commands, expected",
    [
        pytest.param((), [], id="alone"),
        pytest.param(
            (("SET", "a", "1"), ("GET", "a")), [OK, b"$1\r\n1\r\n"], id="after-plain-commands"
        ),
        pytest.param(
            (("SET", "a", "1"), ("PING",), ("GET", "a")),
            [OK, PONG, b"$1\r\n1\r\n"],
            id="after-a-hand-back",
        ),
    ],
)
async def test_a_protocol_error_after_valid_commands_comes_after_their_replies(
    tmp_path: Path, commands: Commands, expected: list[bytes]
) -> None:
    """Valid commands then malformed bytes, in one write: the commands' replies, then the
    protocol error, then the close."""
    async with fake_node() as node, socket_gateway(tmp_path, node) as gw:
        client = await gw.connect()
        await warm_up(client)
        session = gw.session(client)
        await client.send(encode(*commands) + MALFORMED)
        assert await client.replies(len(expected) + 1) == [*expected, PROTOCOL_ERROR]
        assert await client.closed()
        await wait_until(lambda: session.id not in gw.runtime.sessions, "the session to end")
        if commands:
            assert node.data[0][b"a"] == b"1"


# ------------------------------------------------------------------------------------------
# What ends a dispatched session


async def test_a_drain_ends_idle_sessions_at_once_and_a_busy_one_after_its_run(
    tmp_path: Path,
) -> None:
    """``start_drain`` while a run is in flight: an idle client is closed at once; the busy
    one gets its reply and then the close (what it sent after the run is not taken: the
    gateway takes no new request once draining); then every session has ended."""
    async with fake_node() as node, socket_gateway(tmp_path, node) as gw:
        busy, idle = await gw.connect(), await gw.connect()
        await warm_up(busy)
        assert await busy.call(("SET", "k", "v")) == [OK]
        node.stall = trio.Event()
        sent = len(node.received)
        await busy.send(encode(("GET", "k")))
        await wait_until(lambda: len(node.received) == sent + 1, "the GET to reach the node")
        await busy.send(encode(("INCR", "late")))  # waits in the socket: the session is busy
        busy_session = gw.session(busy)
        assert busy_session.busy
        drained = trio.Event()

        async def drain() -> None:
            await gw.drain()
            drained.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            assert await idle.closed()
            await wait_until(lambda: len(gw.runtime.sessions) == 1, "the idle session to end")
            assert list(gw.runtime.sessions) == [busy_session.id]  # held by its run
            assert not drained.is_set()
            node.stall.set()
            assert await busy.replies(1) == [b"$1\r\nv\r\n"]
            assert await busy.closed_or_reset()  # reset: "late" was never read
            with trio.fail_after(DEADLINE):
                await drained.wait()
        assert b"late" not in [args[1] for args in node.received if len(args) > 1]


async def test_a_drain_at_a_hand_back_lets_the_session_finish_its_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drain that starts right after the poller handed a batch back (before the session's
    task runs again) does not end that session as if it waited for a request: the batch is
    run and answered whole, then the session ends, and the limiter gets every slot back
    (the batch was admitted whole)."""
    hand_back = RedisSession._hand_back
    armed: list[RedisRuntime] = []

    def drain_at_hand_back(self: RedisSession, *, left: bool = False) -> None:
        hand_back(self, left=left)
        if armed:
            armed.pop().start_drain()  # in the poller's task: the session's has not run yet

    monkeypatch.setattr(RedisSession, "_hand_back", drain_at_hand_back)
    async with (
        fake_node() as node,
        socket_gateway(tmp_path, node, limit={"concurrency": 8}) as gw,
    ):
        limiter = gw.runtime.policies.limiter
        assert limiter is not None
        client = await gw.connect()
        await warm_up(client)
        armed.append(gw.runtime)
        await client.send(
            encode(("SET", "a", "1"), ("MULTI",), ("INCR", "n"), ("EXEC",), ("GET", "a"))
        )
        # The transaction waits for a connection of its own: a checkpoint, where a session
        # taken for one waiting for a request would be ended.
        assert await client.replies(5) == [OK, OK, QUEUED, b"*1\r\n" + integer(1), bulk(b"1")]
        assert await client.closed()
        await wait_until(lambda: not gw.runtime.sessions, "the session to end")
        concurrency = limiter.statistics(trio.current_time()).cluster.concurrency
        assert concurrency is not None and concurrency.in_flight == 0


async def test_the_idle_timeout_ends_a_silent_dispatched_client_but_not_a_busy_one(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """``limits.client_idle_timeout`` of 2 s on dispatched sessions (MockClock): a silent
    client is closed 2 to 2.5 s after its last reply; one that talks every 1.5 s is not; one
    whose run is in flight for 6 s is not either, and its silence counts from its reply."""
    closed_at: dict[str, float] = {}

    async def watch(name: str, client: SocketClient) -> None:
        with trio.fail_after(30):
            assert await client.socket_stream.receive_some(65536) == b""
        closed_at[name] = trio.current_time()

    async with (
        fake_node() as node,
        socket_gateway(
            tmp_path, node, backend={"command_timeout": "60s"}, limits={"client_idle_timeout": 2}
        ) as gw,
    ):
        silent, talker, busy = await gw.connect(), await gw.connect(), await gw.connect()
        for client in (talker, busy, silent):
            assert await client.call(("GET", "k")) == [NIL]
        silent_since = trio.current_time()  # its last reply
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, "silent", silent)
            node.stall = trio.Event()
            await busy.send(encode(("GET", "k")))
            await trio.testing.wait_all_tasks_blocked()
            busy_session = gw.session(busy)
            assert busy_session.busy and busy_session.dispatched
            for _ in range(4):  # 6 s
                await trio.sleep(1.5)
                assert await talker.call(("ECHO", "hi")) == [b"$2\r\nhi\r\n"]
            assert "silent" in closed_at
            assert 2.0 <= closed_at["silent"] - silent_since <= 2.5
            assert gw.session_of(talker) is not None
            assert gw.session_of(busy) is busy_session and busy_session.busy
            node.stall.set()
            assert await busy.replies(1) == [NIL]
            answered = trio.current_time()
            nursery.start_soon(watch, "busy", busy)
            nursery.start_soon(watch, "talker", talker)
        assert 2.0 <= closed_at["busy"] - answered <= 2.5
        await wait_until(lambda: not gw.runtime.sessions, "every session to end")


async def test_a_big_reply_to_a_client_not_reading_goes_to_a_writer_while_others_are_served(
    tmp_path: Path,
) -> None:
    """A 4 MiB reply does not fit in a client's socket that is not being read: the writer
    task holds the rest while other clients are served, the client's next command waits
    behind it, and once the client reads, everything arrives whole and in order."""
    big = bytes(range(256)) * (4 * 1024 * 1024 // 256)
    async with fake_node() as node, socket_gateway(tmp_path, node) as gw:
        node.data[0] = {b"big": big, b"k": b"v"}
        slow = await gw.connect(rcvbuf=32 * 1024)
        other = await gw.connect()
        await warm_up(other)
        slow_session = gw.session(slow)
        await slow.send(encode(("GET", "big")))
        await wait_until(lambda: slow_session.writing, "the writer task to take the reply")
        await slow.send(encode(("GET", "k")))
        for i in range(1, 51):
            assert await other.call(("INCR", "n")) == [integer(i)]
        assert slow_session.writing  # the slow client still holds its writer
        assert await slow.replies(2) == [bulk(big), b"$1\r\nv\r\n"]
        await wait_until(lambda: not slow_session.busy, "the writer task to finish")
        assert await slow.call(("GET", "k")) == [b"$1\r\nv\r\n"]
        assert slow_session.dispatched


async def test_a_client_leaving_while_its_big_reply_is_written_ends_its_session(
    tmp_path: Path,
) -> None:
    """The writer task's write fails once the client is gone: the session ends, the others
    are served."""
    big = b"z" * (4 * 1024 * 1024)
    async with fake_node() as node, socket_gateway(tmp_path, node) as gw:
        node.data[0] = {b"big": big}
        slow = await gw.connect(rcvbuf=32 * 1024)
        other = await gw.connect()
        await warm_up(other)
        slow_session = gw.session(slow)
        await slow.send(encode(("GET", "big")))
        await wait_until(lambda: slow_session.writing, "the writer task to take the reply")
        slow.close()
        await wait_until(lambda: slow_session.id not in gw.runtime.sessions, "the session end")
        assert not slow_session.writing
        assert await other.call(("GET", "big"), ("PING",)) == [bulk(big), PONG]


#: A SET whose value is more than four reads (``_READS_PER_TURN`` times ``RECV_SIZE``: 1 MiB).
_BIG_SET = encode(("SET", "upload", "u" * (3 * 1024 * 1024)))


@pytest.mark.parametrize(
    "after",
    [
        "a-run-in-flight",
        "a-transaction",
        "a-big-reply",
    ],
)
async def test_a_big_request_that_waited_in_the_socket_is_read_to_its_end(
    tmp_path: Path, after: str
) -> None:
    """A 3 MiB SET sent while the session could not read it (a run in flight, a transaction
    in the session's task, a big reply held by the writer task) waits whole in the socket;
    once the session reads on, it must be read to its end and answered, with no other
    client around to wake the poller.

    The session reads on in a different task each time: the poller's (the answer of a run
    is read there), the session's own (``dispatch``), the writer's (``resume_reading``).
    Four full reads take 1 MiB, then the rest waits for ``Poller.again``, which must wake
    the poller when it is called from outside the poller's round."""
    async with (
        fake_node() as node,
        socket_gateway(tmp_path, node, rcvbuf=8 * 1024 * 1024) as gw,
    ):
        node.data[0] = {b"big": b"b" * (4 * 1024 * 1024)}
        client = await gw.connect(rcvbuf=32 * 1024)
        await warm_up(client)
        session = gw.session(client)
        sock = session.transport.sock
        assert sock is not None
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 2 * len(_BIG_SET), (
            "the test needs an 8 MiB socket receive buffer: run it as root (SO_RCVBUFFORCE) or "
            "raise the cap: sysctl -w net.core.rmem_max=16777216"
        )
        sent = len(node.received)
        if after == "a-big-reply":
            await client.send(encode(("GET", "big")))
            await wait_until(lambda: session.writing, "the writer task to take the reply")
            expected = [bulk(node.data[0][b"big"]), OK]
        else:
            node.stall = trio.Event()  # the first request waits at the node
            if after == "a-run-in-flight":
                await client.send(encode(("GET", "k")))
                expected = [NIL, OK]
            else:
                await client.send(encode(("MULTI",), ("INCR", "n"), ("EXEC",)))
                expected = [OK, QUEUED, b"*1\r\n" + integer(1), OK]
            await wait_until(lambda: len(node.received) > sent, "the request at the node")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send, _BIG_SET)
            await wait_until(
                lambda: unread_bytes(sock) == len(_BIG_SET), "the SET to wait in the socket"
            )
        node.stall.set()  # the session reads on once its first request is done
        assert await client.replies(len(expected) - 1) == expected[:-1]
        answer: list[bytes] = []
        with trio.move_on_after(1.0):  # it takes milliseconds
            answer = await client.replies(1)
        unread = unread_bytes(sock)
        assert answer == [OK], f"no reply to the SET: {unread} of its bytes still unread"


@pytest.mark.parametrize("pipeline", [1, 3], ids=["one-call", "a-batch"])
@pytest.mark.parametrize("leave", ["close", "reset", "timeout"])
async def test_a_client_leaving_with_its_run_in_flight_gives_its_slots_back(
    tmp_path: Path, pipeline: int, leave: str
) -> None:
    """``governance.limit.concurrency``: a client that leaves (closes, resets) while its
    run is in flight holds its slots until the run ends (answered, or timed out) and then
    gives them all back; the gateway serves the others throughout."""
    async with (
        fake_node() as node,
        socket_gateway(
            tmp_path, node, backend={"command_timeout": "300ms"}, limit={"concurrency": 8}
        ) as gw,
    ):
        limiter = gw.runtime.policies.limiter
        assert limiter is not None

        def in_flight() -> int:
            concurrency = limiter.statistics(trio.current_time()).cluster.concurrency
            assert concurrency is not None
            return concurrency.in_flight

        leaver, stayer = await gw.connect(), await gw.connect()
        await warm_up(stayer)
        session = gw.session(leaver)
        node.stall = trio.Event()
        await leaver.send(encode(*[("GET", "k")] * pipeline))
        await wait_until(lambda: in_flight() == pipeline, "the run to hold its slots")
        if leave == "reset":
            leaver.reset()
        else:
            leaver.close()
        await trio.testing.wait_all_tasks_blocked()
        assert in_flight() == pipeline  # the run is still in flight
        if leave != "timeout":
            node.stall.set()
        await wait_until(lambda: session.id not in gw.runtime.sessions, "the session to end")
        assert in_flight() == 0
        node.stall.set()
        for i in range(1, 4):
            assert await stayer.call(("INCR", "n")) == [integer(i)]
        assert in_flight() == 0
