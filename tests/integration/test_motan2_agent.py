"""The Motan2 agent end to end: ``resmesh run`` as a process, Motan2 services in this process
(the resmesh service helper, answering as a motan-go server does), and the resmesh client.

Paths: client -> client side -> node, and client -> client side -> server side -> local
service (the Weibo Mesh shape, both sides in one gateway as the quickstart has them, or in
two). Each test asserts outcomes and counts (calls each node served, replies, closed
connections), never latency ratios.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml

from resmesh.net.motan2 import Motan2Error, Motan2Service, open_client
from resmesh.protocols.motan2 import simple
from resmesh.protocols.motan2.frames import (
    ERRTYPE_BUSINESS,
    ERRTYPE_FRAMEWORK,
    ERRTYPE_SERVICE,
    META_REQUEST_ID,
    META_SOURCE,
    Frame,
    FrameDecoder,
    encode_frame,
    heartbeat_request,
    request,
    response,
)
from tests.net.test_motan2_client import SIMPLE_VALUES
from tests.support.driver import wait_until
from tests.support.servers import Gateway, free_port, port_open

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
QUICKSTART = EXAMPLES / "quickstart.yaml"
SERVICE = "resmesh.demo.EchoService"
GROUP = "resmesh-demo"
APP = "agent-test"


class Node:
    """A service instance: echo, hello, whoami, and errors on demand; it counts its calls
    and can hang (handlers wait forever) or die (listener and connections closed)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0
        self.hung = False
        self.port = 0
        self.scope = trio.CancelScope()
        service = Motan2Service(handler_timeout=60)
        for method in (self.echo, self.hello, self.whoami, self.fail, self.slow):
            service.register(SERVICE, method.__name__, method)
        self.service = service

    async def _enter(self) -> None:
        self.calls += 1
        if self.hung:
            await trio.sleep_forever()

    async def echo(self, value: Any) -> Any:
        await self._enter()
        return value

    async def hello(self, name: str) -> str:
        await self._enter()
        return "hello " + name

    async def whoami(self) -> str:
        await self._enter()
        return self.name

    async def slow(self, seconds: float) -> str:
        await self._enter()
        await trio.sleep(seconds)
        return "slept"

    async def fail(self, errtype: int) -> None:
        await self._enter()
        raise Motan2Error(4321, f"{self.name} refused <&>", errtype)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.scope:
            async with trio.open_nursery() as nursery:
                self.port = await nursery.start(self.service.serve, "127.0.0.1", self.port)
                task_status.started()

    def kill(self) -> None:
        self.scope.cancel()


def agent_config(
    groups: dict[str, list[int]],
    *,
    route: dict[str, int] | None = None,
    export: int | None = None,
    operations: dict[str, Any] | None = None,
    governance: dict[str, Any] | None = None,
    agent: dict[str, Any] | None = None,
    command_timeout: str = "5s",
) -> dict[str, Any]:
    """A gateway with the Motan2 agent: its client side routes the echo service to ``groups``
    (ports); with ``export``, its server side forwards the service to that port."""
    side: dict[str, Any] = {"client": f"127.0.0.1:{free_port()}", "heartbeat_interval": "200ms"}
    if export is not None:
        side["server"] = f"127.0.0.1:{free_port()}"
        side["export"] = {SERVICE: f"127.0.0.1:{export}"}
    side.update(agent or {})
    return {
        "gateway": {"app": APP, "drain_timeout": "1s"},
        "motan2": side,
        "clusters": {
            "echo": {
                "protocol": "motan2",
                "motan2": {"service": SERVICE, "group": GROUP},
                "groups": {g: [f"127.0.0.1:{p}" for p in ports] for g, ports in groups.items()},
                "route": route or dict.fromkeys(groups, 100),
                "governance": {
                    "operations": operations
                    or {"echo": {"idempotent": True}, "whoami": {"idempotent": True}},
                    **(governance or {}),
                },
                "backend": {"connect_timeout": "1s", "command_timeout": command_timeout},
            }
        },
    }


def port_of(config: dict[str, Any], side: str = "client") -> int:
    return int(config["motan2"][side].rsplit(":", 1)[1])


@asynccontextmanager
async def gateway(config: dict[str, Any], tmp_path: Path) -> AsyncIterator[Gateway]:
    gw = await trio.to_thread.run_sync(Gateway, config, tmp_path)
    try:
        yield gw
    finally:
        code = await trio.to_thread.run_sync(gw.terminate)
        assert code == 0, gw.log()
        assert "unexpected error" not in gw.log(), gw.log()


@asynccontextmanager
async def nodes(*names: str) -> AsyncIterator[list[Node]]:
    async with trio.open_nursery() as nursery:
        started = [Node(name) for name in names]
        for node in started:
            await nursery.start(node.run)
        yield started
        nursery.cancel_scope.cancel()


# -- calls through both sides ---------------------------------------------------------------------


async def test_every_simple_type_large_and_gzip_bodies_through_both_sides(tmp_path: Path) -> None:
    async with nodes("local") as (local,):
        config = agent_config({}, export=local.port)
        server = port_of(config, "server")
        config["clusters"]["echo"]["groups"] = {"dc-a": [f"127.0.0.1:{server}"]}
        config["clusters"]["echo"]["route"] = {"dc-a": 100}
        async with gateway(config, tmp_path), open_client("127.0.0.1", port_of(config)) as client:
            for value in SIMPLE_VALUES:
                result = await client.call(SERVICE, "echo", value, group=GROUP)
                assert result == value and type(result) is type(value), value
            assert await client.call(SERVICE, "hello", "mesh", group=GROUP) == "hello mesh"
            large = "x" * (3 * 1024 * 1024)
            assert await client.call(SERVICE, "echo", large, group=GROUP) == large
            frame = client.build_request(SERVICE, "echo", "squeezed " * 1000, group=GROUP)
            reply = await client.call_raw(frame.compressed(16))
            assert simple.decode(reply.gunzip_body()) == ["squeezed " * 1000]
    assert local.calls == len(SIMPLE_VALUES) + 3


async def test_exceptions_keep_their_code_text_and_type(tmp_path: Path) -> None:
    async with nodes("n1") as (node,):
        config = agent_config({"dc-a": [node.port]})
        async with gateway(config, tmp_path), open_client("127.0.0.1", port_of(config)) as client:
            for errtype in (ERRTYPE_FRAMEWORK, ERRTYPE_SERVICE, ERRTYPE_BUSINESS):
                with pytest.raises(Motan2Error) as caught:
                    await client.call(SERVICE, "fail", errtype, group=GROUP)
                assert (caught.value.errcode, caught.value.errmsg, caught.value.errtype) == (
                    4321,
                    "n1 refused <&>",
                    errtype,
                )
            # An unknown method: the service's own exception, relayed as it is.
            with pytest.raises(Motan2Error) as caught:
                await client.call(SERVICE, "nope", group=GROUP)
            assert caught.value.errmsg == "method nope is not found in provider."
            # No cluster for the request: the agent's own exception, motan-go's code and words.
            with pytest.raises(Motan2Error) as caught:
                await client.call("com.example.Other", "x", group=GROUP)
            assert caught.value.errcode == 400 and caught.value.errtype == ERRTYPE_SERVICE
            assert caught.value.errmsg.startswith("cluster not found. cluster: ")


async def test_a_oneway_call_reaches_the_node(tmp_path: Path) -> None:
    async with nodes("n1") as (node,):
        config = agent_config({"dc-a": [node.port]})
        async with gateway(config, tmp_path), open_client("127.0.0.1", port_of(config)) as client:
            await client.oneway(SERVICE, "hello", "fire and forget", group=GROUP)
            await wait_until(lambda: node.calls == 1, "the oneway call at the node")
            # The agent relays the node's reply, as motan-go's does; the client drops it.
            assert await client.call(SERVICE, "hello", "next", group=GROUP) == "hello next"


# -- failures ------------------------------------------------------------------------------------


async def test_a_node_killed_under_load_fails_no_idempotent_call(tmp_path: Path) -> None:
    """Three nodes in two groups; one dies while 50 callers keep calling: every idempotent call
    is answered (failed over to another node), and the dead node gets no more calls.

    The calls in flight on the node fail together, a third of all or more when the load
    is uneven: the retry budget here lets every call in flight retry at once (the default,
    Envoy's 20 % of the calls in flight, holds the death of one node in five, evenly
    loaded)."""
    async with nodes("a1", "a2", "b1") as (a1, a2, b1):
        config = agent_config(
            {"dc-a": [a1.port, a2.port], "dc-b": [b1.port]},
            governance={"failover": {"budget_ratio": 1.0}},
        )
        async with gateway(config, tmp_path), open_client("127.0.0.1", port_of(config)) as client:
            answered: list[str] = []
            killed_at: list[int] = []

            async def caller() -> None:
                for i in range(60):
                    if i == 20 and not killed_at:
                        killed_at.append(len(answered))
                        a1.kill()
                    answered.append(await client.call(SERVICE, "whoami", group=GROUP))

            with trio.fail_after(30):
                async with trio.open_nursery() as callers:
                    for _ in range(50):
                        callers.start_soon(caller)
            assert len(answered) == 50 * 60  # no call failed
            # Only replies already on their way when it died can still come from it.
            assert "a1" in answered[: killed_at[0] + 50]
            assert "a1" not in answered[killed_at[0] + 50 :]
            assert {"a2", "b1"} <= set(answered)


async def test_a_hung_node_is_backed_up(tmp_path: Path) -> None:
    """With backup requests on, calls to a node that stops answering are answered by another
    node after the hedge delay, long before the 30 s call timeout."""
    async with nodes("fast", "stuck") as (fast, stuck):
        config = agent_config(
            {"dc-a": [fast.port, stuck.port]},
            governance={"hedge": {"enabled": True, "budget": 1.0, "floor": "20ms"}},
            command_timeout="30s",
        )
        async with gateway(config, tmp_path), open_client("127.0.0.1", port_of(config)) as client:
            for _ in range(40):  # the hedge delay needs latencies to start from
                await client.call(SERVICE, "echo", 1, group=GROUP)
            stuck.hung = True
            before = stuck.calls
            with trio.fail_after(10):  # without backups, a call to "stuck" takes 30 s
                for i in range(30):  # one at a time: each earns the hedge budget it may spend
                    assert await client.call(SERVICE, "echo", i, group=GROUP) == i
            assert stuck.calls > before  # some calls did go to the hung node...
            # ...and were answered anyway (the nursery above finished in time).


async def test_a_non_idempotent_call_is_not_retried(tmp_path: Path) -> None:
    async with nodes("gone", "alive") as (gone, alive):
        config = agent_config(
            {"dc-a": [gone.port, alive.port]}, operations={}, command_timeout="300ms"
        )
        async with gateway(config, tmp_path), open_client("127.0.0.1", port_of(config)) as client:
            gone.hung = True
            failures = 0
            with trio.fail_after(20):
                for _ in range(10):
                    try:
                        await client.call(SERVICE, "hello", "x", group=GROUP, timeout=5)
                    except Motan2Error as exc:
                        assert exc.errcode == 400 and "no reply in time" in exc.errmsg
                        failures += 1
            assert failures >= 1 and failures == gone.calls  # each was sent once, not retried


# -- switches ------------------------------------------------------------------------------------


async def test_degrade_switches_answer_without_calling_a_node(tmp_path: Path) -> None:
    async with nodes("n1") as (node,):
        operations = {
            "hello": {"switch": {"mode": "fallback", "value": "n/a"}},
            "echo": {"switch": {"mode": "error"}, "idempotent": True},
            "whoami": {"switch": {"mode": "miss"}, "idempotent": True},
        }
        config = agent_config({"dc-a": [node.port]}, operations=operations)
        async with gateway(config, tmp_path), open_client("127.0.0.1", port_of(config)) as client:
            assert await client.call(SERVICE, "hello", "x", group=GROUP) == "n/a"
            assert await client.call(SERVICE, "whoami", group=GROUP) is None
            with pytest.raises(Motan2Error) as caught:
                await client.call(SERVICE, "echo", 1, group=GROUP)
            assert caught.value.errcode == 503 and "echo ECHO" in caught.value.errmsg
            with pytest.raises(Motan2Error):
                await client.call(SERVICE, "fail", 1, group=GROUP)  # not switched: served
    assert node.calls == 1


async def test_a_host_refusing_heartbeats_is_taken_out_of_rotation(tmp_path: Path) -> None:
    """The backend-down degrade: a server side told not to answer heartbeats closes the
    connection of each one, and the client side stops sending it calls."""
    async with nodes("behind-degraded", "healthy") as (hidden, healthy):
        degraded = agent_config({"dc-a": [healthy.port]}, export=hidden.port)
        degraded["motan2"]["heartbeats"] = False
        hidden.hung = True  # any call reaching it would time out
        async with gateway(degraded, tmp_path):
            server = port_of(degraded, "server")
            with socket.create_connection(("127.0.0.1", server), timeout=5) as raw:
                raw.sendall(encode_frame(heartbeat_request(9)))
                assert raw.recv(100) == b""  # closed, not answered
            caller = agent_config({"dc-a": [server, healthy.port]}, command_timeout="2s")
            async with gateway(caller, tmp_path) as caller_gw:
                down = f"motan2 node 127.0.0.1:{server} is down"
                await wait_until(lambda: down in caller_gw.log(), "the host marked down", 10)
                async with open_client("127.0.0.1", port_of(caller)) as client:
                    for _ in range(50):
                        assert await client.call(SERVICE, "whoami", group=GROUP) == "healthy"
    assert hidden.calls == 0


async def test_the_server_side_answers_heartbeats_itself(tmp_path: Path) -> None:
    async with nodes("local") as (local,):
        config = agent_config({"dc-a": [local.port]}, export=local.port)
        async with gateway(config, tmp_path):
            for side in ("server", "client"):
                with socket.create_connection(("127.0.0.1", port_of(config, side))) as raw:
                    raw.settimeout(5)
                    raw.sendall(encode_frame(heartbeat_request(0xABCDEF)))
                    reply = raw.recv(100)
                    # motan-go's heartbeat reply bytes: flags 13, 08, 30, the request's id.
                    assert reply[:5] == b"\xf1\xf1\x13\x08\x30"
                    assert int.from_bytes(reply[5:13], "big") == 0xABCDEF


async def test_a_drain_answers_the_calls_in_flight_first(tmp_path: Path) -> None:
    """SIGTERM with calls in flight: they are answered, then the connection closes and the
    gateway exits 0 (well within drain_timeout)."""
    async with nodes("n1") as (node,):
        config = agent_config({"dc-a": [node.port]})
        config["gateway"]["drain_timeout"] = "10s"
        async with (
            gateway(config, tmp_path) as gw,
            open_client("127.0.0.1", port_of(config)) as client,
        ):
            results: list[str] = []

            async def slow() -> None:
                results.append(await client.call(SERVICE, "slow", 0.5, group=GROUP))

            async with trio.open_nursery() as callers:
                for _ in range(5):
                    callers.start_soon(slow)
                await wait_until(lambda: node.calls == 5, "the calls to reach the node")
                gw.proc.send_signal(signal.SIGTERM)
            assert results == ["slept"] * 5
            assert await trio.to_thread.run_sync(gw.proc.wait, 10) == 0


# -- one connection, many calls ----------------------------------------------------------------


async def test_a_thousand_concurrent_calls_on_one_connection(tmp_path: Path) -> None:
    async with nodes("n1", "n2") as pair:
        config = agent_config({"dc-a": [n.port for n in pair]})
        async with gateway(config, tmp_path), open_client("127.0.0.1", port_of(config)) as client:
            results: dict[int, Any] = {}

            async def one(i: int) -> None:
                results[i] = await client.call(SERVICE, "echo", i, group=GROUP)

            with trio.fail_after(30):
                async with trio.open_nursery() as callers:
                    for i in range(1000):
                        callers.start_soon(one, i)
            assert results == {i: i for i in range(1000)}
            assert client.in_flight == 0
    assert sum(n.calls for n in pair) == 1000


async def test_request_ids_are_per_hop_and_meta_is_filled(tmp_path: Path) -> None:
    """Two clients use the same request ids at once: each gets its own replies back with its
    own ids; the node sees the agent's ids, M_rid holding the caller's, and M_s the app."""
    seen: list[Frame] = []

    async def raw_node(stream: trio.SocketStream) -> None:
        decoder = FrameDecoder()
        while data := await stream.receive_some(65536):
            decoder.feed(data)
            for frame in decoder:
                if frame.heartbeat:
                    await stream.send_all(
                        encode_frame(
                            Frame(
                                request_id=frame.request_id,
                                response=True,
                                heartbeat=True,
                                proxy=True,
                            )
                        )
                    )
                    continue
                seen.append(frame)
                (value,) = simple.decode(frame.body)
                await stream.send_all(
                    encode_frame(response(frame.request_id, simple.encode(value)))
                )

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, raw_node, 0, host="127.0.0.1"))
        node_port = listeners[0].socket.getsockname()[1]
        config = agent_config({"dc-a": [node_port]})
        log = tmp_path / "access.log"
        config["metrics"] = {"access_log": {"path": str(log)}}
        async with gateway(config, tmp_path):
            streams = [await trio.open_tcp_stream("127.0.0.1", port_of(config)) for _ in range(2)]
            for index, stream in enumerate(streams):
                for request_id in (7, 2**64 - 1):
                    body = simple.encode(f"client {index} id {request_id}")
                    frame = request(request_id, SERVICE, "echo", body, group=GROUP)
                    await stream.send_all(encode_frame(frame))
            # A call that carries an end-to-end id of its own keeps it.
            traced = request(9, SERVICE, "echo", simple.encode("traced"), group=GROUP)
            traced = dataclasses.replace(traced, meta={**traced.meta, META_REQUEST_ID: "4242"})
            async with await trio.open_tcp_stream("127.0.0.1", port_of(config)) as stream:
                await stream.send_all(encode_frame(traced))
                with trio.fail_after(5):
                    assert await stream.receive_some(65536)
            for index, stream in enumerate(streams):
                decoder = FrameDecoder()
                replies: dict[int, Any] = {}
                with trio.fail_after(5):
                    while len(replies) < 2:
                        decoder.feed(await stream.receive_some(65536))
                        for reply in decoder:
                            replies[reply.request_id] = simple.decode(reply.body)[0]
                assert replies == {
                    7: f"client {index} id 7",
                    2**64 - 1: f"client {index} id {2**64 - 1}",
                }
                await stream.aclose()
        nursery.cancel_scope.cancel()
    # The gateway has drained and exited: its access log holds one line per call, each with
    # the call's M_rid (the caller's request id where the call started here).
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(line["request_id"] for line in lines) == ["-1", "-1", "4242", "7", "7"]
    assert {(line["cluster"], line["operation"], line["outcome"]) for line in lines} == {
        ("echo", "ECHO", "ok")
    }
    assert len(seen) == 5
    assert len({frame.request_id for frame in seen}) == 5  # the agent's own, per hop
    assert sorted(frame.meta[META_REQUEST_ID] for frame in seen) == ["-1", "-1", "4242", "7", "7"]
    assert {frame.meta[META_SOURCE] for frame in seen} == {APP}
    assert all(frame.proxy for frame in seen)


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["client", "server"])
async def test_malformed_frames_close_only_their_connection(tmp_path: Path, side: str) -> None:
    async with nodes("n1") as (node,):
        config = agent_config({"dc-a": [node.port]}, export=node.port, agent={"max_frame": "64KiB"})
        async with gateway(config, tmp_path):
            port = port_of(config, side)
            async with open_client("127.0.0.1", port) as bystander:
                bad: list[tuple[bytes, Callable[[bytes], bool]]] = [
                    (b"GET / HTTP/1.1\r\n\r\n", lambda reply: reply == b""),  # not Motan2
                    (b"\xf1\xf1\x00\x00\x30" + bytes(12), lambda reply: reply == b""),  # Motan1
                    # An over-limit body: an exception naming the request, then the close.
                    (
                        encode_frame(request(5, SERVICE, "echo", b"x" * 70_000, group=GROUP)),
                        lambda reply: (
                            b"content length over of limit" in reply or b"over of limit" in reply
                        ),
                    ),
                    # A response where a request belongs.
                    (encode_frame(response(3, b"")), lambda reply: reply == b""),
                ]
                for data, expected in bad:
                    with socket.create_connection(("127.0.0.1", port)) as raw:
                        raw.settimeout(5)
                        raw.sendall(data)
                        received = b""
                        while chunk := raw.recv(65536):
                            received += chunk
                        assert expected(received), (data[:40], received)
                    answer = await bystander.call(SERVICE, "hello", "still", group=GROUP)
                    assert answer == "hello still"


async def test_the_quickstarts_agent_serves_the_example_service(tmp_path: Path) -> None:
    """examples/quickstart.yaml's Motan2 part as shipped (ports moved to free ones), with
    examples/motan2_echo.py as a process: client -> client side -> server side -> service."""
    quickstart = yaml.safe_load(QUICKSTART.read_text())
    echo_port, client, server = free_port(), free_port(), free_port()
    agent = quickstart["motan2"]
    agent["client"], agent["server"] = f"127.0.0.1:{client}", f"127.0.0.1:{server}"
    agent["export"] = {SERVICE: f"127.0.0.1:{echo_port}"}
    cluster = quickstart["clusters"]["echo"]
    assert cluster["groups"] == {"dc-a": ["127.0.0.1:9982"]}  # the server side, as shipped
    cluster["groups"] = {"dc-a": [f"127.0.0.1:{server}"]}
    config = {"gateway": {"app": "quickstart"}, "motan2": agent, "clusters": {"echo": cluster}}
    echo = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "motan2_echo.py"), "--port", str(echo_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_until(lambda: port_open(echo_port), "the echo service to listen", 15)
        async with gateway(config, tmp_path), open_client("127.0.0.1", client) as caller:
            assert await caller.call(SERVICE, "hello", "mesh", group=GROUP) == "hello mesh"
            assert await caller.call(SERVICE, "echo", [1, "two"], group=GROUP) == [1, "two"]
    finally:
        echo.terminate()
        echo.wait(10)


async def test_three_hosts_in_two_groups_each_behind_its_own_server_side(tmp_path: Path) -> None:
    """The Weibo Mesh shape end to end: client -> client side -> the server side of one of
    three hosts (each a gateway of its own in front of its service) in two groups. One
    host's gateway is killed under load: no idempotent call fails."""
    async with nodes("a1", "a2", "b1") as services:
        hosts: list[Gateway] = []
        try:
            for service in services:
                host = agent_config({"dc-a": [service.port]}, export=service.port)
                hosts.append(await trio.to_thread.run_sync(Gateway, host, tmp_path))
            sides = [port_of(h, "server") for h in (gw_config(g) for g in hosts)]
            caller = agent_config(
                {"dc-a": sides[:2], "dc-b": sides[2:]},
                governance={"failover": {"budget_ratio": 1.0}},
            )
            async with (
                gateway(caller, tmp_path),
                open_client("127.0.0.1", port_of(caller)) as client,
            ):
                answered: list[str] = []
                killed_at: list[int] = []

                async def call_on() -> None:
                    for i in range(40):
                        if i == 15 and not killed_at:
                            killed_at.append(len(answered))
                            hosts[0].proc.kill()  # the host a1 is gone, its gateway too
                        answered.append(await client.call(SERVICE, "whoami", group=GROUP))

                with trio.fail_after(30):
                    async with trio.open_nursery() as callers:
                        for _ in range(30):
                            callers.start_soon(call_on)
                assert len(answered) == 30 * 40  # no call failed
                assert "a1" not in answered[killed_at[0] + 30 :]
                assert {"a1", "a2", "b1"} <= set(answered)
        finally:
            for host in hosts[1:]:
                assert await trio.to_thread.run_sync(host.terminate) == 0, host.log()
            if hosts:
                await trio.to_thread.run_sync(hosts[0].terminate)  # killed: reaps, closes its log


def gw_config(gateway: Gateway) -> dict[str, Any]:
    return yaml.safe_load(gateway.config_path.read_text())  # type: ignore[no-any-return]


# -- the registry -------------------------------------------------------------------------------


async def _ctl(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "resmesh", "ctl", "-c", str(config_path), *args]
    done = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return subprocess.CompletedProcess(command, 0, done.stdout.decode(), done.stderr.decode())


async def test_ctl_adds_and_removes_instances_and_degrades_the_service(tmp_path: Path) -> None:
    """Instances registered with ``resmesh ctl node add`` take calls; a removed one gets no
    more; a fallback switch answers for the service. (How soon, within a second, is
    measured on Redis clusters: tests/integration/test_registry_fleet.py.)"""
    async with nodes("n1", "n2") as (first, second):
        config = agent_config({"dc-a": [first.port]})
        admin = free_port()
        config["gateway"]["admin"] = f"127.0.0.1:{admin}"

        async def applied(done: subprocess.CompletedProcess[str]) -> None:
            """Wait until the gateway runs the registry version ``ctl`` wrote."""
            version = int(done.stdout.split("registry version ")[1].split(")")[0])
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin}") as http:
                with trio.fail_after(5):
                    while (await http.get("/status")).json()["registry"]["version"] < version:
                        await trio.sleep(0.01)

        async with (
            gateway(config, tmp_path) as gw,
            open_client("127.0.0.1", port_of(config)) as client,
        ):
            assert await client.call(SERVICE, "whoami", group=GROUP) == "n1"
            await _ctl(gw.config_path, "node", "add", "echo", f"127.0.0.1:{second.port}")
            with trio.fail_after(5):
                while await client.call(SERVICE, "whoami", group=GROUP) != "n2":
                    pass
            await applied(
                await _ctl(gw.config_path, "node", "remove", "echo", f"127.0.0.1:{first.port}")
            )
            served = first.calls
            for _ in range(20):
                assert await client.call(SERVICE, "whoami", group=GROUP) == "n2"
            assert first.calls == served

            await _ctl(gw.config_path, "degrade", "echo", "--mode", "fallback", "--value", "n/a")
            with trio.fail_after(5):
                while await client.call(SERVICE, "echo", "x", group=GROUP) != "n/a":
                    pass
            await _ctl(gw.config_path, "restore", "echo")
            with trio.fail_after(5):
                while await client.call(SERVICE, "echo", "x", group=GROUP) != "x":
                    pass
