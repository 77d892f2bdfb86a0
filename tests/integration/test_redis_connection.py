"""Connection-level commands the gateway answers itself must look like redis-server's.

HELLO, CLIENT SETNAME/GETNAME/ID/SETINFO/INFO, SELECT, AUTH (the gateway's own users), QUIT,
RESET, PING and ECHO never reach a shared backend connection; the tests compare what a client
sees with a direct connection wherever the answer does not depend on the connection itself.
Refused admin commands must answer a clear error at once, never hang.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.servers import Gateway, RawRedis, RedisServer, redis_cluster_config

NO_RETRY = Retry(NoBackoff(), 0)


@pytest.fixture
def direct(redis_node: RedisServer) -> redis.Redis:
    client = redis.Redis(port=redis_node.port, socket_timeout=10)
    client.flushall()
    return client


@pytest.fixture(scope="module")
def auth_gateway(
    redis_node: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """A gateway that requires AUTH: users ``app`` and ``ops`` may use the cluster."""
    config = redis_cluster_config(
        "feed-cache",
        {"dc-a": [redis_node.port]},
        users={
            "app": {"password": "app", "clusters": ["feed-cache"]},
            "ops": {"password": "s3cret", "clusters": ["feed-cache"]},
        },
    )
    gw = Gateway(config, Path(tmp_path_factory.mktemp("auth-gw")))
    yield gw
    assert gw.terminate() == 0, gw.log()


def _both(
    redis_node: RedisServer, gateway: Gateway, *commands: tuple[str, ...]
) -> list[list[bytes]]:
    """Raw replies to ``commands`` (one pipelined write), directly and through the gateway."""
    results = []
    for port in (redis_node.port, gateway.port):
        redis.Redis(port=redis_node.port).flushall()
        with RawRedis(port) as conn:
            results.append(conn.call(*commands))
    return results


# --- HELLO ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3])
def test_protocol_negotiated_by_hello(
    protocol: int, redis_node: RedisServer, gateway: Gateway
) -> None:
    client = redis.Redis(port=gateway.port, protocol=protocol)
    info = client.client_info()
    assert int(info["resp"]) == protocol
    hello = _as_dict(client.execute_command("HELLO"))
    straight = _as_dict(
        redis.Redis(port=redis_node.port, protocol=protocol).execute_command("HELLO")
    )
    assert hello.keys() == straight.keys()
    assert hello[b"proto"] == straight[b"proto"] == protocol
    assert hello[b"mode"] == b"standalone"
    # The same connection carries data commands in the protocol it negotiated.
    client.hset("hh", "f", "v")
    assert client.hgetall("hh") == {b"f": b"v"}


def _as_dict(reply: object) -> dict[bytes, object]:
    """HELLO's reply: a dict in RESP3, a flat key/value list in RESP2."""
    if isinstance(reply, dict):
        return dict(reply)
    assert isinstance(reply, list)
    return dict(zip(reply[::2], reply[1::2], strict=True))


def test_hello_raw_shapes(redis_node: RedisServer, gateway: Gateway) -> None:
    with RawRedis(gateway.port) as conn:
        hello3, hgetall3, hello2, hgetall2, noproto, bad = conn.call(
            ("HELLO", "3"),
            ("HGETALL", "nothing"),
            ("HELLO", "2"),
            ("HGETALL", "nothing"),
            ("HELLO", "4"),
            ("HELLO", "two"),
        )
    assert hello3.startswith(b"%7\r\n") and b"proto\r\n:3\r\n" in hello3
    assert hgetall3 == b"%0\r\n"
    assert hello2.startswith(b"*14\r\n") and b"proto\r\n:2\r\n" in hello2
    assert hgetall2 == b"*0\r\n"
    direct = _both(redis_node, gateway, ("HELLO", "4"), ("HELLO", "two"), ("HELLO", "3", "BOGUS"))
    assert [noproto, bad] == direct[0][:2]
    assert direct[1] == direct[0]


def test_hello_setname(redis_node: RedisServer, gateway: Gateway) -> None:
    with RawRedis(gateway.port) as conn:
        _, name = conn.call(("HELLO", "3", "SETNAME", "via-hello"), ("CLIENT", "GETNAME"))
    assert name == b"$9\r\nvia-hello\r\n"


# --- CLIENT --------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3])
def test_client_name_id_and_setinfo(protocol: int, gateway: Gateway) -> None:
    named = redis.Redis(port=gateway.port, protocol=protocol, client_name="worker-1")
    assert named.client_getname() == "worker-1" or named.client_getname() == b"worker-1"
    assert named.client_setname("worker-2")
    assert named.client_getname() in ("worker-2", b"worker-2")
    info = named.client_info()
    assert info["name"] == "worker-2"
    # redis-py sent CLIENT SETINFO on connect; the gateway kept what it said.
    assert info["lib-name"] == "redis-py"
    assert info["lib-ver"] == redis.__version__
    assert named.client_setinfo("LIB-NAME", "myapp")
    assert named.client_info()["lib-name"] == "myapp"
    # redis-server 7.2's reply (the node under test is 7.0, which has no SETINFO at all).
    with pytest.raises(redis.ResponseError, match="Unrecognized option 'BOGUS'"):
        named.client_setinfo("BOGUS", "x")

    other = redis.Redis(port=gateway.port, protocol=protocol)
    assert other.client_getname() is None
    ids = {named.client_id(), other.client_id()}
    assert len(ids) == 2
    assert named.client_id() == int(named.client_info()["id"])


def test_client_errors_match_direct(redis_node: RedisServer, gateway: Gateway) -> None:
    expected, got = _both(
        redis_node,
        gateway,
        ("CLIENT", "GETNAME"),
        ("CLIENT", "SETNAME", "has space"),
        ("CLIENT", "SETNAME", "line\nbreak"),
        ("CLIENT", "SETNAME", "ok-name"),
        ("CLIENT", "GETNAME"),
        ("CLIENT", "SETNAME", ""),
        ("CLIENT", "GETNAME"),
        ("CLIENT",),
    )
    assert got == expected


def test_client_list_shows_gateway_sessions(gateway: Gateway) -> None:
    first = redis.Redis(port=gateway.port, client_name="lister-a")
    second = redis.Redis(port=gateway.port, client_name="lister-b")
    second.ping()
    listing = first.client_list()
    names = {entry["name"] for entry in listing}
    assert {"lister-a", "lister-b"} <= names


# --- SELECT --------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3])
def test_db_param_lands_keys_in_that_db(
    protocol: int, direct: redis.Redis, redis_node: RedisServer, gateway: Gateway
) -> None:
    client = redis.Redis(port=gateway.port, protocol=protocol, db=3)
    assert client.set("where", "three")
    assert client.get("where") == b"three"
    assert redis.Redis(port=redis_node.port, db=3).get("where") == b"three"
    assert direct.get("where") is None
    assert client.dbsize() == 1
    assert int(client.client_info()["db"]) == 3


def test_clients_in_different_dbs_do_not_interfere(
    redis_node: RedisServer, gateway: Gateway
) -> None:
    redis.Redis(port=redis_node.port).flushall()
    rounds = 60
    errors: list[str] = []

    def worker(db: int) -> None:
        client = redis.Redis(port=gateway.port, db=db, socket_timeout=10)
        for i in range(rounds):
            pipe = client.pipeline(transaction=False)
            pipe.set("same-key", f"db{db}-{i}")
            pipe.get("same-key")
            pipe.incr("same-counter")
            _, value, counter = pipe.execute()
            if value != f"db{db}-{i}".encode() or counter != i + 1:
                errors.append(f"db{db} round {i}: {value!r} {counter!r}")

    threads = [threading.Thread(target=worker, args=(db,)) for db in (1, 2, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    for db in (1, 2, 5):
        straight = redis.Redis(port=redis_node.port, db=db)
        assert straight.get("same-key") == f"db{db}-{rounds - 1}".encode()
        assert straight.get("same-counter") == str(rounds).encode()
    assert redis.Redis(port=redis_node.port, db=0).get("same-key") is None


def test_dbs_asyncio(redis_node: RedisServer, gateway: Gateway) -> None:
    redis.Redis(port=redis_node.port).flushall()

    async def main() -> list[bytes | None]:
        clients = [redis.asyncio.Redis(port=gateway.port, db=db, protocol=3) for db in (6, 7)]
        try:
            await asyncio.gather(*(c.set("k", f"db{i}") for i, c in enumerate(clients)))
            return list(await asyncio.gather(*(c.get("k") for c in clients)))
        finally:
            for client in clients:
                await client.aclose()

    assert asyncio.run(main()) == [b"db0", b"db1"]
    assert redis.Redis(port=redis_node.port, db=7).get("k") == b"db1"


def test_select_errors_match_direct(redis_node: RedisServer, gateway: Gateway) -> None:
    expected, got = _both(
        redis_node,
        gateway,
        ("SELECT", "16"),
        ("SELECT", "-1"),
        ("SELECT", "abc"),
        ("SELECT",),
        ("SELECT", "9"),
        ("SET", "sel", "9"),
        ("SELECT", "0"),
        ("GET", "sel"),
    )
    assert got == expected


# --- AUTH ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3])
def test_auth_password_only(protocol: int, auth_gateway: Gateway) -> None:
    client = redis.Redis(port=auth_gateway.port, protocol=protocol, password="app", retry=NO_RETRY)
    assert client.ping()
    assert client.set("authed", 1)
    assert client.client_info()["user"] in ("app", "default")


@pytest.mark.parametrize("protocol", [2, 3])
def test_auth_username_and_password(protocol: int, auth_gateway: Gateway) -> None:
    client = redis.Redis(
        port=auth_gateway.port, protocol=protocol, username="ops", password="s3cret", retry=NO_RETRY
    )
    assert client.ping()
    assert client.client_info()["user"] == "ops"


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize(
    "credentials",
    [
        {"password": "wrong"},
        {"username": "app", "password": "s3cret"},
        {"username": "nobody", "password": "app"},
    ],
)
def test_auth_wrong_credentials(
    protocol: int, credentials: dict[str, str], auth_gateway: Gateway
) -> None:
    client = redis.Redis(port=auth_gateway.port, protocol=protocol, retry=NO_RETRY, **credentials)
    with pytest.raises(redis.AuthenticationError):
        client.ping()


def test_no_auth_gets_noauth(auth_gateway: Gateway) -> None:
    client = redis.Redis(port=auth_gateway.port, protocol=2, retry=NO_RETRY, socket_timeout=5)
    with pytest.raises(redis.AuthenticationError, match="Authentication required"):
        client.get("anything")
    with RawRedis(auth_gateway.port) as conn:
        get, ping, auth, get_after = conn.call(
            ("GET", "k"), ("PING",), ("AUTH", "app"), ("GET", "k")
        )
    assert get == ping == b"-NOAUTH Authentication required.\r\n"
    assert auth == b"+OK\r\n"
    assert get_after.startswith(b"$")


def test_no_auth_resp3_hello_refused(auth_gateway: Gateway) -> None:
    client = redis.Redis(port=auth_gateway.port, protocol=3, retry=NO_RETRY, socket_timeout=5)
    with pytest.raises(redis.AuthenticationError, match="HELLO must be called"):
        client.ping()


def test_auth_raw_replies(auth_gateway: Gateway) -> None:
    with RawRedis(auth_gateway.port) as conn:
        replies = conn.call(
            ("AUTH", "wrong"),
            ("AUTH", "app", "wrong"),
            ("AUTH",),
            ("HELLO", "3", "AUTH", "app", "app"),
            ("CLIENT", "INFO"),
            ("RESET",),
            ("GET", "k"),
        )
    assert (
        replies[0]
        == replies[1]
        == (b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
    )
    assert replies[2] == b"-ERR wrong number of arguments for 'auth' command\r\n"
    assert replies[3].startswith(b"%7\r\n")
    assert b"user=app" in replies[4]
    assert replies[5] == b"+RESET\r\n"
    assert replies[6] == b"-NOAUTH Authentication required.\r\n"  # RESET logs out


def test_auth_default_user_without_gateway_users(redis_node: RedisServer, gateway: Gateway) -> None:
    """No users configured: like redis-server's passwordless ``default`` user."""
    expected, got = _both(
        redis_node,
        gateway,
        ("AUTH", "anything"),
        ("AUTH", "default", "anything"),
        ("PING",),
    )
    assert got == expected


def test_auth_asyncio(auth_gateway: Gateway) -> None:
    async def main() -> bytes | None:
        client = redis.asyncio.Redis(port=auth_gateway.port, username="app", password="app")
        try:
            await client.set("async-auth", "yes")
            return await client.get("async-auth")
        finally:
            await client.aclose()

    assert asyncio.run(main()) == b"yes"


# --- QUIT, RESET, PING, ECHO ---------------------------------------------------------------------


def test_quit_answers_then_closes(redis_node: RedisServer, gateway: Gateway) -> None:
    outputs = []
    for port in (redis_node.port, gateway.port):
        with RawRedis(port) as conn:
            conn.send(b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nQUIT\r\n*1\r\n$4\r\nPING\r\n")
            outputs.append(conn.read_until_closed())
    assert outputs[0] == b"+PONG\r\n+OK\r\n"
    assert outputs[1] == outputs[0]


def test_quit_after_forwarded_commands_keeps_their_replies(gateway: Gateway) -> None:
    with RawRedis(gateway.port) as conn:
        conn.send(
            b"*3\r\n$3\r\nSET\r\n$1\r\nq\r\n$1\r\n1\r\n*2\r\n$3\r\nGET\r\n$1\r\nq\r\n*1\r\n$4\r\nQUIT\r\n"
        )
        assert conn.read_until_closed() == b"+OK\r\n$1\r\n1\r\n+OK\r\n"


def test_reset_restores_a_fresh_connection(redis_node: RedisServer, gateway: Gateway) -> None:
    expected, got = _both(
        redis_node,
        gateway,
        ("SELECT", "2"),
        ("SET", "r", "in2"),
        ("CLIENT", "SETNAME", "before-reset"),
        ("HELLO", "3"),
        ("RESET",),
        ("CLIENT", "GETNAME"),
        ("GET", "r"),
        ("HGETALL", "none"),
        ("MULTI",),
        ("SET", "r", "lost"),
        ("RESET",),
        ("EXEC",),
        ("WATCH", "r"),
        ("RESET",),
        ("MULTI",),
        ("SET", "r", "kept"),
        ("EXEC",),
        ("GET", "r"),
    )
    # HELLO's reply names the connection (id, version); everything else must be identical.
    assert got[:3] == expected[:3]
    assert got[4:] == expected[4:]
    assert expected[6] == b"$-1\r\n"


@pytest.mark.parametrize("protocol", [2, 3])
def test_ping_echo_match_direct(protocol: int, redis_node: RedisServer, gateway: Gateway) -> None:
    commands = [
        ("PING",),
        ("PING", "hello"),
        ("PING", "a", "b"),
        ("ECHO", "bytes\r\n\x00"),
        ("ECHO",),
        ("SET", "pe", "1"),
        ("PING",),
        ("GET", "pe"),
        ("ECHO", ""),
        ("GET", "pe"),
    ]
    results = []
    for port in (redis_node.port, gateway.port):
        with RawRedis(port) as conn:
            if protocol == 3:
                conn.call(("HELLO", "3"))
            results.append(conn.call(*commands))
            conn.send(b"PING\r\nECHO inline\r\n")
            results.append(conn.read_replies(2))
    assert results[2:] == results[:2]


def test_ping_with_redis_py(gateway: Gateway) -> None:
    client = redis.Redis(port=gateway.port)
    assert client.ping() is True
    assert client.echo("hi") == b"hi"


# --- refused commands ----------------------------------------------------------------------------

REFUSED = [
    (("MONITOR",), "MONITOR"),
    (("SHUTDOWN",), "SHUTDOWN"),
    (("SHUTDOWN", "NOSAVE"), "SHUTDOWN"),
    (("DEBUG", "SLEEP", "0"), "DEBUG"),
    (("CLIENT", "KILL", "ID", "1"), "CLIENT KILL"),
    (("CLIENT", "KILL", "127.0.0.1:1"), "CLIENT KILL"),
    (("REPLICAOF", "NO", "ONE"), "REPLICAOF"),
    (("REPLICAOF", "127.0.0.1", "1"), "REPLICAOF"),
    (("CONFIG", "SET", "maxmemory", "1"), "CONFIG SET"),
    (("CLIENT", "PAUSE", "10000"), "CLIENT PAUSE"),
]


@pytest.mark.parametrize(("command", "named"), REFUSED, ids=[" ".join(c) for c, _ in REFUSED])
def test_refused_command_errors_promptly(
    command: tuple[str, ...], named: str, direct: redis.Redis, gateway: Gateway
) -> None:
    with RawRedis(gateway.port, timeout=3) as conn:
        reply, ping = conn.call(command, ("PING",))
    assert reply.startswith(b"-ERR "), reply
    assert named.encode() in reply.upper()
    assert ping == b"+PONG\r\n"  # the connection is still in a normal state
    assert direct.ping()
    assert direct.config_get("maxmemory") == {"maxmemory": "0"}


def test_refused_command_with_redis_py(gateway: Gateway) -> None:
    client = redis.Redis(port=gateway.port, socket_timeout=3, retry=NO_RETRY)
    with pytest.raises(redis.ResponseError, match="CONFIG SET"):
        client.config_set("maxmemory", "1")
    with pytest.raises(redis.ResponseError, match="SHUTDOWN"):
        client.execute_command("SHUTDOWN")
    assert client.ping()


def test_refused_command_inside_multi_aborts_it(direct: redis.Redis, gateway: Gateway) -> None:
    with RawRedis(gateway.port, timeout=3) as conn:
        replies = conn.call(
            ("MULTI",),
            ("SET", "tx", "1"),
            ("CONFIG", "SET", "maxmemory", "1"),
            ("EXEC",),
            ("GET", "tx"),
        )
    assert replies[:2] == [b"+OK\r\n", b"+QUEUED\r\n"]
    assert replies[2].startswith(b"-ERR ") and b"CONFIG SET" in replies[2]
    assert replies[3].startswith(b"-EXECABORT")
    assert replies[4] == b"$-1\r\n"
    assert direct.get("tx") is None
