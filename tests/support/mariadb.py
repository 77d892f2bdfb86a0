"""Start throwaway ``mariadbd`` servers (a primary and its replicas) for integration tests.

The MySQL gateway's read/write split and failover can only be tested against a real primary and a
real replica, which the one system MariaDB on port 3306 cannot provide. So each
:class:`MariaDBServer` here is a child ``mariadbd`` with its own datadir under the test's
directory and a free port, small enough to be ready in well under a second, and killable like a
crashed node. As in ``servers.py``, every wait has a deadline (no bare sleeps) and a missing
binary fails the run loudly: a skipped integration test would count as passing while testing
nothing.

Example::

    from tests.support.mariadb import MariaDBServer, start_replica, wait_replicated

    def test_reads_go_to_the_replica(tmp_path: Path) -> None:
        with MariaDBServer(tmp_path / "primary", server_id=1, log_bin=True) as primary:
            with start_replica(primary, tmp_path / "replica", server_id=2) as replica:
                primary.execute("CREATE TABLE t (id INT PRIMARY KEY)")
                primary.execute("INSERT INTO t VALUES (%s), (%s)", 1, 2)
                wait_replicated(primary, replica)
                assert replica.execute("SELECT id FROM t ORDER BY id") == [(1,), (2,)]
                replica.kill()  # the replica crashes; the primary keeps serving writes
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pymysql  # type: ignore[import-untyped, unused-ignore]
import pymysql.cursors  # type: ignore[import-untyped, unused-ignore]
import pytest

from tests.support.servers import free_port, wait_for

MARIADB_HINT = (
    "{binary} is required for the MySQL replication tests: install MariaDB with "
    "`apt-get install mariadb-server` (Debian/Ubuntu) or `brew install mariadb` (macOS); "
    "the tests start their own servers, the system one need not be running"
)

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
REPL_USER = "repl"
REPL_PASSWORD = "repl"

# The server's options beyond where it lives and who it is: everything as small as MariaDB allows,
# so that a server starts in a fraction of a second and a test run can afford several of them.
# Durability is relaxed only as far as an OS crash, which tests never simulate: a SIGKILLed
# server keeps every committed row (innodb_flush_log_at_trx_commit=2 writes the log at each
# commit, leaving only the fsync to the OS).
_SMALL_SERVER = (
    "--innodb-buffer-pool-size=16M",
    "--innodb-log-file-size=8M",
    "--innodb-log-buffer-size=2M",
    "--innodb-flush-log-at-trx-commit=2",
    "--key-buffer-size=1M",
    "--aria-pagecache-buffer-size=1M",
    "--performance-schema=OFF",
    "--loose-feedback=OFF",
)

# A unix socket path longer than this does not fit in ``sockaddr_un.sun_path`` (108 bytes with the
# NUL); mariadbd then refuses to start, and pytest's ``tmp_path`` is often that deep.
_MAX_SOCKET_PATH = 100


def _binary(name: str) -> str:
    """``name`` on the ``PATH`` or in ``/usr/sbin`` (where Debian puts ``mariadbd``, often
    outside a non-root ``PATH``); fails the test run if it is missing."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])
    found = shutil.which(name, path=path)
    if found is None:
        pytest.fail(MARIADB_HINT.format(binary=name), pytrace=False)
    return found


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log at {path}: {exc})"


class MariaDBServer:
    """A ``mariadbd`` child process with its own datadir under ``workdir``, on a free port.

    Tests may :meth:`kill` it (a crash) and :meth:`start` it again on the same port and data.
    Root logs in over TCP with an empty password, as the gateway's backend user does; the
    database ``test`` always exists. Give each server its own ``workdir``.
    """

    def __init__(self, workdir: Path, *, server_id: int, log_bin: bool = False) -> None:
        self.mariadbd = _binary("mariadbd")
        self.install_db = _binary("mariadb-install-db")
        self.workdir = Path(workdir).absolute()
        self.datadir = self.workdir / "data"
        self.log_path = self.workdir / "mariadbd.log"
        self.server_id = server_id
        self.log_bin = log_bin
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start_seconds: float | None = None  # how long the last start() took to serve
        self._short_dir: str | None = None  # holds the socket when workdir is too deep for one

    def __enter__(self) -> MariaDBServer:
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<MariaDBServer id={self.server_id} port={self.port} datadir={self.datadir}>"

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server (initialising the datadir the first time) and wait until it serves.

        Raises:
            AssertionError: it exited or did not accept a login within ``START_TIMEOUT``;
                the message carries the tail of its log.
        """
        if self.process is not None and self.process.poll() is None:
            raise AssertionError(f"{self!r} is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not (self.datadir / "mysql").is_dir():
            self._install_db()
        began = time.monotonic()
        with self.log_path.open("ab") as log:
            # The child keeps its own copy of the descriptor; ours is not needed past Popen.
            self.process = subprocess.Popen(
                [self.mariadbd, *self._server_args()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for(self._accepts_login, START_TIMEOUT, f"{self!r} to accept a login")
        except AssertionError as exc:
            self.kill()
            self.stop()  # the process is gone; this removes a short socket directory
            raise AssertionError(f"{exc}; its log ends:\n{_tail(self.log_path)}") from None
        self.start_seconds = time.monotonic() - began
        with self.connect(database=None) as conn, conn.cursor() as cur:
            cur.execute("CREATE DATABASE IF NOT EXISTS test")

    def kill(self) -> None:
        """SIGKILL and reap: the server vanishes mid-whatever, as in a crash."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)
            self.process = None

    def stop(self) -> None:
        """Shut down cleanly (SIGTERM), killing the server if that takes too long. Idempotent."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
            self.process = None
        if self._short_dir is not None:
            shutil.rmtree(self._short_dir, ignore_errors=True)
            self._short_dir = None

    # -- queries ------------------------------------------------------------------------------

    def connect(self, **kw: Any) -> Any:
        """A PyMySQL connection as root to database ``test`` (autocommit unless ``kw`` says not).

        Returns a ``pymysql.connections.Connection`` (typed ``Any``: PyMySQL ships no type
        information); use it as a context manager to close it.
        """
        options: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "user": "root",
            "password": "",
            "database": "test",
            "autocommit": True,
            "connect_timeout": 5,
        }
        options.update(kw)
        return pymysql.connect(**options)

    def execute(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run one statement on a fresh connection and return its rows (``[]`` if none).

        ``args`` fill ``%s`` placeholders; without any, ``sql`` is sent as is (a ``%`` in it
        needs no escaping).
        """
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(sql, args or None)
            return list(cur.fetchall())

    # -- internals ----------------------------------------------------------------------------

    def _install_db(self) -> None:
        install_log = self.workdir / "install-db.log"
        with install_log.open("wb") as log:
            result = subprocess.run(
                [
                    self.install_db,
                    "--no-defaults",
                    f"--datadir={self.datadir}",
                    "--user=root",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    # Passed on to the bootstrap mariadbd: the redo log and system tablespace it
                    # creates are then small (26 MB instead of 114 MB per datadir).
                    *_SMALL_SERVER,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=120,
            )
        if result.returncode != 0:
            raise AssertionError(
                f"mariadb-install-db failed ({result.returncode}) for {self.datadir}; "
                f"its log ends:\n{_tail(install_log)}"
            )

    def _socket_path(self) -> Path:
        path = self.workdir / "mysqld.sock"
        if len(str(path)) <= _MAX_SOCKET_PATH:
            return path
        if self._short_dir is None:
            self._short_dir = tempfile.mkdtemp(prefix="resmesh-mdb-")
        return Path(self._short_dir) / "mysqld.sock"

    def _server_args(self) -> list[str]:
        args = [
            "--no-defaults",  # must come first: ignore /etc/mysql and ~/.my.cnf
            f"--datadir={self.datadir}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self._socket_path()}",
            f"--pid-file={self.workdir / 'mariadbd.pid'}",
            f"--tmpdir={self.workdir}",
            "--user=root",
            f"--server-id={self.server_id}",
            "--skip-name-resolve",
            # Named explicitly so they do not depend on the host name (the default basename).
            f"--relay-log={self.datadir / 'relay-bin'}",
            *_SMALL_SERVER,
        ]
        if self.log_bin:
            args += [f"--log-bin={self.datadir / 'mariadb-bin'}", "--binlog-format=ROW"]
        else:
            args.append("--skip-log-bin")
        return args

    def _accepts_login(self) -> bool:
        """True once root can log in over TCP; raises if the server has exited meanwhile."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"{self!r} exited with status {self.process.returncode}")
        try:
            self.connect(database=None, connect_timeout=1).close()
        except (pymysql.MySQLError, OSError):
            return False
        return True


def _replica_status(replica: MariaDBServer) -> dict[str, Any]:
    with replica.connect(cursorclass=pymysql.cursors.DictCursor) as conn, conn.cursor() as cur:
        cur.execute("SHOW SLAVE STATUS")
        row: dict[str, Any] | None = cur.fetchone()
    return row or {}


def _describe_replication(replica: MariaDBServer) -> str:
    status = _replica_status(replica)
    if not status:
        return f"{replica!r} is not a replica (SHOW SLAVE STATUS is empty)"
    keys = (
        "Slave_IO_Running",
        "Slave_SQL_Running",
        "Last_IO_Error",
        "Last_SQL_Error",
        "Gtid_IO_Pos",
        "Seconds_Behind_Master",
    )
    return ", ".join(f"{key}={status.get(key)!r}" for key in keys)


def start_replica(
    primary: MariaDBServer, workdir: Path, server_id: int, *, log_bin: bool = False
) -> MariaDBServer:
    """A new server replicating ``primary`` by GTID, returned once running and caught up.

    The replica starts from an empty GTID position, so it replays the primary's whole binary
    log: everything written on the primary since its first start, before or after this call.
    It is writable (``read_only`` off), since the gateway logs in to every backend as root and a
    failover test promotes it; ``log_bin=True`` gives it a binary log of its own for that.
    It retries a lost primary every second (``MASTER_CONNECT_RETRY=1``, the default is 60 s), so
    a primary that a test kills and restarts is picked up again promptly.

    Raises:
        AssertionError: ``primary`` has no binary log, or replication did not start.
    """
    if not primary.log_bin:
        raise AssertionError(f"{primary!r} needs log_bin=True to be replicated")
    primary.execute(f"CREATE USER IF NOT EXISTS '{REPL_USER}'@'%' IDENTIFIED BY '{REPL_PASSWORD}'")
    primary.execute(f"GRANT REPLICATION SLAVE ON *.* TO '{REPL_USER}'@'%'")
    replica = MariaDBServer(workdir, server_id=server_id, log_bin=log_bin)
    replica.start()
    try:
        replica.execute(
            "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%s, MASTER_USER=%s, "
            "MASTER_PASSWORD=%s, MASTER_CONNECT_RETRY=1, MASTER_USE_GTID=slave_pos",
            primary.port,
            REPL_USER,
            REPL_PASSWORD,
        )
        replica.execute("START SLAVE")
        try:
            wait_for(
                lambda: _threads_running(replica),
                START_TIMEOUT,
                f"{replica!r} to replicate {primary!r}",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {_describe_replication(replica)}") from None
        wait_replicated(primary, replica, timeout=START_TIMEOUT)
    except BaseException:
        replica.stop()
        raise
    return replica


def _threads_running(replica: MariaDBServer) -> bool:
    status = _replica_status(replica)
    return status.get("Slave_IO_Running") == "Yes" and status.get("Slave_SQL_Running") == "Yes"


def wait_replicated(primary: MariaDBServer, replica: MariaDBServer, timeout: float = 10) -> None:
    """Return once ``replica`` has applied everything committed on ``primary`` so far.

    Reads the primary's ``gtid_binlog_pos`` and has the replica wait for it with
    ``MASTER_GTID_WAIT``, so no polling of table contents (which cannot tell "not yet" from
    "never").

    Raises:
        AssertionError: not caught up within ``timeout`` seconds; says why if replication broke.
    """
    ((position,),) = primary.execute("SELECT @@global.gtid_binlog_pos")
    ((result,),) = replica.execute("SELECT MASTER_GTID_WAIT(%s, %s)", position, timeout)
    if result != 0:
        raise AssertionError(
            f"{replica!r} did not reach the primary's GTID position {position!r} within "
            f"{timeout}s (MASTER_GTID_WAIT returned {result!r}): {_describe_replication(replica)}"
        )


def connect_app(port: int, **options: Any) -> Any:
    """A PyMySQL connection to a gateway on ``port`` as the tests' gateway user ``app``
    (password ``app``) in database ``test``; ``options`` override or add PyMySQL's."""
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "user": "app",
        "password": "app",
        "database": "test",
        **options,
    }
    return pymysql.connect(**settings)
