"""A short run of the Motan2 listener fuzzer (``fuzz/fuzz_motan2_listener.py``) in the test
suite, and checks that its harness can fail.

``test_fuzz_smoke`` starts the echo service and one gateway with both Motan2 sides (the
module's rig, shared by the module's integration tests) and runs 100 derandomized examples
against both ports, with every invariant of the fuzzer checked after each (well-formed replies
or a close, owed replies with the right bytes and ids, a well-behaved client still served on
both sides, memory bounded, no traceback in the logs); the gateway must exit 0 on SIGTERM after
the module. Before it, ``test_slow_examples_fail_the_run`` checks that examples over a time
bound of zero fail the run. The long runs are
``python fuzz/fuzz_motan2_listener.py --examples 4000``.

The other tests need no gateway: they point the harness at fake servers on a local socket (one
that sends garbage, answers another id or with the wrong bytes, answers twice, sends a
malformed exception, never answers, or hangs up) and at a log with a traceback in it; each must
be flagged, and a server that answers correctly must not be.

Not under ``tests/``, so a bare ``pytest`` (``testpaths = ["tests"]``) does not collect it: run
``pytest fuzz/test_motan2_fuzz_smoke.py`` (``-m "not integration"`` for the fast part).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fuzz.fuzz_motan2_codec import SlowExamples, SlowLog
from fuzz.fuzz_motan2_listener import (
    GROUP,
    KNOBS,
    SERVICE,
    LogTail,
    Plan,
    ProbeFailure,
    Rig,
    Stats,
    build,
    exchange,
)
from resmesh.protocols.motan2 import bodies
from resmesh.protocols.motan2.frames import (
    Frame,
    FrameDecoder,
    encode_frame,
    exception_response,
    request,
    response,
)

EXAMPLES = 100

#: A hello("x") to the echo service, request id 5: owed the reply body of "hello x".
HELLO = encode_frame(request(5, SERVICE, "hello", bodies.encode_arguments(6, ["x"]), group=GROUP))
HELLO_REPLY = encode_frame(response(5, bodies.encode_result(6, "hello x")))


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    started = Rig(tmp_path_factory.mktemp("motan2-fuzz"))
    yield started
    assert started.stop() == 0, started.gateway_log.path.read_text(errors="replace")[-4000:]


@pytest.mark.integration
def test_slow_examples_fail_the_run(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs first (on a fresh gateway): three quick examples over a time bound of zero."""
    monkeypatch.setattr(KNOBS, "bomb_floods", False)
    with pytest.raises(SlowExamples, match=r"example\(s\) over 0.0 s"):
        build(rig, 3, derandomize=True, shrink=False, slow=SlowLog(limit=0.0))()


@pytest.mark.integration
def test_fuzz_smoke(rig: Rig) -> None:
    stats = Stats()
    build(rig, EXAMPLES, derandomize=True, shrink=False, stats=stats)()
    assert stats.examples >= EXAMPLES
    assert all(stats.connections[side] > 20 for side in ("client", "server")), stats.summary()
    assert stats.replies["value"] > 0 and stats.replies["heartbeat"] > 0, stats.summary()


# -- the harness fails when it should -----------------------------------------------------------


@contextmanager
def _fake_server(answer: Callable[[socket.socket, bytes], None]) -> Iterator[int]:
    """A one-connection server on a free port: it reads one frame, then ``answer`` it."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            decoder = FrameDecoder()
            while True:
                data = conn.recv(1 << 16)
                if not data:
                    return
                decoder.feed(data)
                frame = decoder.next_frame()
                if isinstance(frame, Frame):
                    answer(conn, encode_frame(frame))
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        listener.close()
        thread.join(10)


def _sends(data: bytes, *, then_wait: bool = False) -> Callable[[socket.socket, bytes], None]:
    def answer(conn: socket.socket, _request: bytes) -> None:
        conn.sendall(data)
        if then_wait:
            conn.recv(1)  # until the harness gives up and closes

    return answer


BAD_SERVERS = {
    "garbage": (_sends(b"HTTP/1.1 400 Bad Request\r\n\r\n"), "not Motan2"),
    "a reply to another id": (
        _sends(encode_frame(response(6, bodies.encode_result(6, "hello x"))), then_wait=True),
        "a reply to no request owed one",
    ),
    "the wrong bytes": (
        _sends(encode_frame(response(5, bodies.encode_result(6, "hello y")))),
        "is owed",
    ),
    "two replies": (_sends(HELLO_REPLY * 2, then_wait=True), "a reply to no request owed"),
    "a malformed exception": (
        _sends(
            encode_frame(Frame(request_id=5, response=True, status=1, meta={"M_e": "not json"}))
        ),
        "a malformed exception",
    ),
    "an exception without errtype": (
        _sends(
            encode_frame(
                Frame(
                    request_id=5,
                    response=True,
                    status=1,
                    meta={"M_e": '{"errcode":500,"errmsg":"x"}'},
                )
            )
        ),
        "a malformed exception",
    ),
    "no answer": (_sends(b"", then_wait=True), "hang"),
    "a close": (_sends(b""), "closed the connection with 1 replies owed"),
}


@pytest.mark.parametrize("case", BAD_SERVERS, ids=list(BAD_SERVERS))
def test_a_bad_server_is_flagged(case: str) -> None:
    answer, message = BAD_SERVERS[case]
    plan = Plan(side="server", stream=HELLO, cuts=(7,), pause=False, ending="read")
    with _fake_server(answer) as port, pytest.raises(ProbeFailure, match=message):
        exchange(port, plan, hang=0.5)


def test_a_good_server_passes() -> None:
    """The positive control: the right reply (and an exception the oracle allows) pass."""
    plan = Plan(side="server", stream=HELLO, cuts=(), pause=False, ending="read")
    with _fake_server(_sends(HELLO_REPLY)) as port:
        transcript = exchange(port, plan, hang=2)
        assert transcript.replies["value"] == 1 and not transcript.closed
    unknown = encode_frame(request(9, "no.such.Service", "hello", b""))
    plan = Plan(side="server", stream=unknown, cuts=(), pause=False, ending="read")
    refusal = encode_frame(exception_response(9, 404, "provider not exist serviceKey=no.such"))
    with _fake_server(_sends(refusal)) as port:
        assert exchange(port, plan, hang=2).replies["error 404"] == 1


def test_a_traceback_in_a_log_is_flagged(tmp_path: Path) -> None:
    path = tmp_path / "gateway.log"
    path.write_text("info all is well\n")
    log = LogTail(path)
    assert log.new_bad_lines() == []
    with path.open("a") as file:
        file.write("error client 1.2.3.4:5: unexpected error; its connection is closed\n")
        file.write("Traceback (most recent")  # a line still being written: read next time
    assert log.new_bad_lines() == [
        "error client 1.2.3.4:5: unexpected error; its connection is closed"
    ]
    with path.open("a") as file:
        file.write(" call last):\n")
    assert log.new_bad_lines() == ["Traceback (most recent call last):"]
    assert log.new_bad_lines() == []
