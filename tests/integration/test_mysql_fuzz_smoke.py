"""A short run of the MySQL listener fuzzer (``fuzz/fuzz_mysql_listener.py``) in the test
suite, and checks that its harness can fail.

``test_fuzz_smoke`` starts one gateway in front of the local MariaDB (the module's rig) and runs
1000 derandomized examples: garbage, mutated, truncated, oversized and misnumbered packets before
login and after a real one, clients leaving mid-reply. After each: the gateway answered with
well-formed packets (an ERR where it refused) or closed the connection, never hung; a PyMySQL
client connected for the whole run kept getting right answers, from its own thread during the
examples and between them; the gateway's RSS stayed within the fuzzer's bound; its log has no
``unexpected error``. The gateway must exit 0 on SIGTERM after the module. The long runs are
``python fuzz/fuzz_mysql_listener.py --examples 2000 --seed N``.

The other tests point the harness at fake servers (garbage after the greeting, a hang, a close
without an ERR after a login of garbage, packets after a login ERR) and at a log with a
traceback: each must be flagged, and a server that answers correctly must not be.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fuzz.fuzz_mysql_listener import (
    RSS_SLACK_KIB,
    LogTail,
    Plan,
    ProbeFailure,
    Rig,
    Stats,
    build,
    exchange,
    frame,
    handshake_response,
)

EXAMPLES = 1000

#: A protocol-10 greeting as MariaDB sends it (scramble "a" * 20).
GREETING = frame(
    b"\x0a5.5.5-10.11.0-MariaDB\x00\x01\x00\x00\x00aaaaaaaa\x00\xfe\xf7\x21\x02\x00\xff\x81"
    b"\x15\x00\x00\x00\x00\x00\x00\x0f\x00\x00\x00aaaaaaaaaaaa\x00mysql_native_password\x00",
    0,
)
ACCESS_DENIED = frame(b"\xff\x15\x04#28000Access denied for user 'app'@'127.0.0.1'", 2)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    started = Rig(tmp_path_factory.mktemp("mysql-fuzz"))
    yield started
    assert started.stop() == 0, started.log.path.read_text(errors="replace")[-4000:]


@pytest.mark.integration
def test_fuzz_smoke(rig: Rig) -> None:
    stats = Stats()
    build(rig, EXAMPLES, derandomize=True, stats=stats)()
    assert stats.examples >= EXAMPLES
    # What the run covered: both phases, every ending, refusals, answered markers, closes.
    assert stats.connections["pre"] > 20 and stats.connections["post"] > 40, stats.summary()
    assert set(stats.endings) >= {"half-close", "marker", "close", "reset", "mid-reply"}, (
        stats.summary()
    )
    assert stats.markers_answered > 5, stats.summary()
    assert stats.closed_by_gateway > 10, stats.summary()
    assert stats.errors[1045] > 0 and stats.errors[1064] > 0, stats.summary()
    assert rig.neighbour is not None and rig.neighbour.queries > 0
    now, peak = rig.rss()
    assert max(now, rig.peak) - rig.rss_start <= RSS_SLACK_KIB, (rig.rss_start, now, peak)
    assert "unexpected error" not in rig.log.path.read_text(errors="replace")


# -- the harness fails when it should -----------------------------------------------------------


@contextmanager
def _fake_server(answer: Callable[[socket.socket], None]) -> Iterator[int]:
    """A one-connection server on a free port: it greets, then ``answer``s."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            conn.sendall(GREETING)
            answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        listener.close()
        thread.join(10)


def _then(data: bytes, *, wait: bool = False) -> Callable[[socket.socket], None]:
    def answer(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(data)
        if wait:  # neither answer nor close, whatever the client does (for 1.5 s)
            threading.Event().wait(1.5)

    return answer


GARBAGE_LOGIN = Plan("pre", frame(handshake_response(b"x" * 20), 1), (), "half-close")

BAD_SERVERS = {
    "garbage": (_then(b"HTTP/1.1 400 Bad Request\r\n\r\n"), "incomplete packet|answered with"),
    "an OK to a wrong password": (_then(frame(b"\x00\x00\x00\x02\x00\x00\x00", 2)), "answered"),
    "no answer and no close": (_then(b"", wait=True), "hang"),
    "packets after the ERR": (_then(ACCESS_DENIED + frame(b"\xfe", 3)), "after a login ERR"),
    "a truncated ERR": (_then(frame(b"\xff\x15", 2)), "truncated ERR"),
}


@pytest.mark.parametrize("case", BAD_SERVERS, ids=list(BAD_SERVERS))
def test_a_bad_server_is_flagged(case: str) -> None:
    answer, message = BAD_SERVERS[case]
    with _fake_server(answer) as port, pytest.raises(ProbeFailure, match=message):
        exchange(port, GARBAGE_LOGIN, hang=0.5)


def test_a_good_server_passes() -> None:
    with _fake_server(_then(ACCESS_DENIED)) as port:
        transcript = exchange(port, GARBAGE_LOGIN, hang=2)
    assert transcript.closed_by_gateway and transcript.errors[1045] == 1


def test_a_traceback_in_a_log_is_flagged(tmp_path: Path) -> None:
    path = tmp_path / "gateway.log"
    path.write_text("info all is well\n")
    log = LogTail(path)
    assert log.new_bad_lines() == []
    with path.open("a") as file:
        file.write("error client 1.2.3.4:5: unexpected error; its connection is closed\n")
        file.write("Traceback (most recent")
    assert log.new_bad_lines() == [
        "error client 1.2.3.4:5: unexpected error; its connection is closed"
    ]
    with path.open("a") as file:
        file.write(" call last):\n")
    assert log.new_bad_lines() == ["Traceback (most recent call last):"]
