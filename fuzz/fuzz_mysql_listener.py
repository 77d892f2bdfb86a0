"""Fuzz the gateway's MySQL listener over real sockets, with one real ``resmesh run`` process in
front of the real MariaDB on 127.0.0.1:3306 (root, empty password).

Run standalone (starts its own gateway)::

    python fuzz/fuzz_mysql_listener.py --examples 2000 [--seed N] [--progress 200]
        [--workdir DIR]

Every run prints its seed (``--seed N`` reproduces it), a progress line with the gateway's
memory every ``--progress`` examples and a summary. ``tests/integration/test_mysql_fuzz_smoke.py``
runs 1000 derandomized examples in the test suite.

**The rig.** The gateway logs in to MariaDB as ``resmesh_fuzz``, a user made for the run with
every right on the ``resmesh_fuzz_*`` databases (the run's own is ``resmesh_fuzz_PID``, dropped
at the end) and nothing else, and ``MAX_STATEMENT_TIME`` 5 s: garbage forwarded to the node
(unknown commands, mutated SQL) can neither touch other databases nor shut the server down nor
run for long. The gateway's ``max_allowed_packet`` is
1 MiB, so that lying length headers cross it cheaply.

**What is thrown.** Each hypothesis example opens one or two connections at once. A
*pre-login* connection reads the greeting and sends, instead of a proper login: random bytes;
a handshake response (wrong password) as is, mutated byte-wise
(:func:`tests.support.mutation.mutated`), with a wrong sequence id, truncated, or behind a
length header that lies (short, 0xFFFFFF, over the limit); an SSL request; a response asking
for another auth plugin, then garbage auth data. A *post-login* connection logs in for real
(user ``app``) and sends a run of packets: COM_QUERY (reads, writes, big results,
multi-statements, errors, LOAD DATA LOCAL), COM_STMT_PREPARE/EXECUTE (with and without a
cursor)/FETCH/SEND_LONG_DATA/RESET/CLOSE with real and made-up statement ids and mutated
bodies, every other command byte (the refused ones too) with garbage after it, empty packets,
payloads mutated byte-wise, wrong sequence ids, headers declaring huge or lying lengths,
truncated packets and random bytes. The stream is split at random points and written chunk by
chunk, and the connection then: half-closes and reads until the gateway closes; sends a marker
query (``SELECT 'nonce'``) and reads until its row (only when the stream is well framed); is
closed, or reset, at once with its commands in flight; or starts a ~50 MB result and closes (or
resets) once its first bytes are in: a client leaving mid-reply.

**The invariants**, for every connection and after every example:

1. the greeting is a well-formed protocol-10 handshake; whatever follows is a run of complete
   MySQL packets (a cut-off last packet only when the client left first); every 0xFF packet is
   a well-formed ERR; before login only an auth switch (0xFE) or an ERR comes, and an ERR is
   the last thing before the gateway closes;
2. never a hang: the gateway answers or closes within ``HANG_SECONDS`` of going quiet; a
   half-closed connection is closed by the gateway; a marker is answered unless the gateway
   closed the connection with an ERR (or the stream held a COM_QUIT);
3. a well-behaved PyMySQL client, connected for the whole run and querying concurrently from
   its own thread, gets the right answers, and so does the same client between examples;
4. the gateway is alive and its resident memory (``VmRSS``, and its peak ``VmHWM``, reset after
   each example where the kernel allows) stays within ``RSS_SLACK_KIB`` of the run's start;
5. no ``unexpected error`` or ``Traceback`` line in the gateway's log.

A failure dumps the example's streams to ``failure-*.bin`` in the run's directory and is
reported with the plan. The gateway must exit 0 on SIGTERM at the end. Exit status 1 on any
failure.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import os
import random
import selectors
import socket
import struct
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pymysql
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from fuzz.listener_harness import (
    InvariantBroken,
    LogTail,
    ProbeFailure,
    exchange_all,
    vm_hwm_kib,
)
from tests.support import mutation
from tests.support.servers import Gateway, free_port, vm_rss_kib

# -- the rig -----------------------------------------------------------------------------------

MARIADB_PORT: Final = 3306
CLUSTER: Final = "fuzz-db"
#: The run's own database (a concurrent run must not drop another's).
DATABASE: Final = f"resmesh_fuzz_{os.getpid()}"
BACKEND_USER: Final = "resmesh_fuzz"
BACKEND_PASSWORD: Final = "fuzz-backend-secret"
USER: Final = "app"
PASSWORD: Final = "app"
#: ``clusters.X.mysql.max_allowed_packet``: the largest payload a client may send.
MAX_PACKET: Final = 1 << 20
#: A connection that gets nothing for this long, while an answer or a close is owed, hangs.
HANG_SECONDS: Final = 10.0
#: Growth of the gateway's resident memory (now, and its peak) allowed over a run.
RSS_SLACK_KIB: Final = 96 * 1024
#: Lines of the gateway's log that break invariant 5.
#: Bytes of a big reply read before a ``mid-reply`` connection leaves.
MID_REPLY_BYTES: Final = 64 * 1024

CLIENT_PROTOCOL_41: Final = 0x200
CLIENT_SSL: Final = 0x800
CLIENT_PLUGIN_AUTH: Final = 0x80000
CLIENT_DEPRECATE_EOF: Final = 0x1000000
#: What the fuzzer's logins ask for: 4.1 protocol, secure auth, plugins, a database,
#: multi-statements and multi-results.
LOGIN_CAPS: Final = (
    0x1  # LONG_PASSWORD
    | 0x8  # CONNECT_WITH_DB
    | CLIENT_PROTOCOL_41
    | 0x2000  # TRANSACTIONS
    | 0x8000  # SECURE_CONNECTION
    | 0x10000  # MULTI_STATEMENTS
    | 0x20000  # MULTI_RESULTS
    | 0x40000  # PS_MULTI_RESULTS
    | CLIENT_PLUGIN_AUTH
)


def fuzz_config(port: int) -> dict[str, Any]:
    return {
        "gateway": {"drain_timeout": "2s"},
        "users": {USER: {"password": PASSWORD, "clusters": [CLUSTER]}},
        "clusters": {
            CLUSTER: {
                "protocol": "mysql",
                "listen": f"127.0.0.1:{port}",
                "groups": {"dc-a": [f"127.0.0.1:{MARIADB_PORT}"]},
                "backend": {
                    "username": BACKEND_USER,
                    "password": BACKEND_PASSWORD,
                    "connect_timeout": "2s",
                    "command_timeout": "8s",
                },
                "mysql": {"max_allowed_packet": MAX_PACKET},
                # Garbage makes the node answer errors; none may take the one node out.
                "governance": {"breaker": {"enabled": False}, "outlier": {"enabled": False}},
            }
        },
    }


def root_connection() -> pymysql.Connection[Any]:
    try:
        return pymysql.connect(
            host="127.0.0.1", port=MARIADB_PORT, user="root", password="", autocommit=True
        )
    except pymysql.err.OperationalError as exc:
        raise AssertionError(
            f"MariaDB is not running on 127.0.0.1:{MARIADB_PORT} (root, no password): {exc}"
        ) from None


def prepare_backend() -> None:
    """The fuzz database and the gateway's restricted backend login (idempotently)."""
    with root_connection() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
        for host in ("127.0.0.1", "localhost"):
            account = f"'{BACKEND_USER}'@'{host}'"
            cur.execute(f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY '{BACKEND_PASSWORD}'")
            cur.execute(
                f"ALTER USER {account} IDENTIFIED BY '{BACKEND_PASSWORD}' WITH MAX_STATEMENT_TIME 5"
            )
            cur.execute(f"GRANT ALL ON `resmesh\\_fuzz\\_%`.* TO {account}")
        # Two result sets and an OK from one CALL (SERVER_MORE_RESULTS_EXISTS), for COM_QUERY
        # and for a prepared statement (PS_MULTI_RESULTS).
        cur.execute(f"DROP PROCEDURE IF EXISTS {DATABASE}.fz_two")
        cur.execute(
            f"CREATE PROCEDURE {DATABASE}.fz_two(IN n INT) "
            "BEGIN SELECT n; SELECT seq, 'x' FROM seq_1_to_3; END"
        )


def well_behaved(port: int) -> pymysql.Connection[Any]:
    return pymysql.connect(
        host="127.0.0.1",
        port=port,
        user=USER,
        password=PASSWORD,
        database=DATABASE,
        connect_timeout=HANG_SECONDS,
        read_timeout=HANG_SECONDS,
        write_timeout=HANG_SECONDS,
        autocommit=True,
    )


class Neighbour:
    """Invariant 3, during examples: a PyMySQL client querying from its own thread."""

    def __init__(self, port: int) -> None:
        self.conn = well_behaved(port)
        self.queries = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rnd = random.Random(1)
        try:
            with self.conn.cursor() as cur:
                while not self._stop.wait(0.005):
                    n = rnd.randrange(1 << 30)
                    cur.execute("SELECT %s, 1", (n,))
                    got = cur.fetchall()
                    if got != ((n, 1),):
                        self.error = f"SELECT {n}, 1 returned {got!r}"
                        return
                    self.queries += 1
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(HANG_SECONDS + 5)
        with contextlib.suppress(Exception):
            self.conn.close()


class Rig:
    """The gateway (``resmesh run``) and the well-behaved clients, for a whole run."""

    def __init__(self, workdir: Path | None = None) -> None:
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="resmesh-mysql-fuzz-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        prepare_backend()
        self.port = free_port()
        self.gateway = Gateway(fuzz_config(self.port), self.workdir)
        self.pid = self.gateway.proc.pid
        self.neighbour: Neighbour | None = None
        self.between: pymysql.Connection[Any] | None = None
        try:
            self.between = well_behaved(self.port)
            self.neighbour = Neighbour(self.port)
            self.health()
            self.rss_start = vm_rss_kib(self.pid)
            self.peak = self.rss_start
            self._reset_peak()
        except BaseException:
            self.stop()
            raise
        self.log = LogTail(self.gateway.log_path)

    def health(self) -> None:
        """Invariant 3 between examples: ``SELECT 1`` on the connection kept for the run.

        Raises:
            InvariantBroken: it does not answer right, or the concurrent client failed.
        """
        assert self.between is not None and self.neighbour is not None
        if self.neighbour.error is not None:
            raise InvariantBroken(f"the concurrent well-behaved client: {self.neighbour.error}")
        try:
            with self.between.cursor() as cur:
                cur.execute("SELECT 1")
                got = cur.fetchall()
        except pymysql.err.MySQLError as exc:
            raise InvariantBroken(f"a well-behaved client's SELECT 1 failed: {exc!r}") from None
        if got != ((1,),):
            raise InvariantBroken(f"a well-behaved client's SELECT 1 returned {got!r}")

    def rss(self) -> tuple[int, int]:
        return vm_rss_kib(self.pid), vm_hwm_kib(self.pid)

    def _reset_peak(self) -> None:
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def check(self) -> None:
        """Invariants 3 to 5, after an example.

        Raises:
            InvariantBroken: one does not hold.
        """
        if self.gateway.proc.poll() is not None:
            raise InvariantBroken(f"the gateway exited with {self.gateway.proc.returncode}")
        self.health()
        now, peak = self.rss()
        self.peak = max(self.peak, peak)
        self._reset_peak()
        if max(now, peak) - self.rss_start > RSS_SLACK_KIB:
            raise InvariantBroken(
                f"the gateway's memory grew from {self.rss_start} KiB to {now} KiB "
                f"(peak {peak} KiB during the example), over the {RSS_SLACK_KIB} KiB allowed"
            )
        if bad := self.log.new_bad_lines():
            raise InvariantBroken(f"the gateway logged: {bad[:5]}")

    def dump(self, plans_: list[Plan]) -> list[Path]:
        paths = []
        for plan in plans_:
            path = self.workdir / f"failure-{plan.phase}-{len(plans_)}-{time.time_ns()}.bin"
            path.write_bytes(plan.stream)
            paths.append(path)
        return paths

    def stop(self) -> int:
        """Stop the clients and the gateway (SIGTERM); return the gateway's exit code."""
        if self.neighbour is not None:
            self.neighbour.stop()
        if self.between is not None:
            with contextlib.suppress(Exception):
                self.between.close()
        code = self.gateway.terminate()
        with contextlib.suppress(Exception), root_connection() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
        return code


# -- the wire, written here independently of the gateway's codec -------------------------------


def frame(payload: bytes, seq: int = 0) -> bytes:
    """``payload`` as MySQL packets (split at 0xFFFFFF), numbered from ``seq``."""
    out = []
    pos = 0
    while True:
        chunk = payload[pos : pos + 0xFFFFFF]
        out.append(struct.pack("<I", len(chunk))[:3] + bytes([seq & 0xFF]) + chunk)
        pos += len(chunk)
        seq += 1
        if len(chunk) < 0xFFFFFF:
            return b"".join(out)


def split_packets(data: bytes | bytearray) -> tuple[list[tuple[int, bytes]], int]:
    """The complete packets at the start of ``data`` (sequence id, payload) and where the
    incomplete rest begins."""
    packets = []
    pos = 0
    while len(data) - pos >= 4:
        length = data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16
        if len(data) - pos - 4 < length:
            break
        packets.append((data[pos + 3], bytes(data[pos + 4 : pos + 4 + length])))
        pos += 4 + length
    return packets, pos


def lenenc(data: bytes) -> bytes:
    n = len(data)
    if n < 251:
        return bytes([n]) + data
    if n < 1 << 16:
        return b"\xfc" + struct.pack("<H", n) + data
    return b"\xfd" + struct.pack("<I", n)[:3] + data


def native_scramble(password: bytes, salt: bytes) -> bytes:
    if not password:
        return b""
    stage1 = hashlib.sha1(password).digest()
    stage2 = hashlib.sha1(stage1).digest()
    mix = hashlib.sha1(salt + stage2).digest()
    return bytes(a ^ b for a, b in zip(stage1, mix, strict=True))


def parse_greeting(payload: bytes) -> bytes:
    """The 20-byte scramble of a protocol-10 greeting.

    Raises:
        ProbeFailure: it is not one.
    """
    try:
        if payload[0] != 10:
            raise ValueError(f"protocol {payload[0]}")
        pos = payload.index(b"\x00", 1) + 1 + 4
        salt = payload[pos : pos + 8]
        pos += 8 + 1 + 2 + 1 + 2 + 2
        pos += 1 + 10
        rest = payload[pos : pos + 12]
        if len(salt) != 8 or len(rest) != 12:
            raise ValueError("short scramble")
        return salt + rest
    except (IndexError, ValueError) as exc:
        raise ProbeFailure(f"not a greeting ({exc}): {payload[:120]!r}") from None


def handshake_response(
    auth: bytes,
    *,
    user: str = USER,
    caps: int = LOGIN_CAPS,
    plugin: str = "mysql_native_password",
    database: str = DATABASE,
) -> bytes:
    return (
        struct.pack("<IIB", caps, 1 << 24, 45)
        + bytes(23)
        + user.encode()
        + b"\x00"
        + bytes([len(auth)])
        + auth
        + database.encode()
        + b"\x00"
        + plugin.encode()
        + b"\x00"
    )


def check_err(payload: bytes, *, protocol_41: bool) -> int:
    """A 0xFF packet must be a well-formed ERR; its errno.

    Raises:
        ProbeFailure: it is not.
    """
    if len(payload) < 3:
        raise ProbeFailure(f"a truncated ERR packet {payload!r}")
    errno = int.from_bytes(payload[1:3], "little")
    if not 1000 <= errno < 10000 and errno not in (1, 2):
        raise ProbeFailure(f"an ERR with errno {errno}: {payload[:200]!r}")
    if protocol_41 and (len(payload) < 9 or payload[3:4] != b"#"):
        raise ProbeFailure(f"an ERR without a SQLSTATE: {payload[:200]!r}")
    return errno


# -- what is thrown ------------------------------------------------------------------------------

COM_QUIT: Final = 0x01
COM_QUERY: Final = 0x03
COM_STMT_PREPARE: Final = 0x16
COM_STMT_EXECUTE: Final = 0x17
COM_STMT_SEND_LONG_DATA: Final = 0x18
COM_STMT_CLOSE: Final = 0x19
COM_STMT_RESET: Final = 0x1A
COM_STMT_FETCH: Final = 0x1C

QUERIES: Final = [
    b"SELECT 1",
    b"SELECT 1, 'two', NULL, 3.5",
    b"SELECT seq FROM seq_1_to_100",
    b"SELECT seq, REPEAT('x', 200) FROM seq_1_to_5000",
    b"SELECT 1; SELECT 2, 3; DO 0",
    b"DO 1",
    b"SET @fz = 7",
    b"SELECT @fz",
    b"BEGIN",
    b"COMMIT",
    b"ROLLBACK",
    b"SET autocommit = 0",
    b"CREATE TABLE IF NOT EXISTS fz_t (id INT PRIMARY KEY, v BLOB)",
    b"INSERT INTO fz_t VALUES (1, 'x') ON DUPLICATE KEY UPDATE v = 'y'",
    b"SELECT * FROM fz_t",
    b"DELETE FROM fz_t WHERE id > 1",
    b"SELEKT 1",
    b"SELECT * FROM fz_no_such_table",
    b"USE " + DATABASE.encode(),
    b"USE information_schema",
    b"SHOW TABLES",
    b"PREPARE s FROM 'SELECT ? + 1'",
    b"EXECUTE s USING @fz",
    b"DEALLOCATE PREPARE s",
    b"LOAD DATA LOCAL INFILE '/etc/hostname' INTO TABLE fz_t",
    b"SELECT SLEEP(0.01)",
    b"CALL fz_two(5)",
    b"CALL fz_two(NULL); SELECT 4",
    b"",
    b"SELECT '\xc3\xa9\xff\x00'",
    b"/* comment */ SELECT 2 -- tail",
]
PREPARES: Final = [
    b"SELECT ? + 1",
    b"SELECT ?, CONCAT(?, '!')",
    b"INSERT INTO fz_t VALUES (?, ?) ON DUPLICATE KEY UPDATE v = VALUES(v)",
    b"SELECT seq FROM seq_1_to_1000 WHERE seq > ?",
    b"SELECT 1",
    b"SELEKT ?",
    b"CALL fz_two(?)",
]
#: Every command byte, the refused (COM_SHUTDOWN, COM_PROCESS_KILL, COM_BINLOG_DUMP...) too.
COMMAND_BYTES: Final = [*range(0x20), 0xFA, 0xFB, 0xFE, 0xFF]
#: What a ~50 MB result looks like, for a client leaving mid-reply.
BIG_QUERY: Final = b"SELECT seq, REPEAT('y', 500) FROM %s.seq_1_to_100000" % DATABASE.encode()


@dataclass(frozen=True)
class Plan:
    """One connection: its phase, what it sends (split at ``cuts``) and how it ends."""

    phase: str  # "pre" (instead of a login) or "post" (after a real login)
    stream: bytes
    cuts: tuple[int, ...]
    ending: str  # "half-close", "marker", "close", "reset", "mid-reply"
    #: Whether the stream is whole packets (a marker's packet is then read as one).
    framed: bool = True
    #: Whether the stream holds a COM_QUIT (a close without an ERR is then an answer).
    quits: bool = False
    #: What went into it, for a report.
    pieces: tuple[str, ...] = ()

    def __repr__(self) -> str:
        shown = self.stream[:300]
        return (
            f"Plan({self.phase}, {self.ending}, framed={self.framed}, pieces={self.pieces}, "
            f"{len(self.stream)} bytes: {shown!r}{'...' if len(self.stream) > 300 else ''})"
        )


@st.composite
def execute_payload(draw: st.DrawFn) -> bytes:
    """A COM_STMT_EXECUTE for statement 1..4 (or any id), with or without a cursor, with
    LONGLONG / VAR_STRING / NULL parameters or none."""
    statement = draw(st.one_of(st.integers(1, 4), st.integers(0, 2**32 - 1)))
    flags = draw(st.sampled_from([0, 0, 1, 2, 4, 0x80]))
    payload = bytes([COM_STMT_EXECUTE]) + struct.pack("<IBI", statement, flags, 1)
    params = draw(st.integers(0, 2))
    if params:
        values = draw(
            st.lists(
                st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.binary(max_size=40)),
                min_size=params,
                max_size=params,
            )
        )
        nulls = sum(1 << i for i, v in enumerate(values) if v is None)
        payload += bytes([nulls]) + b"\x01"
        body = b""
        for value in values:
            if isinstance(value, int):
                payload += b"\x08\x00"
                body += struct.pack("<q", value)
            else:
                payload += b"\xfd\x00"
                if value is not None:
                    body += lenenc(value)
        if draw(st.integers(0, 4)) == 0:  # a string whose length-encoded size is huge, a lie
            payload = payload[:-2] + b"\xfd\x00"  # the last parameter: a string
            body += draw(
                st.sampled_from([b"\xfe" + struct.pack("<Q", 2**63 + 5), b"\xfd\xff\xff\xff"])
            )
            body += draw(st.binary(max_size=16))
        payload += body
    return payload


@st.composite
def command_payload(draw: st.DrawFn) -> bytes:
    kind = draw(
        st.sampled_from(
            ["query"] * 5
            + ["prepare", "execute", "execute", "fetch", "long", "close", "reset"]
            + ["ping", "init_db", "field_list", "set_option", "other"]
        )
    )
    statement = struct.pack("<I", draw(st.integers(1, 4)))
    if kind == "query":
        return bytes([COM_QUERY]) + draw(st.sampled_from(QUERIES))
    if kind == "prepare":
        return bytes([COM_STMT_PREPARE]) + draw(st.sampled_from(PREPARES))
    if kind == "execute":
        return draw(execute_payload())
    if kind == "fetch":
        return bytes([COM_STMT_FETCH]) + statement + struct.pack("<I", draw(st.integers(0, 50)))
    if kind == "long":
        param = struct.pack("<H", draw(st.integers(0, 3)))
        return bytes([COM_STMT_SEND_LONG_DATA]) + statement + param + draw(st.binary(max_size=64))
    if kind == "close":
        return bytes([COM_STMT_CLOSE]) + statement
    if kind == "reset":
        return bytes([COM_STMT_RESET]) + statement
    if kind == "ping":
        return b"\x0e"
    if kind == "init_db":
        return b"\x02" + draw(st.sampled_from([DATABASE.encode(), b"information_schema", b"x"]))
    if kind == "field_list":
        return b"\x04" + draw(st.sampled_from([b"fz_t\x00", b"nope\x00%", b""]))
    if kind == "set_option":
        return b"\x1b" + struct.pack("<H", draw(st.integers(0, 2)))
    return bytes([draw(st.sampled_from(COMMAND_BYTES))]) + draw(st.binary(max_size=32))


@st.composite
def post_piece(draw: st.DrawFn) -> tuple[bytes, bool, bool, str]:
    """One piece of a post-login stream: (bytes, still framed, holds a COM_QUIT, label)."""
    roll = draw(st.integers(0, 99))
    if roll < 45:
        payload = draw(command_payload())
        return frame(payload), True, payload[:1] == b"\x01", f"cmd {payload[:1].hex()}"
    if roll < 65:
        payload = draw(mutation.mutated(draw(command_payload())))
        return frame(payload), True, payload[:1] == b"\x01", "mutated payload"
    if roll < 70:
        return frame(b"", 0), True, False, "empty packet"
    if roll < 75:
        seq = draw(st.integers(1, 255))
        return frame(draw(command_payload()), seq), True, False, f"seq {seq}"
    if roll < 80:  # a length header over the limit, or 0xFFFFFF, with little after it
        declared = draw(st.sampled_from([0xFFFFFF, MAX_PACKET + 1, MAX_PACKET + 4096]))
        head = struct.pack("<I", declared)[:3] + b"\x00"
        return head + b"\x03SELECT " + draw(st.binary(max_size=64)), False, False, "huge length"
    if roll < 84:  # a packet at the limit exactly: COM_QUERY with a literal of the rest
        size = MAX_PACKET - draw(st.integers(0, 1))
        body = b"\x03SELECT LENGTH('" + b"z" * (size - 18) + b"')"
        assert len(body) == size - 1 or len(body) == size, len(body)
        return frame(body), True, False, f"{len(body)}-byte packet"
    if roll < 90:  # truncated: a header promising more than follows
        payload = draw(command_payload())
        wire = frame(payload)
        cut = draw(st.integers(1, max(1, len(wire) - 1)))
        return wire[:cut], False, False, "truncated"
    if roll < 94:  # a length that lies short or long by a little
        payload = draw(command_payload())
        declared = max(0, len(payload) + draw(st.integers(-3, 3)))
        head = struct.pack("<I", declared)[:3] + b"\x00"
        return head + payload, declared == len(payload), False, "lying length"
    if roll < 97:
        return draw(st.binary(min_size=1, max_size=256)), False, False, "random bytes"
    return draw(mutation.mutated(frame(draw(command_payload())))), False, False, "mutated wire"


@st.composite
def post_plan(draw: st.DrawFn) -> Plan:
    pieces = draw(st.lists(post_piece(), min_size=1, max_size=8))
    stream = b"".join(p[0] for p in pieces)
    framed = all(p[1] for p in pieces)
    quits = any(p[2] for p in pieces)
    endings = ["half-close", "close", "reset"]
    if framed:  # a marker or a big query after a cut-off packet would be swallowed by it
        endings += ["marker", "marker", "marker", "mid-reply"]
    ending = draw(st.sampled_from(endings))
    cuts = draw(cut_points(len(stream)))
    return Plan("post", stream, cuts, ending, framed, quits, tuple(p[3] for p in pieces))


@st.composite
def cut_points(draw: st.DrawFn, size: int) -> tuple[int, ...]:
    if size < 2:
        return ()
    return tuple(sorted(set(draw(st.lists(st.integers(1, size - 1), max_size=4)))))


@st.composite
def pre_plan(draw: st.DrawFn) -> Plan:
    auth = draw(st.binary(min_size=0, max_size=20))
    response = handshake_response(
        auth,
        user=draw(st.sampled_from([USER, "nobody", "", "x" * 300])),
        caps=draw(st.sampled_from([LOGIN_CAPS, LOGIN_CAPS | CLIENT_DEPRECATE_EOF, 0, 0xFFFFFFFF])),
        plugin=draw(
            st.sampled_from(["mysql_native_password", "caching_sha2_password", "", "dialog"])
        ),
    )
    kind = draw(
        st.sampled_from(
            [
                "response",
                "mutated",
                "seq",
                "truncated",
                "huge",
                "lying",
                "ssl",
                "switch",
                "random",
                "empty",
            ]
        )
    )
    if kind == "response":
        stream = frame(response, 1)
    elif kind == "mutated":
        stream = frame(draw(mutation.mutated(response)), 1)
    elif kind == "seq":
        stream = frame(response, draw(st.sampled_from([0, 2, 3, 255])))
    elif kind == "truncated":
        wire = frame(response, 1)
        stream = wire[: draw(st.integers(1, len(wire) - 1))]
    elif kind == "huge":
        declared = draw(st.sampled_from([0xFFFFFF, MAX_PACKET + 1, 70000]))
        stream = struct.pack("<I", declared)[:3] + b"\x01" + response
    elif kind == "lying":
        declared = max(0, len(response) + draw(st.integers(-5, 5)))
        stream = struct.pack("<I", declared)[:3] + b"\x01" + response
    elif kind == "ssl":
        stream = frame(struct.pack("<IIB", LOGIN_CAPS | CLIENT_SSL, 1 << 24, 45) + bytes(23), 1)
        stream += draw(st.sampled_from([b"", b"\x16\x03\x01\x00\x05hello", frame(response, 2)]))
    elif kind == "switch":  # another plugin asked for, then garbage auth data
        response = handshake_response(auth, plugin="caching_sha2_password")
        stream = frame(response, 1) + frame(draw(st.binary(max_size=40)), 3)
    elif kind == "random":
        stream = draw(st.binary(min_size=1, max_size=300))
    else:
        stream = frame(b"", 1)
    ending = draw(st.sampled_from(["half-close", "half-close", "half-close", "close", "reset"]))
    return Plan("pre", stream, draw(cut_points(len(stream))), ending, pieces=(kind,))


def examples() -> st.SearchStrategy[list[Plan]]:
    return st.lists(st.one_of(pre_plan(), post_plan(), post_plan()), min_size=1, max_size=2)


# -- one connection --------------------------------------------------------------------------


@dataclass
class Transcript:
    phase: str
    sent: int = 0
    closed_by_gateway: bool = False
    errors: Counter[int] = field(default_factory=Counter)
    marker_answered: bool = False
    packets: int = 0


class _Conn:
    """A client socket: every read has a deadline measured from the last bytes received."""

    def __init__(self, port: int, hang: float) -> None:
        self.hang = hang
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=hang)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.closed = False

    def recv(self, what: str) -> None:
        """More bytes into ``buf``, or ``closed``.

        Raises:
            ProbeFailure: nothing for ``hang`` seconds.
        """
        self.sock.settimeout(self.hang)
        try:
            data = self.sock.recv(1 << 17)
        except TimeoutError:
            raise ProbeFailure(
                f"hang: nothing for {self.hang}s waiting for {what}; "
                f"got {len(self.buf)} bytes, the last {bytes(self.buf[-120:])!r}"
            ) from None
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
        self.buf += data

    def packet(self, what: str) -> tuple[int, bytes]:
        """The next whole packet (consumed from ``buf``).

        Raises:
            ProbeFailure: the gateway closed first, or a hang.
        """
        while True:
            packets, _ = split_packets(self.buf[:])
            if packets:
                seq, payload = packets[0]
                del self.buf[: 4 + len(payload)]
                return seq, payload
            if self.closed:
                raise ProbeFailure(f"closed while waiting for {what}: {bytes(self.buf)!r}")
            self.recv(what)

    def send(self, plan: Plan, data: bytes) -> bool:
        """Write ``data`` at ``plan``'s cuts, reading meanwhile (a gateway that answers while
        the client writes must not deadlock it); ``False`` when the gateway closed first."""
        chunks = []
        last = 0
        for cut in (*plan.cuts, len(data)):
            if cut > last:
                chunks.append(data[last:cut])
                last = cut
        self.sock.setblocking(False)
        sel = selectors.DefaultSelector()
        try:
            sel.register(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    events = sel.select(self.hang)
                    if not events:
                        raise ProbeFailure(f"hang: no progress for {self.hang}s while sending")
                    _, mask = events[0]
                    if mask & selectors.EVENT_READ and not self.closed:
                        try:
                            data_in = self.sock.recv(1 << 17)
                        except (BlockingIOError, InterruptedError):
                            data_in = None
                        except ConnectionResetError:
                            data_in = b""
                        if data_in is not None:
                            if not data_in:
                                self.closed = True
                                sel.modify(self.sock, selectors.EVENT_WRITE)
                            self.buf += data_in
                    if mask & selectors.EVENT_WRITE:
                        try:
                            view = view[self.sock.send(view) :]
                        except (BlockingIOError, InterruptedError):
                            pass
                        except (BrokenPipeError, ConnectionResetError):
                            self.closed = True
                            return False
            return True
        finally:
            sel.close()
            self.sock.setblocking(True)

    def read_until_closed(self, what: str) -> None:
        while not self.closed:
            self.recv(what)

    def close(self, reset: bool = False) -> None:
        if reset:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def _deprecates_eof(plan: Plan) -> bool:
    """Whether the plan's login asks for CLIENT_DEPRECATE_EOF (half of them do)."""
    return len(plan.stream) % 2 == 1


def _login(conn: _Conn, deprecate_eof: bool) -> None:
    seq, greeting = conn.packet("the greeting")
    if seq != 0:
        raise ProbeFailure(f"the greeting has sequence id {seq}")
    if greeting[:1] == b"\xff":
        raise ProbeFailure(f"refused at connect: {greeting!r}")
    salt = parse_greeting(greeting)
    caps = LOGIN_CAPS | (CLIENT_DEPRECATE_EOF if deprecate_eof else 0)
    auth = native_scramble(PASSWORD.encode(), salt)
    conn.sock.sendall(frame(handshake_response(auth, caps=caps), 1))
    seq, reply = conn.packet("the login's OK")
    if reply[:1] != b"\x00" or seq != 2:
        raise ProbeFailure(f"a real login was not answered OK (seq 2): seq {seq}, {reply!r}")


def _check_output(conn: _Conn, plan: Plan, transcript: Transcript, nonce: bytes | None) -> None:
    """Invariant 1 (and the marker's part of 2) on what the gateway sent after the greeting
    (before login) or after the login's OK."""
    packets, end = split_packets(conn.buf)
    rest = len(conn.buf) - end
    transcript.packets = len(packets)
    if rest and (not conn.closed or plan.ending == "half-close"):
        # A half-closed client waits for every answer: nothing is cut short.
        raise ProbeFailure(
            f"{rest} bytes of an incomplete packet at the end: {bytes(conn.buf[end:][:120])!r}"
        )
    for index, (_, payload) in enumerate(packets):
        if payload[:1] == b"\xff":
            transcript.errors[check_err(payload, protocol_41=plan.phase == "post")] += 1
            if plan.phase == "pre" and index != len(packets) - 1:
                raise ProbeFailure(f"packets after a login ERR: {packets[index + 1 :][:3]!r}")
        elif plan.phase == "pre" and payload[:1] != b"\xfe":
            raise ProbeFailure(f"a login of garbage answered with {payload[:120]!r}")
    if nonce is not None:
        row = lenenc(nonce)
        for index, (_, payload) in enumerate(packets[:-1]):
            if payload == row and packets[index + 1][1][:1] in (b"\xfe", b"\x00"):
                transcript.marker_answered = True
                if index + 2 != len(packets):
                    raise ProbeFailure(f"packets after the marker's reply: {packets[index + 2 :]}")
                # The marker's reply, numbered from 1: column count, column, (EOF,) row, end.
                size = 4 if _deprecates_eof(plan) else 5
                seqs = [seq for seq, _ in packets[index + 2 - size : index + 2]]
                if index + 2 < size or seqs != list(range(1, size + 1)):
                    raise ProbeFailure(
                        f"the marker's reply is numbered {seqs}, not 1..{size}: "
                        f"{packets[max(0, index + 2 - size) : index + 2]!r}"
                    )
        if not transcript.marker_answered:
            last = packets[-1][1] if packets else b""
            if not conn.closed:
                raise ProbeFailure("the marker was not answered")  # (cannot happen: see loop)
            if last[:1] != b"\xff" and not plan.quits:
                raise ProbeFailure(
                    f"the gateway closed the connection without an ERR and without answering "
                    f"the marker; the last packet was {last[:200]!r}"
                )


def exchange(port: int, plan: Plan, hang: float = HANG_SECONDS) -> Transcript:
    """One connection of ``plan``: invariants 1 and 2 on it.

    Raises:
        ProbeFailure: they do not hold.
    """
    transcript = Transcript(plan.phase)
    conn = _Conn(port, hang)
    try:
        if plan.phase == "pre":
            seq, greeting = conn.packet("the greeting")
            if seq != 0:
                raise ProbeFailure(f"the greeting has sequence id {seq}")
            parse_greeting(greeting)
        else:
            _login(conn, deprecate_eof=_deprecates_eof(plan))
        nonce = None
        data = plan.stream
        if plan.ending == "marker":
            nonce = b"resmesh-fuzz-end-" + hashlib.sha1(plan.stream).hexdigest().encode()
            data += frame(b"\x03SELECT '" + nonce + b"'")
        elif plan.ending == "mid-reply":
            data += frame(b"\x03" + BIG_QUERY)
        transcript.sent = len(data)
        conn.send(plan, data)
        if plan.ending in ("close", "reset"):
            conn.close(reset=plan.ending == "reset")
            return transcript
        if plan.ending == "mid-reply":
            target = len(conn.buf) + MID_REPLY_BYTES
            while not conn.closed and len(conn.buf) < target:
                packets, end = split_packets(conn.buf)
                if end == len(conn.buf) and packets and packets[-1][1][:1] == b"\xff":
                    break  # an ERR, perhaps the big query's: leave now
                conn.recv("the big reply's first bytes")
            transcript.closed_by_gateway = conn.closed
            conn.close(reset=len(plan.stream) % 3 == 0)
            return transcript
        if plan.ending == "half-close":
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
            conn.read_until_closed("the gateway to close a half-closed connection")
        else:  # the marker: its row and terminator, or a close
            assert nonce is not None
            row = lenenc(nonce)
            while not conn.closed:
                packets, _ = split_packets(conn.buf)
                done = any(
                    payload == row and packets[i + 1][1][:1] in (b"\xfe", b"\x00")
                    for i, (_, payload) in enumerate(packets[:-1])
                )
                if done:
                    break
                conn.recv("the marker's reply")
        transcript.closed_by_gateway = conn.closed
        _check_output(conn, plan, transcript, nonce)
        return transcript
    except ProbeFailure as exc:
        exc.args = (f"{exc.args[0]}\n  on {plan!r}",)
        raise
    finally:
        conn.close()


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Stats:
    examples: int = 0
    connections: Counter[str] = field(default_factory=Counter)
    endings: Counter[str] = field(default_factory=Counter)
    closed_by_gateway: int = 0
    markers_answered: int = 0
    errors: Counter[int] = field(default_factory=Counter)
    slowest: float = 0.0
    slowest_plans: list[Plan] = field(default_factory=list)

    def summary(self) -> str:
        errors = ", ".join(f"{e}x{n}" for e, n in sorted(self.errors.items()))
        return (
            f"{self.examples} examples; connections {dict(self.connections)}; endings "
            f"{dict(self.endings)}; closed by the gateway {self.closed_by_gateway}; markers "
            f"answered {self.markers_answered}; ERRs by errno {errors}; slowest example "
            f"{self.slowest:.2f} s"
        )


def run_example(rig: Rig, plans_: list[Plan], stats: Stats, progress: int = 0) -> None:
    """One example: its connections at once, then the rig's invariants.

    Raises:
        ProbeFailure, InvariantBroken: an invariant broke (the streams are dumped first).
    """
    started = time.monotonic()
    try:
        results = exchange_all(
            [functools.partial(exchange, rig.port, plan) for plan in plans_],
            6 * HANG_SECONDS,
        )
        rig.check()
    except AssertionError as exc:
        paths = rig.dump(plans_)
        exc.args = (f"{exc.args[0] if exc.args else exc}\n  streams: {[str(p) for p in paths]}",)
        raise
    stats.examples += 1
    for plan, result in zip(plans_, results, strict=True):
        assert isinstance(result, Transcript)
        stats.connections[plan.phase] += 1
        stats.endings[plan.ending] += 1
        stats.closed_by_gateway += result.closed_by_gateway
        stats.markers_answered += result.marker_answered
        stats.errors.update(result.errors)
    elapsed = time.monotonic() - started
    if elapsed > stats.slowest:
        stats.slowest, stats.slowest_plans = elapsed, list(plans_)
    if progress and stats.examples % progress == 0:
        now, _ = rig.rss()
        print(
            f"  {stats.examples} examples, rss {now} KiB (highest peak {rig.peak} KiB), "
            f"neighbour queries {rig.neighbour.queries if rig.neighbour else 0}",
            flush=True,
        )


def build(
    rig: Rig,
    examples_: int,
    *,
    seed: int | None = None,
    derandomize: bool = False,
    stats: Stats | None = None,
    progress: int = 0,
) -> Any:
    """The property over ``examples_`` examples against ``rig``: a function that raises on the
    first failure (not shrunk: the gateway is shared by every example)."""
    totals = stats if stats is not None else Stats()
    config = settings(
        max_examples=examples_,
        deadline=None,
        database=None,
        derandomize=derandomize,
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )

    @config
    @given(examples())
    def fuzz_mysql_listener(plans_: list[Plan]) -> None:
        run_example(rig, plans_, totals, progress)

    return hypothesis_seed(seed)(fuzz_mysql_listener) if seed is not None else fuzz_mysql_listener


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="hypothesis examples")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed, to reproduce")
    parser.add_argument("--workdir", type=Path, default=None, help="logs and failure dumps")
    parser.add_argument(
        "--progress", type=int, default=200, help="a progress line every N examples (0: none)"
    )
    options = parser.parse_args(argv)
    chosen = options.seed if options.seed is not None else random.randrange(2**32)
    print(f"seed {chosen} (reproduce with --seed {chosen})", flush=True)
    rig = Rig(options.workdir)
    stats = Stats()
    failed = False
    started = time.monotonic()
    try:
        print(
            f"gateway pid {rig.pid} (log {rig.log.path}), port {rig.port}, rss {rig.rss_start} KiB",
            flush=True,
        )
        try:
            build(rig, options.examples, seed=chosen, stats=stats, progress=options.progress)()
        except Exception as exc:
            failed = True
            sys.stdout.flush()
            traceback.print_exception(exc, limit=-3)
            sys.stderr.write(f"FAIL: {type(exc).__name__}: {exc}\n")
            sys.stderr.flush()
        now, _ = rig.rss()
        print(
            f"{stats.summary()}\nrss {rig.rss_start} -> {now} KiB (peak {rig.peak} KiB); "
            f"{time.monotonic() - started:.1f} s",
            flush=True,
        )
    finally:
        code = rig.stop()
    if code != 0:
        print(f"FAIL: the gateway's exit code on SIGTERM was {code}", flush=True)
        failed = True
    print(f"{'FAIL' if failed else 'ok'} seed {chosen}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
