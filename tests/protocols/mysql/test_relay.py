"""The reply scanner (:mod:`resmesh.protocols.mysql.relay`): where a reply ends, its status
flags and its ERR, checked three ways.

- Golden: every reply of the recorded conversations (``protocols/mysql-vectors.json``: text
  and binary result sets, multi-results, cursors, prepares, errors, with and without
  ``CLIENT_DEPRECATE_EOF``) ends where the full codec's client role says, with its status.
- Split invariance: any chunking of a reply stream gives the same end, status and length.
- Differential: generated replies (text/binary rows, DEPRECATE_EOF or not, multi-results,
  ERR mid-result, prepare responses, 16 MiB splits with a small ``max_chunk``) framed by the
  codec's server role and read by its client role: the scanner agrees on every one.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resmesh.protocols.mysql.constants import Capability, Command, ServerStatus
from resmesh.protocols.mysql.errors import MySQLLocalError, MySQLRemoteError
from resmesh.protocols.mysql.events import CommandEvent, Eof, Err, Event, Ok, PrepareOkEvent
from resmesh.protocols.mysql.packets import MAX_CHUNK, PacketDecoder
from resmesh.protocols.mysql.relay import ReplyEnd, ReplyKind, ReplyScanner, scans_reply
from resmesh.protocols.mysql.results import (
    ColumnCount,
    ColumnDefinition,
    EofPacket,
    ErrPacket,
    OkPacket,
    encode_column_count,
    encode_column_definition,
    encode_eof,
    encode_err,
    encode_ok,
    encode_text_row,
)
from resmesh.protocols.mysql.state import State
from resmesh.protocols.mysql.statements import PrepareOk, encode_prepare_ok
from tests.protocols.mysql.mysql_support import CONVERSATIONS, frame, split
from tests.protocols.mysql.test_connection import FAST, SERVER_CAPS, Pair, _drain, replay

DEPRECATE = Capability.DEPRECATE_EOF
WITH_EOF = SERVER_CAPS & ~DEPRECATE
MORE = ServerStatus.MORE_RESULTS_EXISTS


def scan(
    caps: int,
    command: int,
    data: bytes,
    cuts: list[int] | None = None,
    seq: int = 1,
    **kwargs: Any,
) -> tuple[ReplyEnd | None, int]:
    """Scan ``data`` as the reply to ``command``, cut at ``cuts``: its end and the bytes used."""
    scanner = ReplyScanner(caps, **kwargs)
    scanner.start(command, seq)
    used = 0
    for piece in split(data, cuts or []):
        if scanner.end is not None:
            break
        used += scanner.feed(piece)
    return scanner.end, used


# -- golden: the recorded conversations --------------------------------------------------------


def _stream(conversation: dict[str, Any], direction: str) -> bytes:
    return b"".join(
        bytes.fromhex(c["hex"]) for c in conversation["chunks"] if c["direction"] == direction
    )


def _commands(conversation: dict[str, Any]) -> list[bytes]:
    """The client's commands (packets with sequence id 0 after its handshake response)."""
    data = _stream(conversation, "client->server")
    decoder = PacketDecoder(1 << 30, expected_seq=None)
    decoder.feed(data)
    return [p.payload for p in decoder if p.seq == 0]


def _endings(events: list[Event]) -> list[Event]:
    return [e for e in events if getattr(e, "ends_reply", False)]


def _scan_conversation(
    conversation: dict[str, Any], cuts: list[int] | None = None
) -> list[tuple[int, ReplyEnd]]:
    """Scan every reply of a recorded connection after its login: ``(command, end)``."""
    client, _, events, _ = replay(conversation)
    caps = int(client.capabilities)
    stream = _stream(conversation, "server->client")
    login = events.index(_endings(events)[0])  # every packet here is a single-packet payload
    if isinstance(events[login], Err):
        return []  # the login was refused
    offset = sum(4 + len(e.packet.payload) for e in events[: login + 1])
    out = []
    scanner = ReplyScanner(caps)
    for payload in _commands(conversation):
        command = payload[0]
        if command in (Command.QUIT, Command.CHANGE_USER):
            break  # the end, or an authentication exchange (never scanned)
        if not scans_reply(command):
            continue  # no reply
        scanner.start(command, 1)
        rest = stream[offset:]
        for piece in split(rest, cuts or []):
            offset += scanner.feed(piece)
            if scanner.end is not None:
                break
        assert scanner.end is not None, f"no end for command {command:#x}"
        out.append((command, scanner.end))
        if scanner.end.kind is ReplyKind.LOCAL_INFILE:
            break  # the client's turn: the file, then the OK (the gateway refuses this)
    return out


def _expected(conversation: dict[str, Any]) -> list[tuple[str, int | None]]:
    """What the full codec says ended each reply after the login: ``(event, status/errno)``."""
    _, _, events, _ = replay(conversation)
    out: list[tuple[str, int | None]] = []
    endings = _endings(events)
    if isinstance(endings[0], Err):
        return []  # the login was refused
    for event in endings[1:]:
        if isinstance(event, Err):
            out.append(("Err", event.error.errno))
        elif isinstance(event, Ok):
            out.append(("Ok", int(event.ok.status)))
        elif isinstance(event, Eof):
            out.append(("Eof", int(event.eof.status)))
        else:
            out.append((type(event).__name__, None))
    return out


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=[c["name"] for c in CONVERSATIONS])
def test_recorded_replies_end_where_the_codec_says(conversation: dict[str, Any]) -> None:
    scanned = _scan_conversation(conversation)
    expected = _expected(conversation)
    if any(c[0] == Command.CHANGE_USER for c in _commands(conversation)):
        expected = expected[: len(scanned)]  # an authentication exchange ends the scan
    if scanned and scanned[-1][1].kind is ReplyKind.LOCAL_INFILE:
        # The scan stops at the request (the codec's ending is the OK after the file).
        scanned = scanned[:-1]
        expected = expected[: len(scanned)]
    assert len(scanned) == len(expected)
    for (_command, end), (kind, value) in zip(scanned, expected, strict=True):
        if kind == "Err":
            assert end.kind is ReplyKind.ERR and end.error is not None
            assert end.error.errno == value
        elif kind in ("Ok", "Eof"):
            assert end.kind is not ReplyKind.ERR and end.status == value, (kind, end)
        elif kind == "Statistics":
            assert end.kind is ReplyKind.STATISTICS
        else:  # PREPARE_OK without definitions, or the last one under DEPRECATE_EOF
            assert kind in ("PrepareOkEvent", "ColumnDefinitionEvent"), kind
            assert end.kind is ReplyKind.PREPARE_OK and end.statement_id is not None


def test_recorded_multi_results_cursor_and_prepare() -> None:
    by_name = {c["name"]: c for c in CONVERSATIONS}
    multi = _scan_conversation(by_name["pymysql_multi"])
    assert max(end.results for _, end in multi) >= 3
    assert all(not (end.status or 0) & MORE for _, end in multi)
    for name in ("codec_cursor_eof", "codec_cursor_deprecate_eof"):
        ends = _scan_conversation(by_name[name])
        cursors = [e for _, e in ends if (e.status or 0) & ServerStatus.CURSOR_EXISTS]
        assert cursors
        prepares = [e for c, e in ends if c == Command.STMT_PREPARE]
        assert prepares and all(e.kind is ReplyKind.PREPARE_OK for e in prepares)
    infile = _scan_conversation(by_name["pymysql_local_infile"])
    assert infile[-1][1].kind is ReplyKind.LOCAL_INFILE
    binary = _scan_conversation(by_name["mariadb_binary"])
    assert any(c == Command.STMT_EXECUTE and e.kind is ReplyKind.ROWS_END for c, e in binary)


@given(st.data())
@FAST
def test_recorded_replies_split_anywhere(data: st.DataObject) -> None:
    conversation = data.draw(st.sampled_from(CONVERSATIONS))
    cuts = data.draw(st.lists(st.integers(0, 4000), max_size=16))
    assert _scan_conversation(conversation, cuts) == _scan_conversation(conversation)


# -- differential: generated replies ----------------------------------------------------------

_STATUS = st.sampled_from(
    [
        ServerStatus.AUTOCOMMIT,
        ServerStatus.IN_TRANS,
        ServerStatus.AUTOCOMMIT | ServerStatus.IN_TRANS,
        ServerStatus(0),
    ]
)
_TEXT_ROW = st.lists(st.none() | st.binary(max_size=300), min_size=1, max_size=3).map(
    encode_text_row
)
_BINARY_ROW = st.binary(max_size=40).map(lambda body: b"\x00" + body)


@st.composite
def result_replies(draw: st.DrawFn, caps: int, binary: bool) -> list[bytes]:
    """A COM_QUERY / COM_STMT_EXECUTE reply: OKs and result sets, more results on all but
    the last, an ERR possibly ending it mid-result."""
    deprecate = caps & DEPRECATE
    results = draw(st.integers(1, 3))
    payloads: list[bytes] = []
    for index in range(results):
        last = index == results - 1
        status = draw(_STATUS) | (ServerStatus(0) if last else MORE)
        kind = draw(st.sampled_from(["ok", "rows", "err"] if last else ["ok", "rows"]))
        if kind == "ok":
            info = draw(st.binary(max_size=20))
            payloads.append(encode_ok(OkPacket(status=status, affected_rows=3, info=info), caps))
            continue
        if kind == "err":
            payloads.append(
                encode_err(ErrPacket(draw(st.sampled_from([1064, 1040])), "42000", "x"))
            )
            continue
        columns = draw(st.integers(1, 4))
        payloads.append(encode_column_count(ColumnCount(columns), caps))
        payloads += [
            encode_column_definition(ColumnDefinition(name=f"c{i}" * 3, type=3), caps)
            for i in range(columns)
        ]
        if not deprecate:
            payloads.append(encode_eof(EofPacket(status=draw(_STATUS))))
        payloads += draw(st.lists(_BINARY_ROW if binary else _TEXT_ROW, max_size=5))
        if last and draw(st.booleans()):
            payloads.append(encode_err(ErrPacket(1317, "70100", "Query execution was interrupted")))
        elif deprecate:
            payloads.append(encode_ok(OkPacket(header=0xFE, status=status), caps))
        else:
            payloads.append(encode_eof(EofPacket(status=status)))
    return payloads


@st.composite
def prepare_replies(draw: st.DrawFn, caps: int) -> list[bytes]:
    if draw(st.booleans()):
        return [encode_err(ErrPacket(1146, "42S02", "Table 'd.t' doesn't exist"))]
    params = draw(st.integers(0, 3))
    columns = draw(st.integers(0, 3))
    ok = PrepareOk(statement_id=draw(st.integers(1, 1000)), num_columns=columns, num_params=params)
    payloads = [encode_prepare_ok(ok)]
    for count in (params, columns):
        if count:
            payloads += [
                encode_column_definition(ColumnDefinition(name="?", type=253), caps)
            ] * count
            if not caps & DEPRECATE:
                payloads.append(encode_eof(EofPacket(status=draw(_STATUS))))
    return payloads


def _differential(
    caps: Capability, command: bytes, payloads: list[bytes], cuts: list[int], max_chunk: int
) -> None:
    pair = Pair(max_chunk=max_chunk)
    pair.login(caps)
    pair.client_sends(command)
    wire = b"".join(pair.server.send(p) for p in payloads)  # the server role checks the shape
    events: list[Event] = []
    pair.client.receive_data(wire)
    _drain(pair.client, events)
    assert events[-1].ends_reply  # type: ignore[attr-defined]
    seq = len(command) // max_chunk + 1  # the command's packets, then the reply's
    end, used = scan(
        int(pair.client.capabilities), command[0], wire, cuts, seq=seq, max_chunk=max_chunk
    )
    assert end is not None and used == len(wire)
    last = events[-1]
    if isinstance(last, Err):
        assert end.kind is ReplyKind.ERR and end.error == last.error
    else:
        assert end.kind is not ReplyKind.ERR
    # The status the codec is left with is the scanner's (an ERR leaves the last one).
    if end.status is not None:
        assert end.status == int(pair.client.status)
    if isinstance(events[0], PrepareOkEvent):
        assert end.statement_id == events[0].prepare.statement_id
    assert end.last_seq == (command_seq_after(wire) - 1) & 0xFF


def command_seq_after(wire: bytes) -> int:
    """The sequence id after the last packet of ``wire``."""
    decoder = PacketDecoder(1 << 30, max_chunk=MAX_CHUNK, expected_seq=None)
    decoder.feed(wire)
    last = -1
    pos = 0
    while pos < len(wire):
        length = int.from_bytes(wire[pos : pos + 3], "little")
        last = wire[pos + 3]
        pos += 4 + length
    return last + 1


_CAPS = st.sampled_from([SERVER_CAPS, WITH_EOF])
_CHUNK = st.sampled_from([MAX_CHUNK, 8, 13])
_CUTS = st.lists(st.integers(0, 3000), max_size=10)


@given(_CAPS, st.booleans(), _CHUNK, _CUTS, st.data())
@FAST
def test_generated_results_agree_with_the_codec(
    caps: Capability, binary: bool, max_chunk: int, cuts: list[int], data: st.DataObject
) -> None:
    payloads = data.draw(result_replies(int(caps), binary))
    command = b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00" if binary else b"\x03SELECT 1; DO 2"
    _differential(caps, command, payloads, cuts, max_chunk)


@given(_CAPS, _CHUNK, _CUTS, st.data())
@FAST
def test_generated_prepares_agree_with_the_codec(
    caps: Capability, max_chunk: int, cuts: list[int], data: st.DataObject
) -> None:
    payloads = data.draw(prepare_replies(int(caps)))
    _differential(caps, b"\x16SELECT ?", payloads, cuts, max_chunk)


@given(_CAPS, _CUTS, st.data())
@FAST
def test_simple_replies_agree_with_the_codec(
    caps: Capability, cuts: list[int], data: st.DataObject
) -> None:
    status = data.draw(_STATUS)
    payload = data.draw(
        st.sampled_from(
            [
                encode_ok(OkPacket(status=status), int(caps)),
                encode_err(ErrPacket(1049, "42000", "Unknown database 'nope'")),
                encode_eof(EofPacket(status=status)),
            ]
        )
    )
    _differential(caps, b"\x02nope", [payload], cuts, MAX_CHUNK)


# -- scripted cases ---------------------------------------------------------------------------


def test_a_point_select_is_scanned_to_its_last_byte_and_no_further() -> None:
    caps = int(SERVER_CAPS)
    reply = (
        frame(b"\x01", 1)
        + frame(encode_column_definition(ColumnDefinition(name="c", type=3), caps), 2)
        + frame(encode_text_row([b"42"]), 3)
        + frame(encode_ok(OkPacket(header=0xFE, status=ServerStatus.IN_TRANS), caps), 4)
    )
    scanner = ReplyScanner(caps)
    scanner.start(Command.QUERY, 1)
    assert scanner.feed(reply + b"\x07\x00\x00\x00junk") == len(reply)
    end = scanner.end
    assert end is not None and end.kind is ReplyKind.ROWS_END
    assert end.status == ServerStatus.IN_TRANS and end.last_seq == 4 and end.results == 1
    assert scanner.feed(b"more") == 0  # ended: nothing more is taken


def test_a_split_row_starting_with_0xfe_is_a_row() -> None:
    """A payload of 16 MiB or more is a row even when it starts with 0xFE (a string that
    long has the 0xFE length prefix); its continuation packets are skipped with it."""
    caps = int(SERVER_CAPS)
    big = b"\xfe" + bytes(MAX_CHUNK - 1)
    reply = (
        frame(b"\x01", 1)
        + frame(encode_column_definition(ColumnDefinition(name="b", type=0xFB), caps), 2)
        + len(big).to_bytes(3, "little")
        + b"\x03"
        + big
        + frame(b"\xfe" + bytes(9), 4)  # the continuation: 10 more bytes of the same row
        + frame(encode_ok(OkPacket(header=0xFE), caps), 5)
    )
    end, used = scan(caps, Command.QUERY, reply, [5, 70000, 9_000_000, MAX_CHUNK + 9])
    assert end is not None and end.kind is ReplyKind.ROWS_END and used == len(reply)
    assert end.last_seq == 5


def test_out_of_order_and_malformed_replies_are_remote_errors() -> None:
    caps = int(SERVER_CAPS)
    scanner = ReplyScanner(caps)
    scanner.start(Command.QUERY, 1)
    with pytest.raises(MySQLRemoteError) as info:
        scanner.feed(frame(b"\x01", 2))
    assert info.value.error.errno == 1156
    scanner.start(Command.QUERY, 1)
    with pytest.raises(MySQLRemoteError) as info:
        scanner.feed(frame(b"\xfe\x00\x00\x02\x00", 1))  # an EOF cannot start a reply
    assert info.value.error.errno == 1835
    scanner.start(Command.PING, 1)
    with pytest.raises(MySQLRemoteError):
        scanner.feed(frame(b"\x05", 1))
    with pytest.raises(ValueError):
        scanner.start(Command.CHANGE_USER, 1)
    assert not scans_reply(Command.STMT_CLOSE) and scans_reply(Command.STMT_EXECUTE)


def test_a_fetch_reads_rows_only_and_statistics_one_string() -> None:
    caps = int(WITH_EOF)
    rows = frame(b"\x00\x00\x01", 1) + frame(
        encode_eof(EofPacket(status=ServerStatus.LAST_ROW_SENT)), 2
    )
    end, used = scan(caps, Command.STMT_FETCH, rows)
    assert end is not None and end.status == ServerStatus.LAST_ROW_SENT and used == len(rows)
    stats = frame(b"Uptime: 5  Threads: 1", 1)
    end, _ = scan(caps, Command.STATISTICS, stats, [3])
    assert end is not None and end.kind is ReplyKind.STATISTICS


def test_progress_reports_are_skipped_when_negotiated() -> None:
    caps = int(SERVER_CAPS)
    progress = frame(b"\xff\xff\xff\x01\x01\x02\x00\x10\x00\x04copy", 1)
    ok = frame(encode_ok(OkPacket(), caps), 2)
    end, used = scan(caps, Command.QUERY, progress + ok)
    assert end is not None and end.kind is ReplyKind.OK and used == len(progress + ok)
    end, _ = scan(caps & ~Capability.MARIADB_PROGRESS, Command.QUERY, progress + ok)
    assert end is not None and end.kind is ReplyKind.ERR and end.error is not None
    assert end.error.errno == 0xFFFF


def test_a_large_result_is_never_held() -> None:
    """Rows pass by length: what the scanner carries between chunks stays a header's size."""
    caps = int(SERVER_CAPS)
    scanner = ReplyScanner(caps)
    scanner.start(Command.QUERY, 1)
    scanner.feed(
        frame(b"\x01", 1)
        + frame(encode_column_definition(ColumnDefinition(name="c", type=252), caps), 2)
    )
    row = encode_text_row([b"x" * 60000])
    seq = 3
    for _ in range(50):
        packet = frame(row, seq & 0xFF)
        seq += 1
        for piece in split(packet, [1, 2, 3, 5, 30000]):
            assert scanner.feed(piece) == len(piece)
            assert scanner.carried <= 4
    assert scanner.end is None
    assert scanner.feed(frame(encode_ok(OkPacket(header=0xFE), caps), seq & 0xFF)) > 0
    assert scanner.end is not None


def test_the_client_facing_codec_is_told_a_reply_went_out_raw() -> None:
    """``Connection.reply_relayed``: the server role is idle again with the relayed status,
    and takes the client's next command."""
    pair = Pair()
    pair.login()
    [event] = pair.client_sends(b"\x03BEGIN")
    assert isinstance(event, CommandEvent)
    pair.server.reply_relayed(int(ServerStatus.IN_TRANS | ServerStatus.AUTOCOMMIT))
    assert pair.server.state is State.IDLE and pair.server.in_transaction
    with pytest.raises(MySQLLocalError):
        pair.server.reply_relayed(None)  # no reply in progress
    pair.server.receive_data(frame(b"\x0e", 0))
    assert isinstance(pair.server.next_event(), CommandEvent)
    pair.server.reply_relayed(None)  # an ERR: the status stays
    assert pair.server.in_transaction


def test_the_scanner_keeps_the_last_insert_id_its_oks_carried() -> None:
    """What the connection's LAST_INSERT_ID() says: an OK's non-zero insert id, kept through
    statements that generate none."""
    caps = int(SERVER_CAPS)
    scanner = ReplyScanner(caps)
    for insert_id, expected in ((0, 0), (42, 42), (0, 42), (43, 43)):
        scanner.start(Command.QUERY)
        ok = encode_ok(OkPacket(last_insert_id=insert_id, status=ServerStatus.AUTOCOMMIT), caps)
        scanner.feed(frame(ok, 1))
        assert scanner.end is not None and scanner.end.kind is ReplyKind.OK
        assert scanner.last_insert_id == expected
