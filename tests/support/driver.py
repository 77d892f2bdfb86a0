"""Clients of an in-process gateway over memory streams: the Redis driver without a client
socket, in front of a real redis-server or an in-process fake node."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio.testing

from resmesh.config import Config, parse_config
from resmesh.net.redis.runtime import RedisRuntime
from resmesh.net.transport import StreamTransport
from tests.support.servers import encode_command, resp_frame_end


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Wait until ``condition()`` holds, checking every millisecond; fail after ``timeout``."""
    try:
        with trio.fail_after(timeout):
            while not condition():
                await trio.sleep(0.001)
    except trio.TooSlowError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


class Client:
    """The application's end of a memory stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""

    async def call(self, *commands: tuple[str, ...]) -> list[bytes]:
        await self.stream.send_all(b"".join(encode_command(*c) for c in commands))
        return await self.replies(len(commands))

    async def replies(self, count: int) -> list[bytes]:
        out: list[bytes] = []
        with trio.fail_after(5):
            while len(out) < count:
                end = resp_frame_end(self.buffer)
                if end > 0:
                    out.append(self.buffer[:end])
                    self.buffer = self.buffer[end:]
                    continue
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError(f"closed after {out}")
                self.buffer += data
        return out

    async def closed(self) -> bool:
        with trio.fail_after(5):
            return await self.stream.receive_some(65536) == b""


def inprocess_config(
    tmp_path: Path,
    nodes: list[Any],
    *,
    backend: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    **governance: Any,
) -> Config:
    """The config of one Redis cluster ``c`` (policy ``passthrough`` plus ``governance``) over
    ``nodes`` (ports, or node entries as the config writes them), for a runtime the test runs
    in its own process (its listen address is never bound)."""
    groups = [f"127.0.0.1:{n}" if isinstance(n, int) else n for n in nodes]
    cluster: dict[str, Any] = {
        "protocol": "redis",
        "listen": "127.0.0.1:1",
        "groups": {"dc-a": groups},
        "policy": "passthrough",
        "governance": governance,
    }
    if backend:
        cluster["backend"] = backend
    if limits:
        cluster["limits"] = limits
    return parse_config({"clusters": {"c": cluster}}, tmp_path / "inprocess.yaml")


@asynccontextmanager
async def inprocess_gateway(
    tmp_path: Path,
    nodes: list[Any],
    *,
    clients: int = 1,
    backend: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    **governance: Any,
) -> AsyncIterator[tuple[RedisRuntime, list[Client]]]:
    """One cluster (policy ``passthrough`` plus ``governance``) over ``nodes`` (ports, or node
    entries as the config writes them), run in this process, and ``clients`` clients."""
    config = inprocess_config(tmp_path, nodes, backend=backend, limits=limits, **governance)
    async with trio.open_nursery() as nursery:
        runtime = RedisRuntime(config.clusters["c"], config.users, nursery)
        nursery.start_soon(runtime.run)
        ends = []
        for _ in range(clients):
            client_end, gateway_end = trio.testing.memory_stream_pair()
            nursery.start_soon(runtime.handle, StreamTransport(gateway_end))
            ends.append(Client(client_end))
        yield runtime, ends
        runtime.close()
        nursery.cancel_scope.cancel()
