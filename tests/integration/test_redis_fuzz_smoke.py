"""A few seconds of fuzzing the gateway's Redis listener (the long run: ``fuzz/``).

Random bytes and mutated pipelines of valid commands go to the gateway on fresh sockets; each
must be answered or closed within a deadline, with well-formed RESP, and a well-behaved
redis-py client must keep working, during and after. Framing edge cases are compared with
redis-server itself. The gateway's resident memory must stay bounded over the module.
"""

from __future__ import annotations

import os
import random
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fuzz.fuzz_redis_listener import NASTY, fuzz, healthy, mutate, probe, valid_pipeline
from tests.support.servers import (
    Gateway,
    RawRedis,
    RedisServer,
    encode_command,
    vm_rss_kib,
    vm_size_kib,
)

FUZZ_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the suite is reproducible; fuzz/ explores
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: the failing payload is printed
    suppress_health_check=[HealthCheck.too_slow],
)
RSS_SLACK_KIB = 64 * 1024


@pytest.fixture(scope="module")
def rss_at_start(gateway: Gateway) -> Iterator[int]:
    healthy(gateway.port)
    yield vm_rss_kib(gateway.proc.pid)


#: Sent after a payload's first answer: its reply comes after every reply owed to the payload.
_MARK = encode_command("ECHO", "resmesh-exchange-end")
_MARK_REPLY = b"$20\r\nresmesh-exchange-end\r\n"
#: A read that gets nothing for this long is a hang.
_HANG = 10.0


def _exchange(port: int, payload: bytes) -> tuple[bytes, bool]:
    """Send ``payload`` (no half-close); return everything answered, and whether the peer closed.

    Every case here gets an answer; once the first bytes of it are in (so the peer has acted
    on the payload), an ECHO follows in a second write, unless the peer has closed already.
    Replies come in order, so the ECHO's reply ends the answer (a close ends it too): no quiet
    period is waited for and taken for the end, which a slow reply on a loaded machine
    outlasted.
    """
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=_HANG) as sock:
        try:
            sock.sendall(payload)
            if not _receive(sock, received):
                return bytes(received), True
            sock.sendall(_MARK)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed meanwhile: read what was sent before the close
        while not received.endswith(_MARK_REPLY):
            if not _receive(sock, received):
                return bytes(received), True
        return bytes(received[: -len(_MARK_REPLY)]), False


def _receive(sock: socket.socket, into: bytearray) -> bool:
    """Append what arrives to ``into``; False once the peer has closed."""
    try:
        data = sock.recv(1 << 16)
    except ConnectionResetError:
        return False
    except TimeoutError:
        raise AssertionError(f"nothing for {_HANG}s after {bytes(into)[:200]!r}") from None
    into += data
    return bool(data)


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used: unlike wall time, load adds none."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: Framing errors whose answer (and whether the connection is closed) must be redis-server's.
FRAMING_CASES = [
    b"*2147483648\r\n",
    b"*1x\r\n",
    b"*1\r\n$-1\r\n",
    b"*1\r\n:1\r\n",
    b"*1\r\n$abc\r\n",
    b"*1\r\n$" + b"9" * 64 + b"\r\n",
    b"*1\r\n$2147483648\r\n",
    b"*1\r\n$536870913\r\n",  # one byte over proto-max-bulk-len
    b"*" + b"9" * 30 + b"\r\n",
    b"*-1\r\n*1\r\n$4\r\nPING\r\n",
    b"*0\r\n*1\r\n$4\r\nPING\r\n",
    b"\r\n\r\n*1\r\n$4\r\nPING\r\n",
    b"$4\r\nPING\r\n",
    b'SET "unbalanced\r\n',
    b"x" * 70_000,
]


@pytest.mark.parametrize("payload", FRAMING_CASES, ids=[repr(c[:20]) for c in FRAMING_CASES])
def test_framing_errors_match_direct(
    payload: bytes, redis_node: RedisServer, gateway: Gateway, rss_at_start: int
) -> None:
    expected = _exchange(redis_node.port, payload)
    got = _exchange(gateway.port, payload)
    assert got == expected


def test_huge_multibulk_headers_are_refused_at_once(gateway: Gateway, rss_at_start: int) -> None:
    """``*2147483648`` must not make the gateway reserve memory for 2^31 arguments.

    redis-server answers the header line alone with an error; the gateway must too, without
    stalling other clients and without holding on to memory afterwards.

    Stalling is measured as the gateway's CPU time, not a ping's wall time (which load
    stretches): six refused headers and thirty PINGs take it a few tens of milliseconds; a
    reservation or a loop sized by the header, the stall this guards against, takes seconds.
    """
    client = redis.Redis(port=gateway.port, socket_timeout=10)
    client.ping()
    vm_before = vm_size_kib(gateway.proc.pid)
    cpu_before = _cpu_seconds(gateway.proc.pid)
    for header in (b"*2147483648\r\n", b"*2147483647\r\n", b"*1000000000\r\n") * 2:
        with RawRedis(gateway.port, timeout=10) as conn:
            conn.send(header)
            for _ in range(5):  # other clients are served meanwhile
                assert client.ping()
            reply = conn.read_until_closed()
        assert reply == b"-ERR Protocol error: invalid multibulk length\r\n", header
    cpu = _cpu_seconds(gateway.proc.pid) - cpu_before
    assert cpu < 1.0, f"the gateway used {cpu:.2f}s of CPU on six refused headers"
    growth = vm_size_kib(gateway.proc.pid) - vm_before
    assert growth < 1024 * 1024, f"virtual memory grew by {growth // 1024} MiB"


@FUZZ_SETTINGS
@given(payload=st.binary(max_size=4096))
def test_random_bytes_get_an_answer_or_a_close(gateway: Gateway, payload: bytes) -> None:
    probe(gateway.port, payload)


@FUZZ_SETTINGS
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_mutated_pipelines_get_an_answer_or_a_close(gateway: Gateway, seed: int) -> None:
    rnd = random.Random(seed)
    probe(gateway.port, mutate(rnd, valid_pipeline(rnd)))


def test_valid_pipelines_then_half_close(gateway: Gateway) -> None:
    rnd = random.Random(20240611)
    for _ in range(100):
        probe(gateway.port, valid_pipeline(rnd))


def test_nasty_payloads(gateway: Gateway) -> None:
    for payload in NASTY:
        probe(gateway.port, payload)


def test_fuzz_threads_with_a_client_working_alongside(gateway: Gateway) -> None:
    """Two fuzzing threads for 2 s while a well-behaved client checks every answer."""
    stop = threading.Event()
    errors: list[str] = []
    checks = 0

    def steady() -> None:
        nonlocal checks
        client = redis.Redis(port=gateway.port, socket_timeout=5, protocol=2)
        while not stop.is_set():
            try:
                token = random.randbytes(8)
                pipe = client.pipeline(transaction=False)
                pipe.set("steady", token).get("steady").incr("steady:n")
                _, value, _ = pipe.execute()
                if value != token:
                    errors.append(f"read {value!r}, wrote {token!r}")
                checks += 1
            except redis.RedisError as exc:
                errors.append(repr(exc))
                return

    thread = threading.Thread(target=steady, daemon=True)
    thread.start()
    stats = fuzz(gateway.port, seconds=2, seed=7, workers=2)
    stop.set()
    thread.join(10)
    assert stats.failures == []
    assert stats.probes > 50, stats
    assert errors == []
    assert checks > 10


def test_gateway_still_healthy_and_memory_bounded(gateway: Gateway, rss_at_start: int) -> None:
    healthy(gateway.port)
    assert gateway.proc.poll() is None
    growth = vm_rss_kib(gateway.proc.pid) - rss_at_start
    assert growth < RSS_SLACK_KIB, f"RSS grew by {growth} KiB"
