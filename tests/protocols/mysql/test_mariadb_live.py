"""The codec against a real MariaDB on 127.0.0.1:3306 (root with an empty password, database
``test``), through a plain blocking socket: a password login that exercises the
mysql_native_password scramble, a wrong password, result sets in both EOF forms, prepared
statements with a cursor, multi-results, and the server's 1153 for an over-large packet.

Skipped when no MariaDB listens there. The test account ``codec_test``/``pw`` is created if it
does not exist (``CREATE USER IF NOT EXISTS``), with rights on ``test`` only.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from resmesh.protocols.mysql.binary import decode_binary_row
from resmesh.protocols.mysql.constants import Capability, ColumnType, CursorFlag, ServerStatus
from resmesh.protocols.mysql.events import (
    ColumnCountEvent,
    ColumnDefinitionEvent,
    Eof,
    Err,
    Ok,
    PrepareOkEvent,
    Row,
)
from resmesh.protocols.mysql.results import decode_column_definition, decode_text_row
from resmesh.protocols.mysql.statements import (
    ParamType,
    StmtClose,
    StmtExecute,
    StmtFetch,
    StmtPrepare,
    encode_stmt_close,
    encode_stmt_execute,
    encode_stmt_fetch,
    encode_stmt_prepare,
)
from tests.protocols.mysql.blocking_client import CLIENT_CAPABILITIES, BlockingClient, connect

HOST = "127.0.0.1"
PORT = 3306

pytestmark = pytest.mark.integration


def _reachable() -> bool:
    try:
        with socket.create_connection((HOST, PORT), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def account() -> Iterator[None]:
    if not _reachable():
        pytest.fail(
            f"no MariaDB on {HOST}:{PORT}: install it (apt-get install mariadb-server) and "
            "start it (start-stop-daemon --start --background --exec /usr/sbin/mariadbd), "
            "with user root and an empty password"
        )
    root = connect(HOST, PORT, "root", "", "test")
    if not isinstance(root.login[-1], Ok):
        pytest.fail(f"cannot log in to MariaDB as root with an empty password: {root.login[-1]}")
    for sql in (
        "CREATE USER IF NOT EXISTS 'codec_test'@'%' IDENTIFIED BY 'pw'",
        "CREATE USER IF NOT EXISTS 'codec_test'@'localhost' IDENTIFIED BY 'pw'",
        "GRANT ALL ON test.* TO 'codec_test'@'%'",
        "GRANT ALL ON test.* TO 'codec_test'@'localhost'",
    ):
        [reply] = root.command(b"\x03" + sql.encode())
        assert isinstance(reply, Ok), reply
    root.command(b"\x01")
    root.close()
    yield


def query(client: BlockingClient, sql: str) -> list[object]:
    return list(client.command(b"\x03" + sql.encode()))


@pytest.mark.parametrize(
    "capabilities",
    [CLIENT_CAPABILITIES, CLIENT_CAPABILITIES & ~Capability.DEPRECATE_EOF],
    ids=["deprecate-eof", "eof"],
)
def test_password_login_and_a_text_result(account: None, capabilities: Capability) -> None:
    client = connect(HOST, PORT, "codec_test", "pw", "test", capabilities=capabilities)
    try:
        assert isinstance(client.login[-1], Ok)
        assert client.greeting.handshake.is_mariadb
        events = query(client, "SELECT 1 AS n, 'x' AS s, NULL AS z, CAST(2.5 AS DECIMAL(4,2))")
        caps = int(client.conn.capabilities)
        count = events[0]
        assert isinstance(count, ColumnCountEvent) and count.column_count.count == 4
        columns = [
            decode_column_definition(e.packet.payload, caps)
            for e in events
            if isinstance(e, ColumnDefinitionEvent)
        ]
        assert [c.name for c in columns] == ["n", "s", "z", "CAST(2.5 AS DECIMAL(4,2))"]
        [row] = [e for e in events if isinstance(e, Row)]
        assert decode_text_row(row.packet.payload, 4) == (b"1", b"x", None, b"2.50")
        end = events[-1]
        assert isinstance(end, Ok if capabilities & Capability.DEPRECATE_EOF else Eof)
        assert end.ends_reply
        [err] = query(client, "SELECT * FROM no_such_table_here")
        assert isinstance(err, Err) and err.error.errno == 1146
        assert client.command(b"\x01") == []
    finally:
        client.close()


def test_wrong_password_is_1045(account: None) -> None:
    client = connect(HOST, PORT, "codec_test", "not-the-password", "test")
    try:
        err = client.login[-1]
        assert isinstance(err, Err)
        assert (err.error.errno, err.error.sqlstate) == (1045, "28000")
        assert "codec_test" in err.error.message and "(using password: YES)" in err.error.message
    finally:
        client.close()


def test_transaction_status_and_multi_results(account: None) -> None:
    client = connect(HOST, PORT, "codec_test", "pw", "test")
    try:
        [ok] = query(client, "START TRANSACTION")
        assert isinstance(ok, Ok) and client.conn.in_transaction
        events = query(client, "SELECT 1; SELECT 2, 3; DO 0")
        assert sum(isinstance(e, ColumnCountEvent) for e in events) == 2
        ends = [e for e in events if isinstance(e, Ok | Eof)]
        assert [e.ends_reply for e in ends] == [False, False, True]
        assert ends[0].status & ServerStatus.MORE_RESULTS_EXISTS
        [ok] = query(client, "ROLLBACK")
        assert isinstance(ok, Ok) and not client.conn.in_transaction
    finally:
        client.close()


@pytest.mark.parametrize(
    "capabilities",
    [CLIENT_CAPABILITIES, CLIENT_CAPABILITIES & ~Capability.DEPRECATE_EOF],
    ids=["deprecate-eof", "eof"],
)
def test_prepared_statement_with_a_cursor(account: None, capabilities: Capability) -> None:
    client = connect(HOST, PORT, "codec_test", "pw", "test", capabilities=capabilities)
    try:
        prepared = client.command(
            encode_stmt_prepare(
                StmtPrepare(b"SELECT seq, seq * 1.5 FROM seq_1_to_5 WHERE seq >= ?")
            )
        )
        first = prepared[0]
        if isinstance(first, Err):  # the SEQUENCE engine is not loaded
            pytest.fail(f"the SEQUENCE engine is not available: {first.error.message}")
        assert isinstance(first, PrepareOkEvent)
        statement = first.prepare.statement_id
        assert client.conn.statements[statement].num_params == 1
        execute = StmtExecute(
            statement_id=statement,
            flags=CursorFlag.READ_ONLY,
            values=(2,),
            param_types=(ParamType(ColumnType.LONGLONG),),
        )
        opened = client.command(encode_stmt_execute(execute))
        assert opened[-1].status & ServerStatus.CURSOR_EXISTS  # type: ignore[union-attr]
        columns = [
            decode_column_definition(e.packet.payload, int(client.conn.capabilities))
            for e in opened
            if isinstance(e, ColumnDefinitionEvent)
        ]
        kinds = [(c.type, c.unsigned) for c in columns]
        rows = []
        for _ in range(5):
            fetched = client.command(encode_stmt_fetch(StmtFetch(statement, 2)))
            rows += [
                decode_binary_row(e.packet.payload, kinds) for e in fetched if isinstance(e, Row)
            ]
            if fetched[-1].status & ServerStatus.LAST_ROW_SENT:  # type: ignore[union-attr]
                break
        assert [row[0] for row in rows] == [2, 3, 4, 5]
        assert rows[0][1] == b"3.0"
        assert client.command(encode_stmt_close(StmtClose(statement))) == []
        [ok] = client.command(b"\x0e")
        assert isinstance(ok, Ok)
    finally:
        client.close()


def test_server_refuses_a_packet_over_max_allowed_packet(account: None) -> None:
    """MariaDB's own 1153 comes back through the codec's framing (a 17 MiB query is split into
    two packets on the way out)."""
    client = connect(HOST, PORT, "codec_test", "pw", "test")
    try:
        events = query(client, "SELECT @@max_allowed_packet")
        [row] = [e for e in events if isinstance(e, Row)]
        limit = int(decode_text_row(row.packet.payload, 1)[0] or b"0")
        if limit > 32 * 1024 * 1024:
            pytest.fail(
                f"max_allowed_packet is {limit} bytes: run the tests on a MariaDB with its "
                "default (16 MiB) or at most 32 MiB"
            )
        big = b"\x03SELECT '" + b"x" * (limit + 16) + b"'"
        events = client.command(big)
        err = events[0]
        assert isinstance(err, Err), events
        assert (err.error.errno, err.error.sqlstate) == (1153, "08S01")
        assert err.error.message == "Got a packet bigger than 'max_allowed_packet' bytes"
    finally:
        client.close()
