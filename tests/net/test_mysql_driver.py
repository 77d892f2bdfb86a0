"""The MySQL session driver over memory streams, in front of an in-process fake node built on
the codec's server role: the login, forwarding and streaming, governance refusals, a lost node.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio.testing

from resmesh.call import Outcome
from resmesh.config import parse_config
from resmesh.net.mysql.runtime import MySQLRuntime
from resmesh.net.mysql.session import outcome_of
from resmesh.net.transport import StreamTransport
from resmesh.protocols.mysql import NEED_DATA, Connection, Packet, Role, State
from resmesh.protocols.mysql.auth import (
    caching_sha2_scramble,
    native_password_scramble,
    new_scramble,
)
from resmesh.protocols.mysql.constants import Capability, ColumnType, Command
from resmesh.protocols.mysql.errors import error_info
from resmesh.protocols.mysql.events import (
    AuthSwitch,
    ClientHandshake,
    CommandEvent,
    ConnectionClosed,
    Err,
    Event,
    Greeting,
    Ok,
    Row,
)
from resmesh.protocols.mysql.handshake import (
    HandshakeResponse,
    InitialHandshake,
    encode_handshake_response,
    encode_initial_handshake,
)
from resmesh.protocols.mysql.results import (
    ColumnCount,
    ColumnDefinition,
    EofPacket,
    ErrPacket,
    OkPacket,
    decode_text_row,
    encode_column_count,
    encode_column_definition,
    encode_eof,
    encode_err,
    encode_ok,
    encode_text_row,
)
from resmesh.protocols.mysql.statements import StmtPrepare, encode_stmt_prepare

_NODE_CAPABILITIES = Capability(0x81FFF7FE)  # MariaDB 10.11's
_COLUMN = ColumnDefinition(name="n", type=ColumnType.LONG)


class FakeNode:
    """A MySQL node that accepts any login and answers queries from a tiny script:
    ``SELECT n`` gives n rows, ``FAIL`` an ERR 1064, ``BUSY`` an ERR 1040, anything else OK."""

    def __init__(self) -> None:
        self.port = 0
        self.logins: list[tuple[str, str | None]] = []
        self.received: list[tuple[int, bytes]] = []
        self.connections = 0

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = Connection(Role.SERVER)
        greeting = InitialHandshake(
            server_version="5.5.5-10.11.19-MariaDB",
            connection_id=self.connections,
            auth_plugin_data=new_scramble(),
            capabilities=_NODE_CAPABILITIES,
        )
        await stream.send_all(conn.send(encode_initial_handshake(greeting)))
        try:
            while True:
                event = await _next(conn, stream)
                if isinstance(event, ConnectionClosed):
                    return
                if isinstance(event, ClientHandshake):
                    self.logins.append((event.response.username, event.response.database))
                    await stream.send_all(conn.send(encode_ok(OkPacket(), conn.capabilities)))
                elif isinstance(event, CommandEvent):
                    payload = event.packet.payload
                    self.received.append((payload[0], payload))
                    if payload[0] == Command.QUIT:
                        return
                    if payload == b"\x03HANG":
                        await trio.sleep_forever()  # never answers
                    await stream.send_all(self._reply(conn, payload))
        except trio.BrokenResourceError:
            return

    def _reply(self, conn: Connection, payload: bytes) -> bytes:
        caps = int(conn.capabilities)
        sql = payload[1:]
        if payload[0] == Command.STMT_PREPARE:
            err = ErrPacket.from_info(error_info(1146, "Table 'd.t' doesn't exist"))
            return conn.send(encode_err(err, caps))
        if payload[0] != Command.QUERY:
            return conn.send(encode_ok(OkPacket(), caps))
        if sql.startswith(b"SELECT "):
            rows = int(sql.split()[1])
            out = [conn.send(encode_column_count(ColumnCount(1), caps))]
            out.append(
                conn.send(
                    encode_column_definition(ColumnDefinition(name="n", type=ColumnType.LONG), caps)
                )
            )
            if not caps & Capability.DEPRECATE_EOF:
                out.append(conn.send(encode_eof(EofPacket(), caps)))
            out += [conn.send(encode_text_row([str(i).encode()])) for i in range(rows)]
            if caps & Capability.DEPRECATE_EOF:
                out.append(conn.send(encode_ok(OkPacket(header=0xFE), caps)))
            else:
                out.append(conn.send(encode_eof(EofPacket(), caps)))
            return b"".join(out)
        if sql in (b"FAIL", b"BUSY"):
            errno = 1064 if sql == b"FAIL" else 1040
            err = ErrPacket.from_info(error_info(errno, "scripted"))
            return conn.send(encode_err(err, caps))
        return conn.send(encode_ok(OkPacket(affected_rows=1), caps))


async def _next(conn: Connection, stream: trio.abc.ReceiveStream) -> Event:
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
            continue
        assert isinstance(event, Event)
        return event


class Client:
    """The app's end: a codec client over the memory stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = Connection(Role.CLIENT)

    async def login(self, user: str = "app", password: str = "pw", db: str | None = "d") -> Event:
        greeting = await _next(self.conn, self.stream)
        assert isinstance(greeting, Greeting)
        caps = (
            Capability.LONG_PASSWORD
            | Capability.PROTOCOL_41
            | Capability.SECURE_CONNECTION
            | Capability.PLUGIN_AUTH
            | Capability.CONNECT_WITH_DB
            | Capability.MULTI_RESULTS
            | Capability.DEPRECATE_EOF
        )
        response = HandshakeResponse(
            capabilities=Capability(caps),
            username=user,
            auth_response=native_password_scramble(password.encode(), self.conn.scramble),
            database=db,
            auth_plugin_name="mysql_native_password",
        )
        await self.stream.send_all(self.conn.send(encode_handshake_response(response)))
        return await _next(self.conn, self.stream)

    async def command(self, payload: bytes) -> list[Event]:
        await self.stream.send_all(self.conn.send(payload))
        events = [await _next(self.conn, self.stream)]
        while self.conn.state not in (State.IDLE, State.CLOSED):
            events.append(await _next(self.conn, self.stream))
        return events

    async def query(self, sql: bytes) -> list[Event]:
        return await self.command(bytes((Command.QUERY,)) + sql)


@asynccontextmanager
async def _gateway(
    tmp_path: Path,
    node_port: int | None = None,
    policy: str = "passthrough",
    mysql: dict[str, Any] | None = None,
    command_timeout: str | None = None,
    **governance: Any,
) -> AsyncIterator[tuple[Client, FakeNode, MySQLRuntime]]:
    node = FakeNode()
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        data = {
            "clusters": {
                "c": {
                    "protocol": "mysql",
                    "listen": "127.0.0.1:1",
                    "groups": {"dc-a": [f"127.0.0.1:{node_port or node.port}"]},
                    "backend": {
                        "username": "gw",
                        "password": "secret",
                        "connect_timeout": "1s",
                        "command_timeout": command_timeout or "10s",
                    },
                    "policy": policy,
                    "governance": governance,
                    "mysql": mysql,
                }
            },
            "users": {"app": {"password": "pw", "clusters": ["c"]}},
        }
        config = parse_config(data, tmp_path / "driver.yaml")
        runtime = MySQLRuntime(config.clusters["c"], config.users, nursery)
        if command_timeout is not None:
            nursery.start_soon(runtime.run_backend)  # the sweep that ends stalled replies
        client_end, gateway_end = trio.testing.memory_stream_pair()
        nursery.start_soon(runtime.handle, StreamTransport(gateway_end, "10.0.0.7:5555"))
        yield Client(client_end), node, runtime
        runtime.close()
        nursery.cancel_scope.cancel()


async def test_login_then_queries_are_forwarded_and_streamed(tmp_path: Path) -> None:
    async with _gateway(tmp_path) as (client, node, _):
        assert isinstance(await client.login(), Ok)
        assert node.logins == [("gw", "d")]  # the gateway's own login, the app's database
        events = await client.query(b"SELECT 3")
        assert [type(e) for e in events].count(Row) == 3
        assert isinstance(events[-1], Ok) and events[-1].ends_reply
        failed = await client.query(b"FAIL")
        assert isinstance(failed[-1], Err) and failed[-1].error.errno == 1064
        assert isinstance((await client.command(bytes((Command.PING,))))[-1], Ok)
        assert [c for c, _ in node.received] == [Command.QUERY, Command.QUERY, Command.PING]


async def test_a_bad_password_is_1045_and_the_node_is_never_asked(tmp_path: Path) -> None:
    async with _gateway(tmp_path) as (client, node, _):
        refused = await client.login(password="nope")
        assert isinstance(refused, Err)
        assert (refused.error.errno, refused.error.message) == (
            1045,
            "Access denied for user 'app'@'10.0.0.7' (using password: YES)",
        )
        assert node.connections == 0


async def test_switches_and_limits_refuse_with_mysql_errors(tmp_path: Path) -> None:
    governance: dict[str, Any] = {
        "switch": {"mode": "readonly"},
        "operations": {"SHOW": {"limit": {"rate": 0.001, "burst": 1}}},
    }
    async with _gateway(tmp_path, **governance) as (client, node, _):
        assert isinstance(await client.login(), Ok)
        refused = (await client.query(b"INSERT INTO t VALUES (1)"))[-1]
        assert isinstance(refused, Err) and refused.error.errno == 1290
        assert refused.error.sqlstate == "HY000"
        assert isinstance((await client.query(b"SELECT 1"))[-1], Ok)
        assert isinstance((await client.query(b"SET NAMES utf8mb4"))[-1], Ok)  # never switched
        assert isinstance((await client.query(b"SHOW TABLES"))[-1], Ok)
        limited = (await client.query(b"SHOW TABLES"))[-1]
        assert isinstance(limited, Err) and limited.error.errno == 1203
        prepared = await client.command(encode_stmt_prepare(StmtPrepare(b"DELETE FROM t")))
        # A prepare is no write: it reaches the node (whose ERR says so), not refused here.
        assert isinstance(prepared[-1], Err) and prepared[-1].error.errno == 1146
        sent = [payload[1:] for _, payload in node.received if payload[0] == Command.QUERY]
        assert sent == [b"SELECT 1", b"SET NAMES utf8mb4", b"SHOW TABLES"]


async def test_an_unreachable_node_is_an_err_at_login_and_counts_against_it(
    tmp_path: Path,
) -> None:
    with trio.socket.socket() as probe:  # a port nothing listens on
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with _gateway(tmp_path, node_port=port, policy="default") as (client, _, runtime):
        refused = await client.login()
        assert isinstance(refused, Err) and refused.error.errno == 1105
        assert f"127.0.0.1:{port}" in refused.error.message
        breakers = runtime.policies.statistics(trio.current_time())["breakers"]
        assert breakers[f"127.0.0.1:{port}"].failures == 1


def test_a_node_error_of_its_own_counts_as_upstream() -> None:
    busy = Err(_packet(), ErrPacket(1040, "08004", "Too many connections"))
    dup = Err(_packet(), ErrPacket(1062, "23000", "Duplicate entry"))
    assert outcome_of(busy) is Outcome.UPSTREAM_ERROR
    assert outcome_of(dup) is Outcome.APP_ERROR
    assert outcome_of(Ok(_packet(), OkPacket(), ends_reply=True)) is Outcome.OK


def _packet() -> Packet:
    return Packet(1, b"")


async def test_a_miss_switch_answers_queries_with_an_empty_ok(tmp_path: Path) -> None:
    async with _gateway(tmp_path, switch={"mode": "miss"}) as (client, node, _):
        assert isinstance(await client.login(), Ok)
        for sql in (b"SELECT 5", b"DELETE FROM t"):
            answer = await client.query(sql)
            assert len(answer) == 1 and isinstance(answer[0], Ok)
            assert answer[0].ok.affected_rows == 0
        prepared = await client.command(encode_stmt_prepare(StmtPrepare(b"SELECT 1")))
        assert isinstance(prepared[-1], Err)  # forwarded: the fake node's answer
        assert [c for c, _ in node.received] == [Command.STMT_PREPARE]


async def test_an_error_switch_refuses_with_1105_and_a_fallback_answers_its_value(
    tmp_path: Path,
) -> None:
    operations = {"SELECT": {"switch": {"mode": "fallback", "value": "x"}}}
    governance: dict[str, Any] = {"switch": {"mode": "error"}, "operations": operations}
    async with _gateway(tmp_path, **governance) as (client, node, _):
        assert isinstance(await client.login(), Ok)
        refused = (await client.query(b"UPDATE t SET a = 1"))[-1]
        assert isinstance(refused, Err) and refused.error.errno == 1105
        assert "degraded by switch c (mode error)" in refused.error.message
        rows = [e for e in await client.query(b"SELECT 1") if isinstance(e, Row)]
        assert [decode_text_row(row.packet.payload, 1) for row in rows] == [(b"x",)]
        assert isinstance((await client.command(bytes((Command.PING,))))[-1], Ok)
        assert [c for c, _ in node.received] == [Command.PING]


async def test_malformed_and_oversized_packets_get_an_err_then_the_close(tmp_path: Path) -> None:
    async with _gateway(tmp_path, mysql={"max_allowed_packet": "1KiB"}) as (client, _, _):
        assert isinstance(await client.login(), Ok)
        await client.stream.send_all(b"\x00\x00\x00\x00")  # an empty command
        reply = await client.stream.receive_some(1024)
        assert reply[4] == 0xFF and int.from_bytes(reply[5:7], "little") == 1835
        assert await client.stream.receive_some(1024) == b""
    async with _gateway(tmp_path, mysql={"max_allowed_packet": "1KiB"}) as (client, _, _):
        assert isinstance(await client.login(), Ok)
        await client.stream.send_all(b"\x01\x08\x00\x00\x03" + b"x" * 2048)
        reply = await client.stream.receive_some(1024)
        assert reply[4] == 0xFF and int.from_bytes(reply[5:7], "little") == 1153
        assert await client.stream.receive_some(1024) == b""


async def test_a_client_asking_for_caching_sha2_is_switched_to_native(tmp_path: Path) -> None:
    async with _gateway(tmp_path) as (client, node, _):
        conn = client.conn
        greeting = await _next(conn, client.stream)
        assert isinstance(greeting, Greeting)
        assert greeting.handshake.auth_plugin_name == "mysql_native_password"
        assert not greeting.handshake.capabilities & (Capability.SSL | Capability.COMPRESS)
        response = HandshakeResponse(
            capabilities=Capability(
                Capability.LONG_PASSWORD
                | Capability.PROTOCOL_41
                | Capability.SECURE_CONNECTION
                | Capability.PLUGIN_AUTH
            ),
            username="app",
            auth_response=caching_sha2_scramble(b"pw", conn.scramble),
            auth_plugin_name="caching_sha2_password",
        )
        await client.stream.send_all(conn.send(encode_handshake_response(response)))
        switch = await _next(conn, client.stream)
        assert isinstance(switch, AuthSwitch)
        assert switch.request.plugin_name == "mysql_native_password"
        answer = native_password_scramble(b"pw", switch.request.scramble)
        await client.stream.send_all(conn.send(answer))
        assert isinstance(await _next(conn, client.stream), Ok)
        assert node.logins == [("gw", None)]


async def test_a_node_that_does_not_answer_in_time_ends_the_session(tmp_path: Path) -> None:
    """``backend.command_timeout`` is enforced by the runtime's sweep (no cancel scope per
    read): the stalled reply is counted against the node and the client told why."""
    async with _gateway(tmp_path, command_timeout="200ms") as (client, _, runtime):
        assert isinstance(await client.login(), Ok)
        assert isinstance((await client.query(b"SELECT 1"))[-1], Ok)
        started = trio.current_time()
        [err] = await client.query(b"HANG")
        waited = trio.current_time() - started
        assert isinstance(err, Err) and err.error.errno == 1105
        assert "no answer within 0.2s" in err.error.message
        assert 0.2 <= waited < 1.5
        assert all(pool.open == 0 for pool in runtime.pools.values())  # the connection went
