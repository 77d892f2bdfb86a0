"""The MySQL path end to end: the gateway as a process in front of the real MariaDB on 3306,
driven by clients nobody here wrote (PyMySQL, the ``mariadb`` CLI) and, for the binary
protocol's COM_STMT_* commands that neither sends, a raw client built on the codec.

MariaDB must be running on 127.0.0.1:3306 (root, empty password, database ``test``): the
tests fail, never skip, if it is not.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiomysql
import pymysql
import pymysql.cursors
import pytest
import yaml

from resmesh.protocols.mysql import NEED_DATA, Connection, Role, State
from resmesh.protocols.mysql.auth import native_password_scramble
from resmesh.protocols.mysql.binary import decode_binary_row
from resmesh.protocols.mysql.constants import Capability, ColumnType, Command
from resmesh.protocols.mysql.events import Err, Event, Greeting, Ok, PrepareOkEvent, Row
from resmesh.protocols.mysql.handshake import HandshakeResponse, encode_handshake_response
from resmesh.protocols.mysql.statements import (
    ParamType,
    StmtClose,
    StmtExecute,
    StmtPrepare,
    StmtReset,
    encode_stmt_close,
    encode_stmt_execute,
    encode_stmt_prepare,
    encode_stmt_reset,
)
from tests.support.mariadb import connect_app
from tests.support.servers import Gateway, free_port, vm_rss_kib, wait_for

MARIADB_PORT = 3306
BACKEND_USER = "resmesh_gw"
BACKEND_PASSWORD = "gw-backend-secret"
CLUSTER = "orders-db"


def mysql_cluster_config(
    *, governance: dict[str, Any] | None = None, **cluster: Any
) -> dict[str, Any]:
    """A gateway config with one MySQL cluster in front of the local MariaDB; ``app``/``app``
    may log in to it, ``other`` may not (it is for another cluster)."""
    config: dict[str, Any] = {
        "gateway": {"drain_timeout": "5s"},
        "clusters": {
            CLUSTER: {
                "protocol": "mysql",
                "listen": f"127.0.0.1:{free_port()}",
                "groups": {"dc-a": [f"127.0.0.1:{MARIADB_PORT}"]},
                "backend": {
                    "username": BACKEND_USER,
                    "password": BACKEND_PASSWORD,
                    "connect_timeout": "2s",
                    "command_timeout": "10s",
                },
                **cluster,
            },
            "other": {
                "protocol": "mysql",
                "listen": f"127.0.0.1:{free_port()}",
                "groups": {"dc-a": [f"127.0.0.1:{MARIADB_PORT}"]},
                "backend": {"username": BACKEND_USER, "password": BACKEND_PASSWORD},
            },
        },
        "users": {
            "app": {"password": "app", "clusters": [CLUSTER]},
            "other": {"password": "other", "clusters": ["other"]},
        },
    }
    if governance is not None:
        config["clusters"][CLUSTER]["governance"] = governance
    return config


@pytest.fixture(scope="module")
def mariadb() -> None:
    """The local MariaDB, with the gateway's own backend login created (idempotently)."""
    try:
        root = pymysql.connect(
            host="127.0.0.1", port=MARIADB_PORT, user="root", password="", database="test"
        )
    except pymysql.err.OperationalError as exc:
        pytest.fail(f"MariaDB is not running on 127.0.0.1:{MARIADB_PORT} (root, test): {exc}")
    with root, root.cursor() as cur:
        for host in ("127.0.0.1", "localhost"):
            account = f"'{BACKEND_USER}'@'{host}'"
            cur.execute(f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY '{BACKEND_PASSWORD}'")
            cur.execute(f"ALTER USER {account} IDENTIFIED BY '{BACKEND_PASSWORD}'")
            cur.execute(f"GRANT ALL ON test.* TO {account}")


@pytest.fixture(scope="module")
def gw(mariadb: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(mysql_cluster_config(), tmp_path_factory.mktemp("gw"))
    yield gateway
    assert gateway.terminate() == 0, gateway.log()


def connect(gateway: Gateway, **kwargs: Any) -> pymysql.Connection[Any]:
    connection: pymysql.Connection[Any] = connect_app(gateway.port, **kwargs)
    return connection


def mariadb_cli(port: int, sql: str, *, password: str = "app") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "mariadb",
            "-h",
            "127.0.0.1",
            "-P",
            str(port),
            "-u",
            "app",
            f"-p{password}",
            "test",
            "--batch",
            "-e",
            sql,
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


# ------------------------------------------------------------------------------------------------
# The mariadb CLI


def test_mariadb_cli_batch_select(gw: Gateway) -> None:
    done = mariadb_cli(gw.port, "SELECT 1 AS one, DATABASE() AS db")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["one\tdb", "1\ttest"]


def test_mariadb_cli_sql_prepare_and_execute(gw: Gateway) -> None:
    done = mariadb_cli(
        gw.port,
        "PREPARE s FROM 'SELECT ? + 1 AS answer'; SET @a = 41; EXECUTE s USING @a; "
        "DEALLOCATE PREPARE s",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["answer", "42"]


def test_mariadb_cli_bad_password_is_refused_with_1045(gw: Gateway) -> None:
    done = mariadb_cli(gw.port, "SELECT 1", password="wrong")
    assert done.returncode != 0
    assert "ERROR 1045 (28000)" in done.stderr
    assert "Access denied for user 'app'@'127.0.0.1' (using password: YES)" in done.stderr


# ------------------------------------------------------------------------------------------------
# PyMySQL


def test_login_errors_are_mariadbs(gw: Gateway) -> None:
    cases = [("app", "wrong"), ("nobody", "app"), ("other", "other")]  # other: not this cluster
    for user, password in cases:
        with pytest.raises(pymysql.err.OperationalError) as refused:
            connect(gw, user=user, password=password)
        assert refused.value.args == (
            1045,
            f"Access denied for user '{user}'@'127.0.0.1' (using password: YES)",
        )
    with pytest.raises(pymysql.err.OperationalError) as refused:
        connect(gw, password="")
    assert refused.value.args[0] == 1045
    assert "(using password: NO)" in refused.value.args[1]


def test_unknown_database_at_login_is_the_nodes_answer(gw: Gateway) -> None:
    with pytest.raises(pymysql.err.OperationalError) as refused:
        connect(gw, database="no_such_db_here")
    assert refused.value.args == (
        1044,
        "Access denied for user 'app'@'127.0.0.1' to database 'no_such_db_here'",
    )


def test_backend_credentials_never_reach_the_app(gw: Gateway) -> None:
    with connect(gw) as conn, conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        (current,) = cur.fetchone()
    assert current.startswith(f"{BACKEND_USER}@")  # the node sees the gateway's login...
    assert BACKEND_PASSWORD not in gw.log()  # ...whose password is never logged


def test_ddl_dml_commit_rollback_and_errno_passthrough(gw: Gateway) -> None:
    with connect(gw, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS gw_orders")
        cur.execute(
            "CREATE TABLE gw_orders (id INT AUTO_INCREMENT PRIMARY KEY, sku VARCHAR(32) UNIQUE)"
        )
        cur.execute("INSERT INTO gw_orders (sku) VALUES ('a')")
        first = cur.lastrowid
        cur.execute("SELECT LAST_INSERT_ID()")
        assert cur.fetchone() == (first,)

        with pytest.raises(pymysql.err.IntegrityError) as dup:
            cur.execute("INSERT INTO gw_orders (sku) VALUES ('a')")
        assert dup.value.args[0] == 1062
        with pytest.raises(pymysql.err.ProgrammingError) as missing:
            cur.execute("SELECT * FROM gw_no_such_table")
        assert missing.value.args[0] == 1146
        with pytest.raises(pymysql.err.ProgrammingError) as syntax:
            cur.execute("SELEKT 1")
        assert syntax.value.args[0] == 1064

        conn.autocommit(False)
        cur.execute("INSERT INTO gw_orders (sku) VALUES ('rolled-back')")
        assert conn.get_server_info()
        assert conn.server_status & 0x0001  # SERVER_STATUS_IN_TRANS, as the node says
        conn.rollback()
        cur.execute("INSERT INTO gw_orders (sku) VALUES ('committed')")
        conn.commit()
        conn.autocommit(True)
        cur.execute("SELECT sku FROM gw_orders ORDER BY id")
        assert [row[0] for row in cur.fetchall()] == ["a", "committed"]

        cur.execute("USE information_schema")
        cur.execute("SELECT DATABASE()")
        assert cur.fetchone() == ("information_schema",)
        conn.select_db("test")  # COM_INIT_DB
        cur.execute("SELECT DATABASE()")
        assert cur.fetchone() == ("test",)
        conn.ping(reconnect=False)
        cur.execute("DROP TABLE gw_orders")


def test_multi_statements_and_multi_results(gw: Gateway) -> None:
    flags = pymysql.constants.CLIENT.MULTI_STATEMENTS
    with connect(gw, client_flag=flags) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1; SELECT 2, 3; DO 0; SELECT 'x'")
        assert cur.fetchall() == ((1,),)
        assert cur.nextset()
        assert cur.fetchall() == ((2, 3),)
        assert cur.nextset()
        assert not cur.fetchall()  # DO: an OK, no rows
        assert cur.nextset()
        assert cur.fetchall() == (("x",),)
        assert not cur.nextset()
        # An error ends the results; the session goes on.
        with pytest.raises(pymysql.err.ProgrammingError):
            cur.execute("SELECT 1; SELEKT 2")
            cur.nextset()
        cur.execute("SELECT 5")
        assert cur.fetchone() == (5,)


def test_a_blob_over_10_mib_round_trips(gw: Gateway) -> None:
    blob = bytes(range(256)) * (10_600_000 // 256)
    chunk = 3_000_000  # PyMySQL sends bytes as hex: keep each query under 16 MiB
    with connect(gw, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS gw_blobs")
        cur.execute("CREATE TABLE gw_blobs (id INT PRIMARY KEY, b LONGBLOB)")
        cur.execute("INSERT INTO gw_blobs VALUES (1, '')")
        for start in range(0, len(blob), chunk):
            cur.execute(
                "UPDATE gw_blobs SET b = CONCAT(b, %s) WHERE id = 1", (blob[start : start + chunk],)
            )
        cur.execute("SELECT b, LENGTH(b) FROM gw_blobs WHERE id = 1")
        value, length = cur.fetchone()
        assert length == len(blob) > 10 * 1024 * 1024
        assert value == blob
        cur.execute("DROP TABLE gw_blobs")


def test_100000_rows_are_streamed_not_buffered(gw: Gateway) -> None:
    """40 MB of rows pass through the gateway with its memory growing far less than that."""
    with connect(gw, cursorclass=pymysql.cursors.SSCursor) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        cur.fetchall()
        before = vm_rss_kib(gw.proc.pid)
        cur.execute("SELECT seq, REPEAT('x', 400) FROM seq_1_to_100000")
        count = 0
        peak = before
        for seq, text in cur:
            count += 1
            assert seq == count and len(text) == 400
            if count % 10000 == 0:
                peak = max(peak, vm_rss_kib(gw.proc.pid))
        assert count == 100_000
    assert peak - before < 20 * 1024, f"gateway RSS grew {peak - before} KiB"


def test_connections_are_reused_and_reset_between_sessions(gw: Gateway) -> None:
    with connect(gw) as conn, conn.cursor() as cur:
        cur.execute("SET @leftover = 42")
        cur.execute("USE information_schema")
        cur.execute("BEGIN")
        cur.execute("SELECT CONNECTION_ID()")
        (first,) = cur.fetchone()
    with connect(gw) as conn, conn.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID(), @leftover, DATABASE(), @@in_transaction")
        second, leftover, database, in_transaction = cur.fetchone()
    assert second == first  # the same backend connection, from the pool
    # COM_RESET_CONNECTION cleared the last session's variables and transaction, and the
    # database it logged in with is selected again.
    assert (leftover, database, in_transaction) == (None, "test", 0)


# ------------------------------------------------------------------------------------------------
# Prepared statements (COM_STMT_*), with a raw client on the codec: neither PyMySQL nor the CLI
# sends them.


class RawClient:
    """A blocking MySQL client on the codec's client role."""

    def __init__(self, port: int, user: str = "app", password: str = "app") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.conn = Connection(Role.CLIENT)
        greeting = self.next_event()
        assert isinstance(greeting, Greeting)
        caps = (
            Capability.LONG_PASSWORD
            | Capability.PROTOCOL_41
            | Capability.SECURE_CONNECTION
            | Capability.PLUGIN_AUTH
            | Capability.CONNECT_WITH_DB
            | Capability.TRANSACTIONS
            | Capability.MULTI_RESULTS
            | Capability.PS_MULTI_RESULTS
            | Capability.DEPRECATE_EOF
        )
        response = HandshakeResponse(
            capabilities=Capability(caps),
            username=user,
            auth_response=native_password_scramble(password.encode(), self.conn.scramble),
            database="test",
            auth_plugin_name="mysql_native_password",
        )
        self.sock.sendall(self.conn.send(encode_handshake_response(response)))
        assert isinstance(self.next_event(), Ok)

    def next_event(self) -> Event:
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                self.conn.receive_data(self.sock.recv(65536))
                continue
            assert isinstance(event, Event)
            return event

    def command(self, payload: bytes) -> list[Event]:
        self.sock.sendall(self.conn.send(payload))
        if payload[0] in (Command.STMT_CLOSE, Command.STMT_SEND_LONG_DATA):
            return []
        events = [self.next_event()]
        while self.conn.state is not State.IDLE:
            events.append(self.next_event())
        return events

    def close(self) -> None:
        self.sock.close()


def test_prepared_statements_prepare_execute_reset_close(gw: Gateway) -> None:
    client = RawClient(gw.port)
    try:
        reply = client.command(encode_stmt_prepare(StmtPrepare(b"SELECT ? + 1, CONCAT(?, '!')")))
        prepared = reply[0]
        assert isinstance(prepared, PrepareOkEvent)
        assert (prepared.prepare.num_params, prepared.prepare.num_columns) == (2, 2)
        statement = prepared.prepare.statement_id
        types = (ParamType(ColumnType.LONGLONG), ParamType(ColumnType.VAR_STRING))
        for number in (41, 99):
            execute = StmtExecute(statement_id=statement, values=(number, b"hi"), param_types=types)
            events = client.command(encode_stmt_execute(execute))
            rows = [e for e in events if isinstance(e, Row)]
            assert len(rows) == 1
            columns = [(ColumnType.LONGLONG, False), (ColumnType.VAR_STRING, False)]
            values = decode_binary_row(rows[0].packet.payload, columns)
            assert values == (number + 1, b"hi!")
        assert isinstance(client.command(encode_stmt_reset(StmtReset(statement)))[-1], Ok)
        assert client.command(encode_stmt_close(StmtClose(statement))) == []
        # The statement is gone on the node: its id is refused there (1243).
        execute = StmtExecute(statement_id=statement, values=(1, b"x"), param_types=types)
        err = client.command(encode_stmt_execute(execute))[-1]
        assert isinstance(err, Err) and err.error.errno == 1243
        # COM_PING still answers on the same session.
        assert isinstance(client.command(bytes((Command.PING,)))[-1], Ok)
    finally:
        client.close()


def test_malformed_packets_get_an_err_and_the_connection_closes(gw: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.recv(65536)  # the greeting
        sock.sendall(b"\x05\x00\x00\x01hello")  # a handshake response that is not one
        data = sock.recv(65536)
        assert data[4] == 0xFF  # an ERR packet
        errno = int.from_bytes(data[5:7], "little")
        assert errno in (1043, 1835)
        assert sock.recv(65536) == b""  # then the gateway closes
    with connect(gw) as conn, conn.cursor() as cur:  # and serves others as before
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


def test_out_of_order_command_is_refused_with_1156(gw: Gateway) -> None:
    client = RawClient(gw.port)
    try:
        client.sock.sendall(b"\x01\x00\x00\x07\x0e")  # COM_PING with sequence id 7
        data = client.sock.recv(65536)
        assert data[4] == 0xFF and int.from_bytes(data[5:7], "little") == 1156
    finally:
        client.close()


# ------------------------------------------------------------------------------------------------
# Governance


@pytest.fixture
def start_mysql_gateway(mariadb: None, tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def start(**kwargs: Any) -> Gateway:
        gateway = Gateway(mysql_cluster_config(**kwargs), tmp_path)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        assert gateway.terminate() == 0, gateway.log()


def test_readonly_switch_refuses_writes_with_1290_and_serves_reads(
    start_mysql_gateway: Callable[..., Gateway],
) -> None:
    gateway = start_mysql_gateway(governance={"switch": {"mode": "readonly"}})
    flags = pymysql.constants.CLIENT.MULTI_STATEMENTS
    with connect(gateway, client_flag=flags) as conn, conn.cursor() as cur:
        cur.execute("SELECT 7")
        assert cur.fetchone() == (7,)
        for sql in (
            "INSERT INTO gw_never (id) VALUES (1)",
            "CREATE TABLE gw_never (id INT)",
            "SELECT 1; DELETE FROM gw_never",  # a write hidden after a read
        ):
            with pytest.raises(pymysql.err.OperationalError) as refused:
                cur.execute(sql)
            errno, message = refused.value.args
            assert errno == 1290
            assert f"read-only by switch {CLUSTER}" in message
        cur.execute("SHOW TABLES LIKE 'gw_never'")
        assert cur.fetchall() == ()
    root = pymysql.connect(host="127.0.0.1", port=MARIADB_PORT, user="root", database="test")
    with root, root.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS gw_ro (id INT)")
    client = RawClient(gateway.port)
    try:  # a prepared write is refused at its execution, by its statement's verb
        prepared = client.command(encode_stmt_prepare(StmtPrepare(b"INSERT INTO gw_ro VALUES (?)")))
        event = prepared[0]
        assert isinstance(event, PrepareOkEvent)
        execute = StmtExecute(
            statement_id=event.prepare.statement_id,
            values=(1,),
            param_types=(ParamType(ColumnType.LONGLONG),),
        )
        refused = client.command(encode_stmt_execute(execute))[-1]
        assert isinstance(refused, Err) and refused.error.errno == 1290
        prepared = client.command(encode_stmt_prepare(StmtPrepare(b"SELECT COUNT(*) FROM gw_ro")))
        event = prepared[0]
        assert isinstance(event, PrepareOkEvent)
        served = client.command(encode_stmt_execute(StmtExecute(statement_id=0xFFFFFFFF)))
        assert [type(e) for e in served if isinstance(e, Row)] == [Row]
    finally:
        client.close()
        root = pymysql.connect(host="127.0.0.1", port=MARIADB_PORT, user="root", database="test")
        with root, root.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS gw_ro")


def test_a_fallback_switch_answers_reads_with_its_value_and_acknowledges_writes(
    start_mysql_gateway: Callable[..., Gateway],
) -> None:
    gateway = start_mysql_gateway(governance={"switch": {"mode": "fallback", "value": "n/a"}})
    with connect(gateway) as conn, conn.cursor() as cur:
        cur.execute("SELECT name FROM gw_users WHERE id = 1")
        assert cur.fetchall() == (("n/a",),)
        assert [column[0] for column in cur.description] == ["value"]
        assert cur.execute("INSERT INTO gw_never (id) VALUES (1)") == 0  # nothing changed
        cur.execute("SELECT 1")  # the session goes on
        assert cur.fetchall() == (("n/a",),)
    listed = mariadb_cli(gateway.port, "SELECT 1")  # the mariadb client, its own flags
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == ["value", "n/a"]
    root = pymysql.connect(host="127.0.0.1", port=MARIADB_PORT, user="root", database="test")
    with root, root.cursor() as cur:
        cur.execute("SHOW TABLES LIKE 'gw_never'")
        assert cur.fetchall() == ()


def test_error_switch_names_itself_and_ping_still_answers(
    start_mysql_gateway: Callable[..., Gateway],
) -> None:
    gateway = start_mysql_gateway(governance={"switch": {"mode": "error"}})
    with connect(gateway) as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.OperationalError) as refused:
            cur.execute("SELECT 1")
        errno, message = refused.value.args
        assert errno == 1105
        assert f"degraded by switch {CLUSTER} (mode error)" in message
        conn.ping(reconnect=False)


def test_a_limit_refuses_with_1203_naming_it(start_mysql_gateway: Callable[..., Gateway]) -> None:
    gateway = start_mysql_gateway(
        governance={"operations": {"SELECT": {"limit": {"rate": 0.001, "burst": 2}}}}
    )
    with connect(gateway) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        cur.execute("SELECT 2")
        with pytest.raises(pymysql.err.OperationalError) as refused:
            cur.execute("SELECT 3")
        errno, message = refused.value.args
        assert errno == 1203
        assert f"rate limit of {CLUSTER} SELECT" in message
        cur.execute("DO 1")  # another operation: not limited


def test_a_users_limit_spans_its_sessions_and_refuses_with_1203_naming_the_user(
    mariadb: None, tmp_path: Path
) -> None:
    """``users.app.limit: {concurrency: 1}``: while one of app's sessions runs a query,
    another of its sessions is refused; another user is not."""
    config = mysql_cluster_config()
    config["users"]["app"]["limit"] = {"concurrency": 1}
    config["users"]["second"] = {"password": "second", "clusters": [CLUSTER]}
    gateway = Gateway(config, tmp_path)
    root = pymysql.connect(host="127.0.0.1", port=MARIADB_PORT, user="root", database="test")
    try:
        with connect(gateway) as one, connect(gateway) as two, two.cursor() as cur:
            sleeper = threading.Thread(target=lambda: one.cursor().execute("SELECT SLEEP(2)"))
            sleeper.start()

            def sleeping() -> bool:
                with root.cursor() as look:
                    look.execute(
                        "SELECT COUNT(*) FROM information_schema.PROCESSLIST"
                        " WHERE INFO = 'SELECT SLEEP(2)'"
                    )
                    return bool(look.fetchone()[0])

            wait_for(sleeping, 10, "app's first query to run")
            with pytest.raises(pymysql.err.OperationalError) as refused:
                cur.execute("SELECT 1")
            assert refused.value.args == (
                1203,
                f"resmesh: concurrency limit of user app on {CLUSTER} (1) exceeded",
            )
            with connect(gateway, user="second", password="second") as other, other.cursor() as c:
                c.execute("SELECT 4")  # another user: not limited
                assert c.fetchone() == (4,)
            sleeper.join(10)
            cur.execute("SELECT 5")  # the slot is free again
            assert cur.fetchone() == (5,)
    finally:
        root.close()
        assert gateway.terminate() == 0, gateway.log()


def test_aiomysql_queries_and_a_transaction(gw: Gateway) -> None:
    async def run() -> list[Any]:
        conn = await aiomysql.connect(
            host="127.0.0.1", port=gw.port, user="app", password="app", db="test"
        )
        try:
            async with conn.cursor() as cur:
                await cur.execute("CREATE TEMPORARY TABLE gw_tmp (n INT)")
                await conn.begin()
                await cur.execute("INSERT INTO gw_tmp VALUES (1), (2)")
                await conn.commit()
                await cur.execute("SELECT SUM(n), %s FROM gw_tmp", ("x",))
                return list(await cur.fetchone())
        finally:
            conn.close()

    assert asyncio.run(run()) == [3, "x"]


def test_max_clients_turns_a_client_away_with_1040(
    start_mysql_gateway: Callable[..., Gateway],
) -> None:
    gateway = start_mysql_gateway(limits={"max_clients": 1})
    with connect(gateway) as first:
        with pytest.raises(pymysql.err.OperationalError) as refused:
            connect(gateway)
        assert refused.value.args == (1040, "Too many connections")
        with first.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)


def test_a_lost_backend_connection_ends_the_session_with_an_error(gw: Gateway) -> None:
    victim = connect(gw)
    with victim.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        (backend_id,) = cur.fetchone()
    root = pymysql.connect(host="127.0.0.1", port=MARIADB_PORT, user="root", database="test")
    with root, root.cursor() as cur:
        cur.execute(f"KILL {int(backend_id)}")
    with pytest.raises(pymysql.err.OperationalError) as lost, victim.cursor() as cur:
        cur.execute("SELECT 1")
    assert lost.value.args == (
        1105,
        f"resmesh: backend 127.0.0.1:{MARIADB_PORT}: the node closed the connection",
    )
    victim.close()
    with connect(gw) as conn, conn.cursor() as cur:  # a new session gets a working connection
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)


def test_the_quickstarts_user_db_as_shipped(mariadb: None, tmp_path: Path) -> None:
    """examples/quickstart.yaml's MySQL cluster (its port moved to a free one): the user
    `app` logs in with the mariadb CLI; the backend login is root with an empty password,
    as on a fresh MariaDB."""
    quickstart = yaml.safe_load(
        (Path(__file__).parents[2] / "examples/quickstart.yaml").read_text()
    )
    cluster = quickstart["clusters"]["user-db"]
    assert cluster["listen"] == "127.0.0.1:3307"
    cluster["listen"] = f"127.0.0.1:{free_port()}"
    config = {"users": quickstart["users"], "clusters": {"user-db": cluster}}
    gateway = Gateway(config, tmp_path)
    try:
        ran = mariadb_cli(gateway.port, "SELECT 40 + 2 AS answer")
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.split() == ["answer", "42"]
        refused = mariadb_cli(gateway.port, "SELECT 1", password="wrong")
        assert refused.returncode != 0 and "1045" in refused.stderr
    finally:
        assert gateway.terminate() == 0, gateway.log()


def test_an_over_large_query_is_pymysqls_1153(
    start_mysql_gateway: Callable[..., Gateway],
) -> None:
    """The ERR comes with the sequence id the client expects after its packet, so the client
    reports the gateway's error rather than a broken connection."""
    gateway = start_mysql_gateway(mysql={"max_allowed_packet": "1KiB"})
    with (
        connect(gateway) as conn,
        conn.cursor() as cur,
        pytest.raises(pymysql.err.OperationalError) as refused,
    ):
        cur.execute("SELECT '" + "x" * 4096 + "'")
    assert refused.value.args[0] == 1153
