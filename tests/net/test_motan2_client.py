"""The Motan2 client and service helper over real sockets on 127.0.0.1, in process.

Two kinds of peer: the example echo service (``examples/motan2_echo.py``, on
:class:`~resmesh.net.motan2.service.Motan2Service`), and a *scripted* peer where the test plays
the server on a raw stream, for what a well-behaved service never does on its own (answering
1,000 calls in exact reverse order, closing with calls in flight, sending garbage) and to see the
client's bytes as they are on the wire. Timeouts run on Trio's MockClock; nothing waits on a
sleep to synchronise.
"""

from __future__ import annotations

import dataclasses
import os
import random
import select
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from examples.motan2_echo import GROUP, SERVICE, build_service, main
from resmesh.call import Outcome
from resmesh.net.motan2 import (
    Motan2Client,
    Motan2ConnectionError,
    Motan2Error,
    Motan2Service,
    Motan2Timeout,
    open_client,
)
from resmesh.protocols._errors import LocalProtocolError
from resmesh.protocols.motan2 import simple
from resmesh.protocols.motan2.frames import (
    ERRTYPE_BUSINESS,
    ERRTYPE_SERVICE,
    Frame,
    FrameDecoder,
    Serialization,
    encode_frame,
    exception_response,
    heartbeat_request,
    heartbeat_response,
    request,
    response,
)
from resmesh.protocols.motan2.simple import (
    Byte,
    Float32,
    Int16,
    Int32,
    StringArray,
    StringMap,
)

ROOT = Path(__file__).resolve().parents[2]


# -- harness -----------------------------------------------------------------------------------


@asynccontextmanager
async def _served(
    service: Motan2Service | None = None, **client_options: Any
) -> AsyncIterator[Motan2Client]:
    """A client connected to ``service`` (the example echo service by default)."""
    service = service or build_service()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(service.serve, "127.0.0.1", 0)
        async with Motan2Client.connect("127.0.0.1", port, **client_options) as client:
            yield client
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def _scripted(**client_options: Any) -> AsyncIterator[tuple[Motan2Client, trio.SocketStream]]:
    """A client and the server end of its connection, played by the test."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    async with Motan2Client.connect("127.0.0.1", port, **client_options) as client:
        server = await listener.accept()  # the kernel completed the handshake already
        yield client, server
        await server.aclose()
    await listener.aclose()


async def _read_frames(stream: trio.SocketStream, decoder: FrameDecoder, count: int) -> list[Frame]:
    """The next ``count`` frames the client sent."""
    frames: list[Frame] = []
    with trio.fail_after(5):
        while len(frames) < count:
            frames.extend(decoder)
            if len(frames) < count:
                data = await stream.receive_some(1 << 16)
                assert data, "the client closed the connection"
                decoder.feed(data)
    assert len(frames) == count
    return frames


def _echo_reply(frame: Frame) -> bytes:
    """What an echo server answers to ``frame``: its single argument."""
    (value,) = simple.decode(frame.body)
    return encode_frame(response(frame.request_id, simple.encode(value)))


# -- calls through the example service -----------------------------------------------------------

SIMPLE_VALUES: list[Any] = [
    "héllo, мир",
    "",
    StringMap({"a": "1", "b": ""}),
    StringMap(),
    b"\x00\xffbytes",
    b"",
    StringArray(["x", "", "z"]),
    StringArray(),
    True,
    False,
    Byte(0),
    Byte(255),
    Int16(-32768),
    Int32(-(2**31)),
    Int32(7),
    2**63 - 1,
    -1,
    Float32(0.5),
    -2.25,
    {"k": [1, "two", None, 3.5], 9: {"nested": True}},
    {},
    [Int32(1), StringMap({"m": "v"}), [], None],
    [],
]


async def test_echo_returns_every_simple_type_with_its_tag() -> None:
    async with _served() as client:
        for value in SIMPLE_VALUES:
            result = await client.call(SERVICE, "echo", value, group=GROUP)
            assert result == value
            assert type(result) is type(value), value
        # None goes out as a Simple null and comes back as an empty body (motan-go's nil).
        assert await client.call(SERVICE, "echo", None, group=GROUP) is None


async def test_hello_and_the_method_name_case() -> None:
    async with _served(source="test-app") as client:
        assert await client.call(SERVICE, "hello", "motan", group=GROUP) == "hello motan"
        # motan-go's provider looks methods up with the first letter upper-cased.
        assert await client.call(SERVICE, "Hello", "go", group=GROUP, version="1.0") == "hello go"


async def test_unknown_method_and_service_are_motan_go_service_exceptions() -> None:
    async with _served() as client:
        with pytest.raises(Motan2Error) as caught:
            await client.call(SERVICE, "nope", 1, group=GROUP)
        assert caught.value.errcode == 500
        assert caught.value.errtype == ERRTYPE_SERVICE
        assert caught.value.errmsg == "method nope is not found in provider."
        assert caught.value.outcome is Outcome.UPSTREAM_ERROR
        with pytest.raises(Motan2Error, match=r"not found provider for no\.Such") as caught:
            await client.call("no.Such", "echo", 1)
        assert caught.value.errcode == 500
        # The exception response is motan-go's bytes: M_e members in its order and spelling.
        reply = await client.call_raw(client.build_request(SERVICE, "nope"))
        assert reply.response and reply.is_exception and reply.body == b""
        assert reply.meta["M_e"] == (
            '{"errcode":500,"errmsg":"method nope is not found in provider.","errtype":1}'
        )
        # Wrong arity is refused before the handler runs, as motan-go's provider does.
        with pytest.raises(Motan2Error, match="deserialize arguments fail") as caught:
            await client.call(SERVICE, "echo", 1, 2)
        assert caught.value.errtype == ERRTYPE_SERVICE


async def test_handler_errors_are_business_exceptions() -> None:
    service = build_service()

    async def refuse(code: int) -> None:
        raise Motan2Error(code, "refused <on purpose>", ERRTYPE_SERVICE)

    service.register(SERVICE, "refuse", refuse)
    async with _served(service) as client:
        with pytest.raises(Motan2Error) as caught:
            await client.call(SERVICE, "hello", 42, group=GROUP)  # hello raises TypeError
        assert caught.value.errtype == ERRTYPE_BUSINESS
        assert caught.value.errcode == 500
        assert caught.value.errmsg == "TypeError: hello takes a string, not int"
        assert caught.value.outcome is Outcome.APP_ERROR
        # A handler raising Motan2Error chooses its exception.
        with pytest.raises(Motan2Error) as caught:
            await client.call(SERVICE, "refuse", 1234)
        assert (caught.value.errcode, caught.value.errtype) == (1234, ERRTYPE_SERVICE)
        assert caught.value.errmsg == "refused <on purpose>"
        # The connection is fine afterwards.
        assert await client.call(SERVICE, "echo", "still up") == "still up"


async def test_a_normal_response_as_the_service_sends_it() -> None:
    async with _served() as client:
        reply = await client.call_raw(client.build_request(SERVICE, "hello", "raw"))
    assert reply.response and not reply.is_exception and not reply.heartbeat
    assert reply.serialization == Serialization.SIMPLE
    assert reply.body == simple.encode("hello raw")
    assert int(reply.meta["M_pt"]) >= 0


async def test_a_thousand_calls_in_flight_answered_in_random_order() -> None:
    count = 1000
    service = Motan2Service()
    gates = [trio.Event() for _ in range(count)]
    arrived: list[int] = []
    all_in = trio.Event()

    async def gate(i: int) -> int:
        arrived.append(i)
        if len(arrived) == count:
            all_in.set()
        await gates[i].wait()
        return i

    service.register(SERVICE, "gate", gate)
    completed: list[int] = []

    async def one(client: Motan2Client, i: int) -> None:
        assert await client.call(SERVICE, "gate", i, timeout=30) == i
        completed.append(i)

    async with _served(service) as client, trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, client, i)
        with trio.fail_after(10):
            await all_in.wait()
        assert client.in_flight == count
        order = list(range(count))
        random.Random(1).shuffle(order)
        for i in order:
            gates[i].set()
    assert sorted(completed) == list(range(count))
    assert completed != sorted(completed)
    assert client.in_flight == 0 and client.dropped == 0


async def test_a_thousand_replies_in_exact_reverse_order() -> None:
    count = 1000
    results: dict[int, Any] = {}

    async def one(client: Motan2Client, i: int) -> None:
        results[i] = await client.call(SERVICE, "echo", f"value {i}", timeout=30)

    async with _scripted() as (client, server), trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, client, i)
        frames = await _read_frames(server, FrameDecoder(), count)
        assert len({frame.request_id for frame in frames}) == count  # unique in flight
        await server.send_all(b"".join(_echo_reply(frame) for frame in reversed(frames)))
    assert results == {i: f"value {i}" for i in range(count)}


async def test_heartbeat() -> None:
    async with _served() as client:
        assert await client.heartbeat() >= 0
        assert await client.call(SERVICE, "echo", 1) == 1


async def test_the_service_answers_heartbeats_with_motan_go_bytes() -> None:
    service = build_service()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(service.serve, "127.0.0.1", 0)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        # Java's heartbeat (flags 0x10, hessian2) is answered as motan-go answers any heartbeat.
        java = encode_frame(Frame(request_id=77, heartbeat=True, serialization=0))
        await stream.send_all(java)
        expected = encode_frame(heartbeat_response(77))
        assert expected[2:5] == b"\x13\x08\x30"
        received = b""
        with trio.fail_after(5):
            while len(received) < len(expected):
                received += await stream.receive_some(1024)
        assert received == expected
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_oneway_is_sent_and_its_reply_dropped() -> None:
    service = build_service()
    seen = trio.Event()
    notes: list[str] = []

    async def note(text: str) -> str:
        notes.append(text)
        seen.set()
        return "the reply nobody waits for"

    service.register(SERVICE, "note", note)
    async with _served(service) as client:
        await client.oneway(SERVICE, "note", "fire and forget")
        with trio.fail_after(5):
            await seen.wait()
        # The service answers oneway requests anyway, as motan-go's does; that reply went out
        # before this call's, and the client dropped it.
        assert await client.call(SERVICE, "echo", "after") == "after"
        assert client.dropped == 1
    assert notes == ["fire and forget"]


async def test_oneway_flag_on_the_wire() -> None:
    async with _scripted() as (client, server):
        await client.oneway(SERVICE, "echo", "x")
        (frame,) = await _read_frames(server, FrameDecoder(), 1)
        assert frame.oneway and not frame.response
        assert encode_frame(frame)[2] == 0x04


async def test_a_call_times_out_alone(autojump_clock: trio.testing.MockClock) -> None:
    service = build_service()

    async def stall() -> None:
        await trio.sleep_forever()

    service.register(SERVICE, "stall", stall)
    async with _served(service) as client:
        start = trio.current_time()
        with pytest.raises(Motan2Timeout, match=r"no reply within 2\.5s"):
            await client.call(SERVICE, "stall", timeout=2.5)
        assert trio.current_time() - start == pytest.approx(2.5)
        assert client.in_flight == 0 and not client.closed
        assert await client.call(SERVICE, "echo", "fine") == "fine"
        # The default timeout is the client's (motan-go's 1 s unless set).
        with pytest.raises(Motan2Timeout, match="within 1s"):
            await client.call(SERVICE, "stall")


async def test_a_late_reply_is_dropped_without_disturbing_later_calls(
    autojump_clock: trio.testing.MockClock,
) -> None:
    service = build_service()
    release = trio.Event()

    async def slow() -> str:
        await release.wait()
        return "late"

    service.register(SERVICE, "slow", slow)
    async with _served(service) as client:
        with pytest.raises(Motan2Timeout):
            await client.call(SERVICE, "slow", timeout=1)
        release.set()
        await trio.testing.wait_all_tasks_blocked()  # the late reply arrived and was dropped
        assert client.dropped == 1
        for i in range(3):
            assert await client.call(SERVICE, "echo", i) == i
        assert client.dropped == 1 and client.in_flight == 0


async def test_late_reply_races_a_new_call_on_the_scripted_peer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The timed-out call's id is never reused: its late reply cannot answer the next call."""
    async with _scripted() as (client, server):
        decoder = FrameDecoder()
        with pytest.raises(Motan2Timeout):
            await client.call(SERVICE, "echo", "first", timeout=1)
        (first,) = await _read_frames(server, decoder, 1)
        results: list[Any] = []

        async def second() -> None:
            results.append(await client.call(SERVICE, "echo", "second"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(second)
            (frame,) = await _read_frames(server, decoder, 1)
            assert frame.request_id != first.request_id
            # The late reply first, then the real one, in one write.
            await server.send_all(_echo_reply(first) + _echo_reply(frame))
        assert results == ["second"]
        assert client.dropped == 1


async def test_the_server_closing_fails_every_call_in_flight() -> None:
    errors: list[BaseException] = []

    async def one(client: Motan2Client, i: int) -> None:
        try:
            await client.call(SERVICE, "echo", i, timeout=30)
        except Motan2ConnectionError as exc:
            errors.append(exc)

    async with _scripted() as (client, server):
        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(one, client, i)
            await _read_frames(server, FrameDecoder(), 5)
            assert client.in_flight == 5
            await server.aclose()
        assert len(errors) == 5
        assert all(type(exc) is Motan2ConnectionError for exc in errors)
        assert "connection closed by the peer" in str(errors[0])
        assert client.closed and client.in_flight == 0
        with pytest.raises(Motan2ConnectionError, match="closed by the peer"):
            await client.call(SERVICE, "echo", 1)
        with pytest.raises(Motan2ConnectionError):
            await client.heartbeat()


async def test_garbage_from_the_server_fails_the_connection() -> None:
    async with _scripted() as (client, server):
        async with trio.open_nursery() as nursery:

            async def call() -> None:
                with pytest.raises(Motan2ConnectionError, match="magic number not correct"):
                    await client.call(SERVICE, "echo", 1, timeout=30)

            nursery.start_soon(call)
            await _read_frames(server, FrameDecoder(), 1)
            await server.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        assert client.closed


async def test_an_exception_response_as_java_writes_it() -> None:
    async with _scripted() as (client, server), trio.open_nursery() as nursery:
        caught: list[Motan2Error] = []

        async def call() -> None:
            with pytest.raises(Motan2Error) as info:
                await client.call(SERVICE, "echo", 1, timeout=30)
            caught.append(info.value)

        nursery.start_soon(call)
        (frame,) = await _read_frames(server, FrameDecoder(), 1)
        meta = {"M_e": '{"errcode":30001,"errtype":2,"errmsg":"biz"}'}
        reply = Frame(request_id=frame.request_id, response=True, status=1, meta=meta)
        await server.send_all(encode_frame(reply))
    (error,) = caught
    assert (error.errcode, error.errmsg, error.errtype) == (30001, "biz", ERRTYPE_BUSINESS)
    assert error.frame is not None and error.frame.is_exception


async def test_what_the_client_sends_golden() -> None:
    async with _scripted(source="golden-app") as (client, server), trio.open_nursery() as nursery:
        results: list[Any] = []

        async def call() -> None:
            results.append(
                await client.call(
                    SERVICE,
                    "hello",
                    "golden",
                    group=GROUP,
                    version="1.0",
                    method_desc="java.lang.String",
                    meta={"trace": "t-1"},
                    timeout=30,
                )
            )

        nursery.start_soon(call)
        raw = b""
        decoder = FrameDecoder()
        frames: list[Frame] = []
        with trio.fail_after(5):
            while not frames:
                chunk = await server.receive_some(1 << 16)
                raw += chunk
                decoder.feed(chunk)
                frames = list(decoder)
        (frame,) = frames
        assert raw[:5] == b"\xf1\xf1\x00\x08\x30"  # magic, request, Motan2 normal, Simple
        assert frame.request_id != 0 and raw[5:13] == frame.request_id.to_bytes(8, "big")
        assert list(frame.meta.items()) == [
            ("M_p", SERVICE),
            ("M_m", "hello"),
            ("M_md", "java.lang.String"),
            ("M_g", GROUP),
            ("M_v", "1.0"),
            ("M_s", "golden-app"),
            ("trace", "t-1"),
            ("M_pp", "motan2"),
        ]
        assert frame.body == b"\x01\x00\x00\x00\x06golden"
        assert raw == encode_frame(frame)  # nothing else on the wire
        await server.send_all(
            encode_frame(response(frame.request_id, simple.encode("hello golden")))
        )
    assert results == ["hello golden"]


async def test_max_in_flight_makes_calls_wait_for_a_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _scripted(max_in_flight=2) as (client, server):
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(partial(client.call, SERVICE, "echo", 1, timeout=5))
            await _read_frames(server, FrameDecoder(), 2)
            with pytest.raises(Motan2Timeout, match="no free slot"):
                await client.call(SERVICE, "echo", 3, timeout=1)
            nursery.cancel_scope.cancel()
        assert client.in_flight == 0


async def test_call_raw_and_send_raw() -> None:
    async with _served() as client:
        reply = await client.call_raw(request(999, SERVICE, "echo", simple.encode(Int32(5))))
        assert reply.request_id != 999  # ids belong to the connection
        assert simple.decode_one(reply.body) == Int32(5)
        with pytest.raises(ValueError, match="send_raw"):
            await client.call_raw(request(1, SERVICE, "echo", oneway=True))
        with pytest.raises(ValueError, match="send_raw"):
            await client.call_raw(exception_response(1, 500, "x"))
        sent_id = await client.send_raw(heartbeat_request(0))
        assert sent_id != 0
        assert await client.call(SERVICE, "echo", "x") == "x"
        assert client.dropped == 1  # the heartbeat reply nobody waited for


async def test_serialization_is_a_parameter() -> None:
    """msgpack (serialization 3) as well as Simple; a number resmesh does not implement is
    refused before sending, and a service answers one it receives as motan-go does."""
    async with _served() as client:
        value = {"a": [1, 2]}
        assert (
            await client.call(SERVICE, "echo", value, serialization=Serialization.MSGPACK) == value
        )
        assert await client.call(SERVICE, "hello", "simple") == "hello simple"
        with pytest.raises(LocalProtocolError, match="serialize not found"):
            await client.call(SERVICE, "echo", 1, serialization=Serialization.JSON)
        frame = client.build_request(SERVICE, "echo", 1)
        raw = dataclasses.replace(frame, serialization=Serialization.JSON)
        reply = await client.call_raw(raw)
        error = reply.exception()
        assert error is not None and error.errcode == 500
        assert error.errmsg == "deserialize fail. err:message serialize not found method:echo"


async def test_connect_failures() -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    port = closed.getsockname()[1]
    try:
        with pytest.raises(Motan2ConnectionError, match=r"127\.0\.0\.1"):
            async with open_client("127.0.0.1", port):
                pass
    finally:
        closed.close()


async def test_an_exception_in_the_block_is_not_wrapped() -> None:
    """``Motan2Client.connect`` owns a nursery, yet the block's own exception comes out as it
    was raised, not inside an ExceptionGroup."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(build_service().serve, "127.0.0.1", 0)
        with pytest.raises(KeyError, match="mine"):
            async with Motan2Client.connect("127.0.0.1", port) as client:
                assert await client.call(SERVICE, "echo", 1) == 1
                raise KeyError("mine")
        assert client.closed
        nursery.cancel_scope.cancel()


async def test_idle_connections_are_closed_by_the_service(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _served(build_service(idle_timeout=10)) as client:
        assert await client.call(SERVICE, "echo", 1) == 1
        await trio.sleep(11)  # virtual time: the service gives up on the silent connection
        with pytest.raises(Motan2ConnectionError, match="closed by the peer"):
            await client.call(SERVICE, "echo", 2)


# -- the example as a program ------------------------------------------------------------------


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_example_serves_and_exits_cleanly(stop: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "motan2_echo.py"), "--port", "0"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stderr is not None
        ready, _, _ = select.select([proc.stderr], [], [], 10)
        assert ready, "the example did not log its listening line"
        line = proc.stderr.readline()
        assert f"{SERVICE} (group {GROUP}) listening on 127.0.0.1:" in line
        port = int(line.rsplit(":", 1)[1])

        async def talk() -> str:
            async with open_client("127.0.0.1", port) as client:
                result: str = await client.call(SERVICE, "hello", "process", group=GROUP)
                return result

        assert trio.run(talk) == "hello process"
        proc.send_signal(stop)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def test_the_example_reports_a_busy_port(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["--host", "127.0.0.1", "--port", str(port)]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in caplog.text
