"""Volume through the MySQL gateway, against the real MariaDB on 127.0.0.1:3306 (root, empty
password, database ``test``): a 1,000,000-row result streamed with the gateway's memory bounded,
a 20 MB BLOB (packets split over 16 MiB both ways) written and read back, and errors (1062,
1146, 1064) passed through with the errno, SQLSTATE and message MariaDB gives directly.

MariaDB must be running: the tests fail, never skip, if it is not.
"""

from __future__ import annotations

import hashlib
import random
import socket
import struct
import time
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import mysql.connector
import mysql.connector.errors
import pymysql
import pymysql.cursors
import pytest

from fuzz.fuzz_mysql_listener import (
    frame,
    handshake_response,
    native_scramble,
    parse_greeting,
    split_packets,
)
from tests.support.servers import Gateway, free_port, vm_rss_kib

MARIADB_PORT = 3306
CLUSTER = "user-db"
#: What the gateway and the node accept from a client here: room for the 20 MB BLOB.
BIG_PACKET = 64 * 1024 * 1024
#: Growth of the gateway's resident memory allowed while the 1M-row result is in flight.
STREAM_RSS_SLACK_KIB = 30 * 1024
ROWS = 1_000_000


def mysql_config(**mysql: Any) -> dict[str, Any]:
    """The brief's gateway: one MySQL cluster in front of the local MariaDB (backend root with
    an empty password), user ``app``/``app``."""
    cluster: dict[str, Any] = {
        "protocol": "mysql",
        "listen": f"127.0.0.1:{free_port()}",
        "groups": {"dc-a": [f"127.0.0.1:{MARIADB_PORT}"]},
        "backend": {"username": "root", "password": "", "command_timeout": "30s"},
    }
    if mysql:
        cluster["mysql"] = mysql
    return {
        "gateway": {"drain_timeout": "5s"},
        "users": {"app": {"password": "app", "clusters": [CLUSTER]}},
        "clusters": {CLUSTER: cluster},
    }


def direct(**kwargs: Any) -> pymysql.Connection[Any]:
    try:
        return pymysql.connect(
            host="127.0.0.1",
            port=MARIADB_PORT,
            user="root",
            password="",
            database="test",
            connect_timeout=5,
            read_timeout=60,
            write_timeout=60,
            **kwargs,
        )
    except pymysql.err.OperationalError as exc:
        pytest.fail(f"MariaDB is not running on 127.0.0.1:{MARIADB_PORT} (root, test): {exc}")


def via(gateway: Gateway, **kwargs: Any) -> pymysql.Connection[Any]:
    return pymysql.connect(
        host="127.0.0.1",
        port=gateway.port,
        user="app",
        password="app",
        database="test",
        connect_timeout=5,
        read_timeout=60,
        write_timeout=60,
        **kwargs,
    )


@pytest.fixture(scope="module")
def node_packet_limit() -> Iterator[None]:
    """The node's ``max_allowed_packet`` raised to 64 MiB for the module (restored after):
    connections opened from now on take it, so the gateway starts after this."""
    with direct(autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT @@GLOBAL.max_allowed_packet")
        (before,) = cur.fetchone()
        cur.execute(f"SET GLOBAL max_allowed_packet = {BIG_PACKET}")
    try:
        yield
    finally:
        with direct(autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(f"SET GLOBAL max_allowed_packet = {int(before)}")


@pytest.fixture(scope="module")
def gw(node_packet_limit: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(
        mysql_config(max_allowed_packet=f"{BIG_PACKET // (1024 * 1024)}MiB"),
        tmp_path_factory.mktemp("gw"),
    )
    yield gateway
    code = gateway.terminate()
    log = gateway.log()
    assert code == 0, log
    assert "unexpected error" not in log and "Traceback" not in log, log


@pytest.fixture
def table() -> Iterator[str]:
    """A table name unique to the test, dropped after it (directly, whatever happened)."""
    name = f"vol_{uuid.uuid4().hex[:12]}"
    yield name
    with direct(autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {name}")


def test_a_million_rows_stream_with_the_gateways_memory_bounded(gw: Gateway) -> None:
    sql = f"SELECT seq, MD5(seq) FROM seq_1_to_{ROWS}"
    with direct() as conn, conn.cursor() as cur:
        cur.execute(
            f"SELECT COUNT(*), SUM(seq), BIT_XOR(CRC32(CONCAT(seq, ':', MD5(seq)))) "
            f"FROM seq_1_to_{ROWS}"
        )
        want_count, want_sum, want_crc = cur.fetchone()
    assert (want_count, int(want_sum)) == (ROWS, ROWS * (ROWS + 1) // 2)

    pid = gw.proc.pid
    with via(gw, cursorclass=pymysql.cursors.SSCursor) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")  # the session and its backend connection are up
        assert list(cur.fetchall()) == [(1,)]
        before = vm_rss_kib(pid)
        cur.execute(sql)
        count = total = crc = 0
        peak = before

        def take(row: tuple[int, str]) -> None:
            nonlocal count, total, crc
            seq, digest = row
            count += 1
            assert seq == count
            assert digest == hashlib.md5(str(seq).encode()).hexdigest()
            total += seq
            crc ^= zlib.crc32(f"{seq}:{digest}".encode())

        # Slowly at first: a handful of rows, then nothing read for two seconds while the node
        # has ~45 MB more to send. A gateway that reads the node ahead of the client would
        # buffer it all now; the RSS is sampled throughout.
        for _ in range(10):
            take(cur.fetchone())
        slow_until = time.monotonic() + 2.0
        while time.monotonic() < slow_until:
            peak = max(peak, vm_rss_kib(pid))
            take(cur.fetchone())
            time.sleep(0.05)  # the slow reader's pace (not a synchronization)
        # Then as fast as the client goes.
        for row in cur:
            take(row)
            if count % 50_000 == 0:
                peak = max(peak, vm_rss_kib(pid))
        peak = max(peak, vm_rss_kib(pid))
        cur.execute("SELECT 2")  # the session is still good after the stream
        assert list(cur.fetchall()) == [(2,)]
    assert (count, total, crc) == (want_count, int(want_sum), int(want_crc))
    assert peak - before < STREAM_RSS_SLACK_KIB, (
        f"the gateway's RSS grew by {peak - before} KiB (from {before} KiB) while the "
        f"{ROWS}-row result was in flight; allowed {STREAM_RSS_SLACK_KIB} KiB"
    )


def test_a_20_mb_blob_round_trips_in_packets_over_16_mib(gw: Gateway, table: str) -> None:
    # Random bytes: PyMySQL escapes a few of them, so the INSERT is a ~20.5 MB COM_QUERY (two
    # packets, the first 0xFFFFFF bytes); the row read back is one ~20 MB packet split too.
    blob = random.Random(20).randbytes(20_000_000)
    assert len(blob) == 20_000_000 > 16 * 1024 * 1024
    options = {"max_allowed_packet": BIG_PACKET, "autocommit": True}
    with via(gw, **options) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, b LONGBLOB)")
        cur.execute(f"INSERT INTO {table} VALUES (1, %s)", (blob,))
        assert cur.rowcount == 1
        cur.execute(f"SELECT b, LENGTH(b), SHA2(b, 256) FROM {table} WHERE id = 1")
        value, length, digest = cur.fetchone()
        assert length == len(blob)
        assert digest == hashlib.sha256(blob).hexdigest()
        assert value == blob
        cur.execute("SELECT 3")  # the session goes on after both big packets
        assert cur.fetchone() == (3,)
    with direct() as conn, conn.cursor() as cur:  # what the node stored
        cur.execute(f"SELECT SHA2(b, 256) FROM {table} WHERE id = 1")
        assert cur.fetchone() == (hashlib.sha256(blob).hexdigest(),)


def _errors_of(connect: Any, table: str) -> list[tuple[int, str | None, str]]:
    """(errno, SQLSTATE, message) of a duplicate key, a missing table and a syntax error,
    through mysql-connector-python (pure), which keeps the SQLSTATE."""
    conn = connect()
    got: list[tuple[int, str | None, str]] = []
    try:
        cur = conn.cursor()
        for sql in (
            f"INSERT INTO {table} (id, sku) VALUES (2, 'dup')",
            f"SELECT * FROM {table}_missing",
            "SELEKT 1 FROM dual",
            f"INSERT INTO {table} (id, sku) VALUES (1, 'a'",
        ):
            with pytest.raises(mysql.connector.errors.Error) as failed:
                cur.execute(sql)
                cur.fetchall()
            got.append((failed.value.errno, failed.value.sqlstate, failed.value.msg))
        cur.execute("SELECT 4")  # the session goes on after each error
        assert cur.fetchall() == [(4,)]
        cur.close()
    finally:
        conn.close()
    return got


def test_errno_sqlstate_and_message_are_mariadbs(gw: Gateway, table: str) -> None:
    with direct(autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, sku VARCHAR(8) UNIQUE)")
        cur.execute(f"INSERT INTO {table} VALUES (1, 'dup')")

    def connector(port: int, user: str, password: str) -> Any:
        return lambda: mysql.connector.connect(
            host="127.0.0.1",
            port=port,
            user=user,
            password=password,
            database="test",
            use_pure=True,
            autocommit=True,
            connection_timeout=10,
        )

    want = _errors_of(connector(MARIADB_PORT, "root", ""), table)
    got = _errors_of(connector(gw.port, "app", "app"), table)
    assert [(errno, state) for errno, state, _ in want] == [
        (1062, "23000"),
        (1146, "42S02"),
        (1064, "42000"),
        (1064, "42000"),
    ]
    assert got == want

    # PyMySQL too: the same exception classes and (errno, message).
    def pymysql_errors(conn: pymysql.Connection[Any]) -> list[tuple[type, tuple[Any, ...]]]:
        seen = []
        with conn, conn.cursor() as cur:
            for sql in (f"INSERT INTO {table} VALUES (2, 'dup')", "SELECT * FROM nope_x1"):
                with pytest.raises(pymysql.err.MySQLError) as failed:
                    cur.execute(sql)
                seen.append((type(failed.value), failed.value.args))
        return seen

    assert pymysql_errors(via(gw)) == pymysql_errors(direct())


# -- split packets on a raw socket: a continuation misnumbered, or cut short -----------------


def _raw_login(port: int, user: str, password: str) -> socket.socket:
    """A raw client logged in (mysql_native_password, database ``test``)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    buf = bytearray()
    (_, greeting), buf = _read_packet(sock, buf)
    auth = native_scramble(password.encode(), parse_greeting(greeting))
    sock.sendall(frame(handshake_response(auth, user=user, database="test"), 1))
    (seq, ok), buf = _read_packet(sock, buf)
    assert (seq, ok[:1]) == (2, b"\x00"), ok
    assert not buf
    return sock


def _read_packet(sock: socket.socket, buf: bytearray) -> tuple[tuple[int, bytes], bytearray]:
    while True:
        packets, _ = split_packets(buf)
        if packets:
            seq, payload = packets[0]
            return (seq, payload), buf[4 + len(payload) :]
        data = sock.recv(1 << 16)  # the socket's timeout is the deadline
        assert data, f"closed while a packet was owed; got {bytes(buf[:200])!r}"
        buf += data


def _until_closed(sock: socket.socket) -> bytes:
    received = bytearray()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            data = sock.recv(1 << 16)
        except ConnectionResetError:
            data = b""
        if not data:
            return bytes(received)
        received += data
    raise AssertionError(f"not closed within 30 s; got {bytes(received[:200])!r}")


def _split_query() -> tuple[bytes, bytes]:
    """A COM_QUERY of 17,000,000 bytes: its first packet (0xFFFFFF bytes, sequence id 0) and
    the rest of its payload."""
    payload = b"\x03SELECT LENGTH('" + b"z" * (17_000_000 - 18) + b"')"
    return b"\xff\xff\xff\x00" + payload[:0xFFFFFF], payload[0xFFFFFF:]


def test_a_split_command_with_a_misnumbered_continuation_is_refused_like_mariadb(
    gw: Gateway,
) -> None:
    first, rest = _split_query()
    answers = {}
    for name, port, user, password in (
        ("direct", MARIADB_PORT, "root", ""),
        ("gateway", gw.port, "app", "app"),
    ):
        sock = _raw_login(port, user, password)
        with sock:
            # The whole command, numbered right, works on both.
            sock.sendall(first + struct.pack("<I", len(rest))[:3] + b"\x01" + rest)
            buf = bytearray()
            packets = []
            while len(packets) < 5:  # column count, column, EOF, row, EOF
                packet, buf = _read_packet(sock, buf)
                packets.append(packet)
            # Numbered on from the command's two packets (0, 1): 2..6.
            assert [seq for seq, _ in packets] == [2, 3, 4, 5, 6], packets
            assert packets[3][1] == b"\x0816999982", packets[3]
            # The continuation numbered 7 instead of 1: 1156, then the connection closes.
            sock.sendall(first + struct.pack("<I", len(rest))[:3] + b"\x07" + rest)
            reply = _until_closed(sock)
        got, _ = split_packets(reply)
        assert len(got) == 1 and got[0][1][:1] == b"\xff", (name, reply[:200])
        answers[name] = int.from_bytes(got[0][1][1:3], "little")
    assert answers == {"direct": 1156, "gateway": 1156}


def test_a_split_command_cut_short_is_closed_and_others_served(gw: Gateway) -> None:
    first, rest = _split_query()
    with _raw_login(gw.port, "app", "app") as sock:
        sock.sendall(first + struct.pack("<I", len(rest))[:3] + b"\x01" + rest[:1000])
        sock.shutdown(socket.SHUT_WR)  # the client leaves mid-packet
        reply = _until_closed(sock)
    got, end = split_packets(reply)
    assert end == len(reply) and all(p[:1] == b"\xff" for _, p in got), reply[:200]
    with via(gw) as conn, conn.cursor() as cur:
        cur.execute("SELECT 6")
        assert cur.fetchone() == (6,)
