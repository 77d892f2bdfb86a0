"""Reads on replicas: a MySQL cluster of a primary and a real MariaDB replica of it (both
``mariadbd`` instances started here, replicating), clients through the gateway.

Each read says where it ran with ``@@server_id`` (1: the primary, 2: the replica). The
primary's weight is 0, so every read that may leave it goes to the replica.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
from pymysql.constants import CLIENT

from tests.support.mariadb import MariaDBServer, connect_app, start_replica, wait_replicated
from tests.support.servers import Gateway, free_port, resmesh, wait_for

PRIMARY, REPLICA = 1, 2


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[MariaDBServer, MariaDBServer]]:
    root = tmp_path_factory.mktemp("mariadb")
    primary = MariaDBServer(root / "primary", server_id=PRIMARY, log_bin=True)
    primary.start()
    try:
        replica = start_replica(primary, root / "replica", server_id=REPLICA)
        try:
            primary.execute("CREATE TABLE IF NOT EXISTS kv (k INT PRIMARY KEY, v TEXT)")
            primary.execute("REPLACE INTO kv VALUES (1, 'one')")
            wait_replicated(primary, replica)
            yield primary, replica
        finally:
            replica.stop()
    finally:
        primary.stop()


def _config(primary: MariaDBServer, replica: MariaDBServer) -> dict[str, Any]:
    return {
        "gateway": {"drain_timeout": "5s"},
        "clusters": {
            "orders-db": {
                "protocol": "mysql",
                "listen": f"127.0.0.1:{free_port()}",
                "groups": {
                    "dc-a": [
                        {"address": f"127.0.0.1:{primary.port}", "role": "primary", "weight": 0},
                        {"address": f"127.0.0.1:{replica.port}", "role": "replica"},
                    ]
                },
                "backend": {"username": "root", "password": "", "connect_timeout": "2s"},
            }
        },
        "users": {"app": {"password": "app", "clusters": ["orders-db"]}},
    }


@pytest.fixture
def gateway(servers: tuple[MariaDBServer, MariaDBServer], tmp_path: Path) -> Iterator[Gateway]:
    gateway = Gateway(_config(*servers), tmp_path)
    yield gateway
    assert gateway.terminate() == 0, gateway.log()


def _connect(gateway: Gateway, **kwargs: Any) -> pymysql.Connection[Any]:
    """The gateway user's session, in autocommit mode unless ``kwargs`` say otherwise."""
    connection: pymysql.Connection[Any] = connect_app(
        gateway.port, **{"autocommit": True, **kwargs}
    )
    return connection


def _one(conn: pymysql.Connection[Any], sql: str) -> tuple[Any, ...]:
    with conn.cursor() as cur:
        cur.execute(sql)
        row = cur.fetchone()
    assert row is not None
    return tuple(row)


def test_reads_go_to_the_replica_and_writes_and_transactions_to_the_primary(
    gateway: Gateway,
) -> None:
    with _connect(gateway) as conn:
        assert _one(conn, "SELECT v, @@server_id FROM kv WHERE k = 1") == ("one", REPLICA)
        assert _one(conn, "SELECT v, @@server_id FROM kv WHERE k = 1 FOR UPDATE")[1] == PRIMARY
        conn.begin()
        assert _one(conn, "SELECT @@server_id") == (PRIMARY,)
        conn.commit()
    with _connect(gateway, autocommit=False) as conn:  # PyMySQL's default: in a transaction
        assert _one(conn, "SELECT @@server_id") == (PRIMARY,)


def test_a_session_reads_its_own_writes(
    gateway: Gateway, servers: tuple[MariaDBServer, MariaDBServer]
) -> None:
    with _connect(gateway) as conn:
        with conn.cursor() as cur:
            cur.execute("REPLACE INTO kv VALUES (2, 'two')")
        # Right after its write the session reads on the primary, where the row is.
        assert _one(conn, "SELECT v, @@server_id FROM kv WHERE k = 2") == ("two", PRIMARY)
    wait_replicated(*servers)
    with _connect(gateway) as other:
        assert _one(other, "SELECT v, @@server_id FROM kv WHERE k = 2") == ("two", REPLICA)


def test_the_session_s_database_and_settings_are_repeated_on_the_replica(
    gateway: Gateway, servers: tuple[MariaDBServer, MariaDBServer]
) -> None:
    primary, replica = servers
    primary.execute("CREATE DATABASE IF NOT EXISTS shop")
    wait_replicated(primary, replica)
    with _connect(gateway) as conn:
        with conn.cursor() as cur:
            cur.execute("SET time_zone = '+05:00'")
            cur.execute("SET NAMES latin1")
            cur.execute("USE shop")
        row = _one(conn, "SELECT @@time_zone, @@character_set_client, DATABASE(), @@server_id")
        assert row == ("+05:00", "latin1", "shop", REPLICA)
    with _connect(gateway) as fresh:  # a lent connection never leaks one session's settings
        row = _one(fresh, "SELECT @@time_zone, DATABASE(), @@server_id")
        assert row == ("SYSTEM", "test", REPLICA)


def test_session_state_that_lives_on_the_primary_keeps_reads_there(gateway: Gateway) -> None:
    with _connect(gateway) as conn:
        with conn.cursor() as cur:
            cur.execute("SET @mine = 7")
            cur.execute("SELECT @mine, @@server_id")
            assert cur.fetchone() == (7, PRIMARY)
            cur.execute("CREATE TEMPORARY TABLE scratch (a INT)")
            cur.execute("INSERT INTO scratch VALUES (1)")
        conn.ping()
        assert _one(conn, "SELECT a, @@server_id FROM scratch") == (1, PRIMARY)
        conn.select_db("test")
        # Every later read stays on the primary, where the temporary table lives.
        assert _one(conn, "SELECT @@server_id") == (PRIMARY,)


def test_a_dead_replica_s_reads_are_answered_by_the_primary(
    servers: tuple[MariaDBServer, MariaDBServer], tmp_path: Path
) -> None:
    primary, _ = servers
    with start_replica(primary, tmp_path / "second", server_id=3) as second:
        gateway = Gateway(_config(primary, second), tmp_path)
        try:
            with _connect(gateway) as conn, _connect(gateway) as other:
                assert _one(conn, "SELECT @@server_id") == (3,)
                second.kill()
                for _ in range(5):  # retried on the primary: nothing had reached the client
                    assert _one(conn, "SELECT v, @@server_id FROM kv WHERE k = 1") == (
                        "one",
                        PRIMARY,
                    )
                assert _one(other, "SELECT @@server_id") == (PRIMARY,)
        finally:
            assert gateway.terminate() == 0, gateway.log()


def _home_server(conn: pymysql.Connection[Any]) -> int:
    """The server id of the session's own node (``CONNECTION_ID()`` keeps a read there)."""
    server, _ = _one(conn, "SELECT @@server_id, CONNECTION_ID()")
    return int(server)


def test_a_new_primary_takes_each_session_at_its_next_safe_point(
    servers: tuple[MariaDBServer, MariaDBServer], tmp_path: Path
) -> None:
    """``ctl primary``: an idle session moves at its next command with its settings and its
    ``LAST_INSERT_ID()``; one in a transaction finishes it where it is, then moves; one whose
    state cannot move (a user variable) is told to reconnect (1927), never silently
    replayed."""
    primary, replica = servers
    primary.execute("CREATE TABLE IF NOT EXISTS seq (id INT AUTO_INCREMENT PRIMARY KEY)")
    wait_replicated(primary, replica)
    gateway = Gateway(_config(primary, replica), tmp_path)
    try:
        with (
            _connect(gateway) as idle,
            _connect(gateway) as busy,
            _connect(gateway) as stuck,
        ):
            with idle.cursor() as cur:
                cur.execute("SET time_zone = '+03:00'")
                cur.execute("INSERT INTO seq VALUES ()")
                inserted = cur.lastrowid
            assert inserted > 0
            with stuck.cursor() as cur:
                cur.execute("SET @mine = 1")
            busy.begin()
            assert _home_server(busy) == PRIMARY

            done = resmesh(
                "ctl", "-c", str(gateway.config_path), "primary", "orders-db",
                f"127.0.0.1:{replica.port}",
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            with _connect(gateway) as probe:
                wait_for(lambda: _home_server(probe) == REPLICA, 5, "the new primary")

            assert _home_server(idle) == REPLICA
            assert _one(idle, "SELECT @@time_zone, LAST_INSERT_ID()") == ("+03:00", inserted)
            assert _home_server(busy) == PRIMARY  # its transaction stays where it began
            busy.commit()
            assert _home_server(busy) == REPLICA
            with pytest.raises(pymysql.err.OperationalError) as ended:
                _home_server(stuck)
            assert ended.value.args[0] == 1927
            assert "user variables" in ended.value.args[1]
    finally:
        assert gateway.terminate() == 0, gateway.log()


def test_a_route_shift_moves_the_reads_of_idle_sessions(
    servers: tuple[MariaDBServer, MariaDBServer], tmp_path: Path
) -> None:
    """Reads choose their node per query: a shift between data centers applies to the next
    read of a session that is already open."""
    primary, replica = servers
    config = _config(primary, replica)
    cluster = config["clusters"]["orders-db"]
    cluster["groups"] = {
        "dc-a": [{"address": f"127.0.0.1:{primary.port}", "role": "primary"}],
        "dc-b": [{"address": f"127.0.0.1:{replica.port}", "role": "replica"}],
    }
    cluster["route"] = {"dc-a": 100, "dc-b": 0}
    gateway = Gateway(config, tmp_path)
    try:
        with _connect(gateway) as conn:
            assert _one(conn, "SELECT @@server_id") == (PRIMARY,)
            done = resmesh(
                "ctl", "-c", str(gateway.config_path), "shift", "orders-db", "dc-a=0", "dc-b=100"
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            wait_for(lambda: _one(conn, "SELECT @@server_id") == (REPLICA,), 5, "the shift")
            assert _home_server(conn) == PRIMARY  # the session itself stays on the primary
    finally:
        assert gateway.terminate() == 0, gateway.log()


def test_a_primary_killed_in_a_transaction_ends_the_session_and_nothing_is_replayed(
    tmp_path: Path,
) -> None:
    node = MariaDBServer(tmp_path / "node", server_id=7)
    node.start()
    gateway = None
    try:
        node.execute("CREATE TABLE IF NOT EXISTS ledger (id INT PRIMARY KEY)")
        config = _config(node, node)
        config["clusters"]["orders-db"]["groups"] = {"dc-a": [f"127.0.0.1:{node.port}"]}
        gateway = Gateway(config, tmp_path)
        with _connect(gateway) as conn:
            conn.begin()
            with conn.cursor() as cur:
                cur.execute("INSERT INTO ledger VALUES (1)")
            node.kill()
            with pytest.raises(pymysql.err.OperationalError) as lost, conn.cursor() as cur:
                cur.execute("INSERT INTO ledger VALUES (2)")
            assert lost.value.args[0] == 1105
            assert f"127.0.0.1:{node.port}" in lost.value.args[1]
        node.start()
        with _connect(gateway) as fresh:  # the transaction died with the node: no row
            assert _one(fresh, "SELECT COUNT(*) FROM ledger") == (0,)
    finally:
        if gateway is not None:
            assert gateway.terminate() == 0, gateway.log()
        node.stop()


def test_a_replica_that_stops_answering_has_its_reads_answered_by_the_primary(
    servers: tuple[MariaDBServer, MariaDBServer], tmp_path: Path
) -> None:
    """A replica frozen mid-read (SIGSTOP): past ``backend.command_timeout`` the read, of
    which nothing reached the client, runs on the primary; the session goes on."""
    primary, _ = servers
    with start_replica(primary, tmp_path / "frozen", server_id=4) as frozen:
        config = _config(primary, frozen)
        config["clusters"]["orders-db"]["backend"]["command_timeout"] = "1s"
        gateway = Gateway(config, tmp_path)
        process = frozen.process
        assert process is not None
        try:
            with _connect(gateway) as conn:
                for _ in range(3):  # the replica's lent connection is pooled and reused
                    assert _one(conn, "SELECT @@server_id") == (4,)
                process.send_signal(signal.SIGSTOP)
                try:
                    assert _one(conn, "SELECT v, @@server_id FROM kv WHERE k = 1") == (
                        "one",
                        PRIMARY,
                    )
                finally:
                    process.send_signal(signal.SIGCONT)
                assert _one(conn, "SELECT @@server_id, CONNECTION_ID()")[0] == PRIMARY
            assert f"no answer from 127.0.0.1:{frozen.port} within 1s" in gateway.log()
        finally:
            assert gateway.terminate() == 0, gateway.log()


def test_a_read_refused_by_a_limit_leaves_no_route_for_the_next_command(
    servers: tuple[MariaDBServer, MariaDBServer], tmp_path: Path
) -> None:
    """The poller's task picks the replica for a read, the limit then refuses it: the next
    command (a write too large for the poller's task) still goes to the primary."""
    primary, _ = servers
    primary.execute("CREATE TABLE IF NOT EXISTS notes (id INT PRIMARY KEY, body MEDIUMTEXT)")
    config = _config(*servers)
    config["clusters"]["orders-db"]["governance"] = {
        "operations": {"SELECT": {"limit": {"rate": 1, "burst": 1}}}
    }
    gateway = Gateway(config, tmp_path)
    try:
        with _connect(gateway) as conn:
            assert _one(conn, "SELECT @@server_id") == (REPLICA,)
            with conn.cursor() as cur:  # no lent connection has this: the task must lend one
                cur.execute("SET time_zone = '+01:00'")
            with pytest.raises(pymysql.err.OperationalError) as limited:
                _one(conn, "SELECT @@server_id")
            assert limited.value.args[0] == 1203
            with conn.cursor() as cur:
                cur.execute("REPLACE INTO notes VALUES (1, %s)", ("x" * 20_000,))
        assert primary.execute("SELECT LENGTH(body) FROM notes WHERE id = 1") == [(20_000,)]
    finally:
        assert gateway.terminate() == 0, gateway.log()


def test_what_the_session_cannot_repeat_elsewhere_keeps_its_reads_home(
    gateway: Gateway, servers: tuple[MariaDBServer, MariaDBServer]
) -> None:
    """SET STATEMENT ... FOR runs one statement (never repeated on a replica); a SET from a
    user variable and a multi-statement query that ended in an error after creating a
    temporary table keep the session's reads on the primary."""
    primary, replica = servers
    with _connect(gateway) as conn, conn.cursor() as cur:
        cur.execute("REPLACE INTO kv VALUES (3, 'a')")
        cur.execute(
            "SET STATEMENT max_statement_time = 100"
            " FOR UPDATE kv SET v = CONCAT(v, 'b') WHERE k = 3"
        )
    wait_replicated(primary, replica)
    with _connect(gateway) as reader:
        assert _one(reader, "SELECT v, @@server_id FROM kv WHERE k = 3") == ("ab", REPLICA)
    wait_replicated(primary, replica)
    assert primary.execute("SELECT v FROM kv WHERE k = 3") == [("ab",)]
    assert replica.execute("SELECT v FROM kv WHERE k = 3") == [("ab",)]  # not run twice

    with _connect(gateway) as conn, conn.cursor() as cur:
        cur.execute("SET @tz = '+05:00'")
        cur.execute("SET time_zone = @tz")
        assert _one(conn, "SELECT @@time_zone, @@server_id") == ("+05:00", PRIMARY)

    with _connect(gateway, client_flag=CLIENT.MULTI_STATEMENTS) as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.ProgrammingError):
            cur.execute("CREATE TEMPORARY TABLE tmpx (a INT); SELECT * FROM no_such_table")
            while cur.nextset():
                pass
        conn.ping()
        assert _one(conn, "SELECT COUNT(*), @@server_id FROM tmpx") == (0, PRIMARY)


def test_a_read_right_after_a_slow_write_is_on_the_primary(gateway: Gateway) -> None:
    """The read-your-writes window counts from when the write was answered."""
    with _connect(gateway) as conn, conn.cursor() as cur:
        cur.execute("REPLACE INTO kv VALUES (4, 'slow')")
        cur.execute("UPDATE kv SET v = 'slower' WHERE k = 4 AND SLEEP(1.2) = 0")
        assert _one(conn, "SELECT v, @@server_id FROM kv WHERE k = 4") == ("slower", PRIMARY)
