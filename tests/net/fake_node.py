"""A tiny in-process Redis node for the networking unit tests: enough RESP to play a backend
(PING, ECHO, SET, GET, INCR, SELECT, AUTH, MULTI/EXEC/DISCARD), with hooks to stall, break or
garble. Integration tests use a real redis-server; these tests need a node they can script.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from resmesh.protocols._errors import ProtocolError
from resmesh.protocols.resp.requests import RequestParser


def bulk(value: bytes | None) -> bytes:
    return b"$-1\r\n" if value is None else b"$%d\r\n%s\r\n" % (len(value), value)


class FakeNode:
    """Serve with ``nursery.start(node.serve)``; ``port`` is where it listens.

    Attributes:
        received: every command it was sent, per connection, in order.
        stall: while set, the node reads but does not answer (a SIGSTOPped server).
        hook: called with each command; its bytes, if any, are the answer instead.
    """

    def __init__(self) -> None:
        self.port = 0
        self.data: dict[int, dict[bytes, bytes]] = {}
        self.received: list[list[bytes]] = []
        self.connections = 0
        self.stall = trio.Event()
        self.stall.set()  # set: answering
        self.hook: Callable[[list[bytes]], bytes | None] | None = None
        self._streams: list[trio.SocketStream] = []

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    def close_all(self) -> None:
        """Drop every client connection (a node that restarts)."""
        for stream in self._streams:
            stream.socket.close()

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        self._streams.append(stream)
        parser = RequestParser()
        db = 0
        queued: list[list[bytes]] | None = None
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                parser.feed(data)
                out = []
                for command in parser.commands():
                    self.received.append(command.args)
                    await self.stall.wait()
                    name = command.args[0].upper()
                    answer = self.hook(command.args) if self.hook else None
                    if answer is not None:
                        out.append(answer)
                    elif queued is not None and name not in (b"EXEC", b"DISCARD"):
                        queued.append(command.args)
                        out.append(b"+QUEUED\r\n")
                    elif name == b"MULTI":
                        queued = []
                        out.append(b"+OK\r\n")
                    elif name == b"DISCARD":
                        queued = None
                        out.append(b"+OK\r\n")
                    elif name == b"EXEC":
                        results = [self._run(args, db) for args in queued or []]
                        queued = None
                        out.append(b"*%d\r\n" % len(results) + b"".join(results))
                    elif name == b"SELECT":
                        db = int(command.args[1])
                        out.append(b"+OK\r\n" if db < 16 else b"-ERR DB index is out of range\r\n")
                    else:
                        out.append(self._run(command.args, db))
                await stream.send_all(b"".join(out))
        except (trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError):
            return

    def _run(self, args: list[bytes], db: int) -> bytes:
        name = args[0].upper()
        store = self.data.setdefault(db, {})
        if name == b"PING":
            return b"+PONG\r\n"
        if name == b"ECHO":
            return bulk(args[1])
        if name == b"AUTH":
            return b"+OK\r\n"
        if name == b"SET":
            store[args[1]] = args[2]
            return b"+OK\r\n"
        if name == b"GET":
            return bulk(store.get(args[1]))
        if name == b"INCR":
            value = int(store.get(args[1], b"0")) + 1
            store[args[1]] = b"%d" % value
            return b":%d\r\n" % value
        return b"-ERR unknown command '%s'\r\n" % args[0]
