"""The session state machine, without sockets: the tables, packet classification, real
conversations replayed in both roles byte for byte, split invariance, scripted exchanges
(pipelining, cursors, auth plugins, TLS refusal, LOCAL INFILE, fatal errors) and garbage."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resmesh.protocols._errors import RemoteProtocolError
from resmesh.protocols.mysql import auth
from resmesh.protocols.mysql.connection import NEED_DATA, PAUSED, Connection
from resmesh.protocols.mysql.constants import (
    AuthPlugin,
    Capability,
    Command,
    ServerStatus,
)
from resmesh.protocols.mysql.errors import MySQLLocalError, MySQLRemoteError, packet_too_large
from resmesh.protocols.mysql.events import (
    AuthData,
    AuthMoreDataEvent,
    ClientHandshake,
    ColumnCountEvent,
    ColumnDefinitionEvent,
    CommandEvent,
    ConnectionClosed,
    Eof,
    Err,
    Event,
    Greeting,
    LocalInfileData,
    LocalInfileEnd,
    LocalInfileRequestEvent,
    Ok,
    PrepareOkEvent,
    Progress,
    Row,
    TlsRequest,
)
from resmesh.protocols.mysql.handshake import (
    HandshakeResponse,
    InitialHandshake,
    SSLRequest,
    encode_handshake_response,
    encode_initial_handshake,
    encode_ssl_request,
)
from resmesh.protocols.mysql.packets import MAX_CHUNK
from resmesh.protocols.mysql.results import (
    ColumnCount,
    ColumnDefinition,
    EofPacket,
    ErrPacket,
    OkPacket,
    ProgressReport,
    encode_column_count,
    encode_column_definition,
    encode_eof,
    encode_err,
    encode_ok,
    encode_progress_report,
    encode_text_row,
)
from resmesh.protocols.mysql.state import (
    COMMAND_REPLY,
    COUNTED,
    RESULT_ENDINGS,
    SENDER,
    TRANSITIONS,
    PacketKind,
    Role,
    State,
    classify,
    reply_state,
)
from resmesh.protocols.mysql.statements import PrepareOk, encode_prepare_ok
from tests.protocols.mysql.mysql_support import CONVERSATIONS, frame, split
from tests.support import mutation

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
P41 = Capability.PROTOCOL_41
SERVER_CAPS = (
    Capability.LONG_FLAG
    | Capability.CONNECT_WITH_DB
    | P41
    | Capability.TRANSACTIONS
    | Capability.SECURE_CONNECTION
    | Capability.MULTI_STATEMENTS
    | Capability.MULTI_RESULTS
    | Capability.PS_MULTI_RESULTS
    | Capability.PLUGIN_AUTH
    | Capability.CONNECT_ATTRS
    | Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA
    | Capability.SESSION_TRACK
    | Capability.DEPRECATE_EOF
    | Capability.LOCAL_FILES
    | Capability.MARIADB_PROGRESS
)
SCRAMBLE = b"0123456789abcdefghij"


# -- the tables -----------------------------------------------------------------------------


def test_tables_are_complete_and_consistent() -> None:
    assert set(SENDER) == set(State) == set(TRANSITIONS)
    for state, table in TRANSITIONS.items():
        for kind, target in table.items():
            assert isinstance(kind, PacketKind) and isinstance(target, State)
        if SENDER[state] is None:
            assert set(table) <= {PacketKind.ERR}, state  # only a refusal, then close
    for state, (with_eof, without_eof) in COUNTED.items():
        assert TRANSITIONS[state] == {PacketKind.COLUMN_DEFINITION: state}
        assert with_eof in TRANSITIONS and without_eof in TRANSITIONS
    for state, kind in RESULT_ENDINGS:
        assert TRANSITIONS[state][kind] is State.IDLE
    # Every reply state is one a server speaks in; commands without a reply have none.
    for command, state in COMMAND_REPLY.items():
        assert state is None or SENDER[state] is Role.SERVER, command
    assert reply_state(Command.QUIT) is None
    assert reply_state(Command.STMT_CLOSE) is None
    assert reply_state(Command.PING) is State.SIMPLE
    assert reply_state(0x99) is State.SIMPLE  # unknown: answered with ERR 1047


@pytest.mark.parametrize(
    ("state", "payload", "capabilities", "kind"),
    [
        (State.RESULT, b"\x00\x00\x00\x02\x00\x00\x00", P41, PacketKind.OK),
        (State.RESULT, b"\xff\x7a\x04#42S02x", P41, PacketKind.ERR),
        (State.RESULT, b"\xfb/tmp/f", P41, PacketKind.LOCAL_INFILE_REQUEST),
        (State.RESULT, b"\x03", P41, PacketKind.COLUMN_COUNT),
        (State.RESULT, b"\xff\xff\xff\x01", Capability.MARIADB_PROGRESS, PacketKind.PROGRESS),
        (State.RESULT, b"\xff\xff\xff\x01", P41, PacketKind.ERR),
        (State.RESULT, b"\xfe\x00\x00\x02\x00", P41, None),
        (State.ROWS, b"\x011", P41, PacketKind.ROW),
        (State.ROWS, b"\x00\x00\x01", P41, PacketKind.ROW),  # a binary row
        (State.ROWS, b"\xfe\x00\x00\x02\x00", P41, PacketKind.EOF),
        (State.ROWS, b"\xfe\x00\x00\x02\x00\x00\x00", P41, PacketKind.OK),
        (State.ROWS, b"\xfe" + b"x" * 0xFFFFFE, P41, PacketKind.ROW),  # a 16 MiB string
        (State.ROWS, b"\xff\x00\x00#HY000x", P41, PacketKind.ERR),
        (State.SIMPLE, b"\xfe\x00\x00\x02\x00", P41, PacketKind.EOF),
        (State.AUTH_RESULT, b"\xfemysql_native_password\x00", P41, PacketKind.AUTH_SWITCH_REQUEST),
        (State.AUTH_RESULT, b"\x01\x03", P41, PacketKind.AUTH_MORE_DATA),
        (State.AUTH_RESULT, b"\x05", P41, None),
        (State.HANDSHAKE_RESPONSE, b"\x00" * 32, P41, PacketKind.SSL_REQUEST),
        (State.HANDSHAKE_RESPONSE, b"\x00" * 31, P41, None),
        (State.INFILE, b"", P41, PacketKind.LOCAL_INFILE_END),
        (State.IDLE, b"", P41, None),
        (State.COLUMNS_EOF, b"\x011", P41, None),
        (State.GREETING, b"\x0a5.5", P41, PacketKind.GREETING),
        (State.CLOSED, b"\x00", P41, None),
    ],
)
def test_classify_looks_at_first_byte_and_length(
    state: State, payload: bytes, capabilities: Capability, kind: PacketKind | None
) -> None:
    assert classify(state, payload, capabilities) is kind


# -- real conversations, both roles ----------------------------------------------------------


def _runs(conversation: dict[str, Any]) -> list[tuple[str, bytes]]:
    runs: list[tuple[str, bytearray]] = []
    for chunk in conversation["chunks"]:
        data = bytes.fromhex(chunk["hex"])
        if runs and runs[-1][0] == chunk["direction"]:
            runs[-1][1].extend(data)
        else:
            runs.append((chunk["direction"], bytearray(data)))
    return [(direction, bytes(data)) for direction, data in runs]


def _payloads(data: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    pos = 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 3], "little")
        out.append((data[pos + 4 : pos + 4 + length], data[pos : pos + 4 + length]))
        pos += 4 + length
    return out


def _drain(conn: Connection, out: list[Event]) -> None:
    while True:
        event = conn.next_event()
        if event is NEED_DATA or event is PAUSED:
            return
        assert isinstance(event, Event)
        out.append(event)


def replay(
    conversation: dict[str, Any], cuts: list[int] | None = None
) -> tuple[Connection, Connection, list[Event], list[Event]]:
    """Replay a recorded connection: the client role sends what the client sent and receives
    what the server sent, the server role the other way round; both must produce the
    recorded bytes exactly."""
    client = Connection(Role.CLIENT)
    server = Connection(Role.SERVER)
    client_events: list[Event] = []
    server_events: list[Event] = []
    for direction, data in _runs(conversation):
        if direction == "server->client":
            for payload, wire in _payloads(data):
                _drain(server, server_events)
                assert server.send(payload) == wire
            for piece in split(data, cuts or []):
                client.receive_data(piece)
                _drain(client, client_events)
        else:
            for payload, wire in _payloads(data):
                assert client.send(payload) == wire
            for piece in split(data, cuts or []):
                server.receive_data(piece)
    _drain(server, server_events)
    return client, server, client_events, server_events


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=[c["name"] for c in CONVERSATIONS])
def test_recorded_conversations_replay_in_both_roles(conversation: dict[str, Any]) -> None:
    client, server, from_server, from_client = replay(conversation)
    assert client.state is State.CLOSED
    assert server.state is State.CLOSED
    assert isinstance(from_server[0], Greeting)
    assert isinstance(from_client[0], ClientHandshake)
    assert isinstance(from_client[-1], CommandEvent) or conversation["name"].endswith(
        ("bad_password", "bad_db")
    )
    # Every reply ends exactly once: one ending event per command that has a reply.
    commands = [e for e in from_client if isinstance(e, CommandEvent)]
    endings = [e for e in from_server[1:] if getattr(e, "ends_reply", False)]
    with_reply = [c for c in commands if reply_state(c.command) is not None]
    login_end = 1
    assert len(endings) == len(with_reply) + login_end, [type(e).__name__ for e in from_server]


def _conversation(name: str) -> dict[str, Any]:
    return next(c for c in CONVERSATIONS if c["name"] == name)


def test_multi_results_are_followed_packet_by_packet() -> None:
    _, _, events, _ = replay(_conversation("pymysql_multi"))
    kinds = [type(e).__name__ for e in events]
    first = kinds.index("CommandEvent") if "CommandEvent" in kinds else None
    assert first is None  # the client role's own commands are not received events
    endings = [(type(e).__name__, e.ends_reply) for e in events if isinstance(e, Ok | Eof)]
    # SELECT 1; SELECT 'x', NULL; DO 1 -> 3 results, then CALL -> 2 results + its OK.
    assert endings[-1] == ("Ok", True)
    more = [
        e for e in events if isinstance(e, Ok | Eof) and e.status & ServerStatus.MORE_RESULTS_EXISTS
    ]
    assert len(more) >= 5
    assert sum(isinstance(e, ColumnCountEvent) for e in events) == 4


def test_cursor_and_prepare_vectors_end_where_the_server_says() -> None:
    for name in ("codec_cursor_eof", "codec_cursor_deprecate_eof"):
        _client, _, events, _ = replay(_conversation(name))
        cursor_end = [
            e for e in events if isinstance(e, Ok | Eof) and e.status & ServerStatus.CURSOR_EXISTS
        ]
        assert cursor_end and all(e.ends_reply for e in cursor_end)
        assert any(isinstance(e, PrepareOkEvent) for e in events)
        params = [e for e in events if isinstance(e, ColumnDefinitionEvent) and e.is_param]
        assert len(params) == 2  # one parameter in each of the two prepared statements


def test_pipelined_prepare_and_execute() -> None:
    """Node's connector sends PREPARE and EXECUTE(-1) back to back; the client role queues
    the second reply, the server role pauses on the buffered EXECUTE until it has replied."""
    client, server, _events, from_client = replay(_conversation("node_mariadb"))
    assert client.statements[0xFFFFFFFF].num_params == 7  # the last successful prepare
    executes = [e for e in from_client if isinstance(e, CommandEvent) and e.command == 0x17]
    assert len(executes) == 3  # the last one answers "unknown statement" (1243)
    assert server.statements == client.statements


@given(st.data())
@FAST
def test_split_invariance(data: st.DataObject) -> None:
    conversation = data.draw(st.sampled_from(CONVERSATIONS))
    cuts = data.draw(st.lists(st.integers(0, 4000), max_size=12))
    whole = replay(conversation)
    pieces = replay(conversation, cuts)
    assert [e for e in pieces[2]] == [e for e in whole[2]]
    assert [e for e in pieces[3]] == [e for e in whole[3]]


# -- scripted exchanges ------------------------------------------------------------------------


def greeting_payload(
    plugin: str = AuthPlugin.NATIVE_PASSWORD.value, caps: Capability = SERVER_CAPS
) -> bytes:
    return encode_initial_handshake(
        InitialHandshake(
            server_version="5.5.5-10.11.19-resmesh",
            connection_id=7,
            auth_plugin_data=SCRAMBLE,
            capabilities=caps,
            auth_plugin_name=plugin,
        )
    )


def response_payload(
    password: bytes = b"pw",
    caps: Capability = SERVER_CAPS,
    plugin: str = AuthPlugin.NATIVE_PASSWORD.value,
) -> bytes:
    reply = (
        auth.native_password_scramble(password, SCRAMBLE)
        if plugin == AuthPlugin.NATIVE_PASSWORD
        else auth.caching_sha2_scramble(password, SCRAMBLE)
    )
    return encode_handshake_response(
        HandshakeResponse(
            capabilities=caps,
            username="app",
            auth_response=reply,
            database="test",
            auth_plugin_name=plugin,
        )
    )


class Pair:
    """A client-role and a server-role connection wired to each other."""

    def __init__(self, **kwargs: Any) -> None:
        self.client = Connection(Role.CLIENT, **kwargs)
        self.server = Connection(Role.SERVER, **kwargs)

    def server_sends(self, *payloads: bytes) -> list[Event]:
        out: list[Event] = []
        for payload in payloads:
            self.client.receive_data(self.server.send(payload))
            _drain(self.client, out)
        return out

    def client_sends(self, *payloads: bytes) -> list[Event]:
        out: list[Event] = []
        for payload in payloads:
            self.server.receive_data(self.client.send(payload))
        _drain(self.server, out)
        return out

    def login(self, caps: Capability = SERVER_CAPS) -> None:
        self.server_sends(greeting_payload(caps=caps))
        [hello] = self.client_sends(response_payload(caps=caps))
        assert isinstance(hello, ClientHandshake)
        stored = auth.native_password_hash(b"pw")
        assert auth.verify_native_password(
            stored, self.server.scramble, hello.response.auth_response
        )
        [ok] = self.server_sends(encode_ok(OkPacket(), P41))
        assert isinstance(ok, Ok) and ok.ends_reply
        assert self.client.state is self.server.state is State.IDLE


def test_server_role_login_and_turns() -> None:
    pair = Pair()
    assert pair.server.next_event() is PAUSED  # the server speaks first
    with pytest.raises(MySQLLocalError):
        pair.client.send(b"\x03SELECT 1")  # not the client's turn
    pair.login()
    assert pair.client.capabilities == SERVER_CAPS
    with pytest.raises(MySQLLocalError):
        pair.server.send(encode_ok(OkPacket(), P41))  # nobody asked
    events = pair.client_sends(b"\x0e")
    assert [type(e) for e in events] == [CommandEvent]
    [ok] = pair.server_sends(encode_ok(OkPacket(status=ServerStatus.IN_TRANS), P41))
    assert isinstance(ok, Ok) and ok.ends_reply
    assert pair.client.in_transaction and pair.server.in_transaction


def test_a_wrong_packet_from_the_peer_is_a_remote_error() -> None:
    pair = Pair()
    pair.login()
    pair.client_sends(b"\x03SELECT 1")
    pair.client.receive_data(frame(b"\x05", 1))
    assert isinstance(pair.client.next_event(), ColumnCountEvent)
    pair.client.receive_data(frame(b"\x011", 9))  # wrong sequence id
    with pytest.raises(MySQLRemoteError) as info:
        pair.client.next_event()
    assert info.value.error.errno == 1156 and info.value.close
    with pytest.raises(RemoteProtocolError):  # final
        pair.client.next_event()
    other = Pair()
    other.login()
    other.client_sends(b"\x03SELECT 1")
    other.client.receive_data(frame(b"\xfe\x00\x00\x02\x00", 1))  # EOF cannot start a reply
    with pytest.raises(MySQLRemoteError) as info:
        other.client.next_event()
    assert info.value.error.errno == 1835


def test_text_result_with_eof_packets() -> None:
    caps = SERVER_CAPS & ~Capability.DEPRECATE_EOF
    pair = Pair()
    pair.login(caps)
    pair.client_sends(b"\x03SELECT a, b")
    column = encode_column_definition(ColumnDefinition(name="a", type=3), caps)
    events = pair.server_sends(
        encode_column_count(ColumnCount(2), caps),
        column,
        column,
        encode_eof(EofPacket()),
        encode_text_row([b"1", None]),
        encode_text_row([None, b"2"]),
        encode_eof(EofPacket(status=ServerStatus.AUTOCOMMIT)),
    )
    assert [type(e) for e in events] == [
        ColumnCountEvent,
        ColumnDefinitionEvent,
        ColumnDefinitionEvent,
        Eof,
        Row,
        Row,
        Eof,
    ]
    assert [getattr(e, "ends_reply", None) for e in events if isinstance(e, Eof)] == [False, True]
    assert pair.client.state is State.IDLE


def test_large_rows_are_joined_with_a_small_chunk() -> None:
    pair = Pair(max_chunk=8)
    pair.login()
    pair.client_sends(b"\x03SELECT big")
    row = encode_text_row([b"\xfe" * 40])
    events = pair.server_sends(
        encode_column_count(ColumnCount(1), SERVER_CAPS),
        encode_column_definition(ColumnDefinition(name="big", type=0xFC), SERVER_CAPS),
        row,
        encode_ok(OkPacket(header=0xFE), SERVER_CAPS),
    )
    assert isinstance(events[2], Row) and events[2].packet.payload == row
    assert events[2].packet.last_seq > events[2].packet.seq
    assert isinstance(events[3], Ok) and events[3].ends_reply


def test_prepare_reply_counts_and_statement_tracking() -> None:
    pair = Pair()
    pair.login()
    pair.client_sends(b"\x16SELECT ?, ?")
    param = encode_column_definition(ColumnDefinition(name="?", type=0xFD), SERVER_CAPS)
    events = pair.server_sends(
        encode_prepare_ok(PrepareOk(statement_id=5, num_columns=1, num_params=2)),
        param,
        param,
        param,
    )
    assert [type(e) for e in events] == [PrepareOkEvent] + [ColumnDefinitionEvent] * 3
    assert [e.is_param for e in events[1:] if isinstance(e, ColumnDefinitionEvent)] == [
        True,
        True,
        False,
    ]
    assert pair.server.state is State.IDLE
    assert pair.server.statements[5].num_params == 2
    pair.client_sends(b"\x19\x05\x00\x00\x00")  # COM_STMT_CLOSE: no reply
    assert 5 not in pair.server.statements and pair.server.state is State.IDLE
    assert 5 not in pair.client.statements


def test_local_infile_exchange() -> None:
    pair = Pair()
    pair.login()
    pair.client_sends(b"\x03LOAD DATA LOCAL INFILE 'f' INTO TABLE t")
    [request] = pair.server_sends(b"\xfbf")
    assert isinstance(request, LocalInfileRequestEvent) and request.filename == b"f"
    events = pair.client_sends(b"1\ta\n", b"")
    assert [type(e) for e in events] == [LocalInfileData, LocalInfileEnd]
    [ok] = pair.server_sends(encode_ok(OkPacket(affected_rows=1), SERVER_CAPS))
    assert isinstance(ok, Ok) and ok.ends_reply and ok.packet.seq == 4


def test_progress_reports_do_not_end_the_reply() -> None:
    pair = Pair()
    pair.login()
    pair.client_sends(b"\x03ALTER TABLE t ENGINE=InnoDB")
    report = encode_progress_report(
        ProgressReport(stage=1, max_stage=2, progress=50000, info=b"copy")
    )
    events = pair.server_sends(report, encode_ok(OkPacket(), SERVER_CAPS))
    assert [type(e) for e in events] == [Progress, Ok]


def test_caching_sha2_fast_and_full_authentication() -> None:
    plugin = AuthPlugin.CACHING_SHA2_PASSWORD.value
    for marker, then in ((b"\x03", "ok"), (b"\x04", "full")):
        pair = Pair()
        pair.server_sends(greeting_payload(plugin))
        [hello] = pair.client_sends(response_payload(plugin=plugin))
        assert isinstance(hello, ClientHandshake)
        assert auth.verify_caching_sha2(
            auth.caching_sha2_hash(b"pw"), SCRAMBLE, hello.response.auth_response
        )
        [more] = pair.server_sends(b"\x01" + marker)
        assert isinstance(more, AuthMoreDataEvent) and more.data == marker
        if then == "full":
            assert pair.client.state is State.AUTH_CLIENT
            [data] = pair.client_sends(b"\x02")  # ask for the public key
            assert isinstance(data, AuthData)
            pair.server_sends(b"\x01-----BEGIN PUBLIC KEY-----...")
            pair.client_sends(b"encrypted")
        else:
            assert pair.client.state is State.AUTH_RESULT  # the server's OK follows
        [ok] = pair.server_sends(encode_ok(OkPacket(), SERVER_CAPS))
        assert isinstance(ok, Ok) and pair.client.state is State.IDLE


def test_auth_switch_and_failed_login() -> None:
    pair = Pair()
    pair.server_sends(greeting_payload())
    pair.client_sends(response_payload(b"wrong"))
    [_switch] = pair.server_sends(b"\xfemysql_native_password\x00" + b"k" * 20 + b"\x00")
    assert pair.client.scramble == b"k" * 20 and pair.client.state is State.AUTH_CLIENT
    pair.client_sends(auth.native_password_scramble(b"wrong", b"k" * 20))
    [err] = pair.server_sends(encode_err(ErrPacket(1045, "28000", "Access denied")))
    assert isinstance(err, Err) and pair.client.state is State.CLOSED


def test_tls_request_refused_with_an_error() -> None:
    pair = Pair()
    pair.server_sends(greeting_payload(caps=SERVER_CAPS | Capability.SSL))
    request = SSLRequest(
        capabilities=SERVER_CAPS | Capability.SSL, max_packet_size=1 << 24, charset=45
    )
    [tls] = pair.client_sends(encode_ssl_request(request))
    assert isinstance(tls, TlsRequest) and pair.server.state is State.TLS
    wire = pair.server.send_fatal_error(packet_too_large())
    assert wire[3] == 2 and wire[4] == 0xFF
    assert pair.server.state is State.CLOSED
    ok = Pair()
    ok.server_sends(greeting_payload(caps=SERVER_CAPS | Capability.SSL))
    ok.client_sends(encode_ssl_request(request))
    ok.server.tls_established()
    ok.client.tls_established()
    [hello] = ok.client_sends(response_payload())
    assert isinstance(hello, ClientHandshake) and hello.packet.seq == 2


def test_over_large_command_answered_with_1153_then_closed() -> None:
    server = Connection(Role.SERVER, max_payload=100)
    server.send(greeting_payload())
    server.receive_data(frame(response_payload(), 1))
    assert isinstance(server.next_event(), ClientHandshake)
    server.send(encode_ok(OkPacket(), SERVER_CAPS))
    server.receive_data(b"\xff\x00\x00\x00")
    with pytest.raises(MySQLRemoteError) as info:
        server.next_event()
    reply = server.send_fatal_error(info.value.error)
    assert reply[4:7] == b"\xff\x81\x04" and b"max_allowed_packet" in reply
    assert reply[3] == 1  # the id after the command's packet, as the client expects
    assert server.state is State.CLOSED


def test_an_over_large_multi_packet_command_is_answered_after_the_packet_that_overflowed() -> None:
    server = Connection(Role.SERVER, max_payload=MAX_CHUNK + 10)
    server.send(greeting_payload())
    server.receive_data(frame(response_payload(), 1))
    assert isinstance(server.next_event(), ClientHandshake)
    server.send(encode_ok(OkPacket(), SERVER_CAPS))
    server.receive_data(frame(b"\x03" + b"x" * (MAX_CHUNK - 1), 0) + b"\x20\x00\x00\x01")
    with pytest.raises(MySQLRemoteError) as info:
        server.next_event()
    assert info.value.error.errno == 1153
    assert server.send_fatal_error(info.value.error)[3] == 2


def test_quit_and_peer_close() -> None:
    pair = Pair()
    pair.login()
    assert pair.client_sends(b"\x01")[0].packet.payload == b"\x01"
    assert pair.client.state is State.CLOSED and pair.server.state is State.CLOSED
    other = Pair()
    other.login()
    other.server.receive_data(b"")
    assert isinstance(other.server.next_event(), ConnectionClosed)
    half = Pair()
    half.login()
    half.server.receive_data(b"\x05\x00")
    half.server.receive_data(b"")
    with pytest.raises(MySQLRemoteError):
        half.server.next_event()


def test_client_pipelining_queues_replies() -> None:
    pair = Pair()
    pair.login()
    wire = pair.client.send(b"\x0e") + pair.client.send(b"\x02test") + pair.client.send(b"\x01")
    assert pair.client.pending_replies == 2
    pair.server.receive_data(wire)
    [ping] = [pair.server.next_event()]
    assert isinstance(ping, CommandEvent) and pair.server.next_event() is PAUSED
    first = pair.server_sends(encode_ok(OkPacket(), SERVER_CAPS))
    assert isinstance(first[0], Ok) and pair.client.state is State.SIMPLE  # the 2nd reply
    assert isinstance(pair.server.next_event(), CommandEvent)
    pair.server_sends(encode_ok(OkPacket(), SERVER_CAPS))
    assert pair.client.state is State.CLOSED  # the queued COM_QUIT
    quit_event = pair.server.next_event()
    assert isinstance(quit_event, CommandEvent) and quit_event.command is Command.QUIT


# -- garbage -----------------------------------------------------------------------------------

_LOGGED_IN = frame(greeting_payload(), 0)


def _feed_client(data: bytes) -> None:
    client = Connection(Role.CLIENT, max_payload=256, max_buffer=1024)
    try:
        for piece in split(data, [5, 17, 64]):
            client.receive_data(piece)
            while True:
                event = client.next_event()
                if event is NEED_DATA or event is PAUSED or isinstance(event, ConnectionClosed):
                    break
                if client.our_turn and client.state is State.HANDSHAKE_RESPONSE:
                    client.send(response_payload())
                elif client.state is State.IDLE:
                    client.send(b"\x03SELECT 1")
            assert client._decoder.buffer.pending <= 1024
    except MySQLRemoteError as exc:
        assert isinstance(exc, RemoteProtocolError)


@given(st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_garbage_into_the_client_role(data: bytes) -> None:
    _feed_client(data)


def _server_stream() -> bytes:
    caps = SERVER_CAPS
    payloads = [
        greeting_payload(),
        encode_ok(OkPacket(), caps),
        encode_column_count(ColumnCount(1), caps),
        encode_column_definition(ColumnDefinition(name="a", type=3), caps),
        encode_text_row([b"1"]),
        encode_ok(OkPacket(header=0xFE, status=ServerStatus.MORE_RESULTS_EXISTS), caps),
        encode_ok(OkPacket(), caps),
    ]
    seqs = [0, 2, 1, 2, 3, 4, 5]
    return b"".join(frame(p, s) for p, s in zip(payloads, seqs, strict=True))


@given(mutation.mutated(_server_stream(), [0x00, 0x01, 0xFB, 0xFE, 0xFF, 0x0A], sizes=False))
@settings(max_examples=200, deadline=None)
def test_mutated_server_streams(data: bytes) -> None:
    _feed_client(data)


@given(st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_garbage_into_the_server_role(data: bytes) -> None:
    server = Connection(Role.SERVER, max_payload=256, max_buffer=1024)
    server.send(greeting_payload())
    try:
        server.receive_data(data)
        for _ in range(50):
            event = server.next_event()
            if event is NEED_DATA or isinstance(event, ConnectionClosed):
                break
            if event is PAUSED:
                if server.state is State.AUTH_RESULT:
                    server.send(encode_ok(OkPacket(), SERVER_CAPS))
                elif server.state is not State.IDLE and server.our_turn:
                    server.send(encode_err(ErrPacket(1047, "08S01", "Unknown command")))
                else:
                    break
        assert server._decoder.buffer.pending <= 1024
    except MySQLRemoteError as exc:
        assert exc.close
