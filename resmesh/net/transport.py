"""The byte stream a client session runs over: a raw socket in production, any Trio stream in
tests (memory streams, socketpairs).

Why an interface of its own rather than ``trio.abc.Stream``: a proxied command's CPU is mostly
per wakeup, and every ``send_all``/``receive_some`` on a Trio stream passes through a
checkpoint and a scheduler round trip even when the socket is ready. The session drivers
therefore try the non-blocking call first (:meth:`ClientTransport.recv_nowait`,
:meth:`ClientTransport.send_nowait`) and park (:meth:`ClientTransport.recv`,
:meth:`ClientTransport.send_all`) only when it would block. :class:`SocketTransport` binds the
non-blocking calls straight to the socket's own methods, so the fast path costs nothing over
raw socket code; :class:`StreamTransport` adapts any Trio stream by always taking the parking
path, which lets a driver be tested with ``trio.testing.memory_stream_pair()``.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable
from typing import Protocol, final

import trio

from .sockio import RECV_SIZE, close_quietly, recv_when_readable, send_all

__all__ = ["ClientTransport", "SocketTransport", "StreamTransport"]


class ClientTransport(Protocol):
    """A client connection as a session driver sees it.

    Attributes:
        peer: the client's address, for logs and ``CLIENT LIST``.
    """

    peer: str

    @property
    def sock(self) -> socket.socket | None:
        """The socket, when there is one (the poller reads it while its session is
        dispatched)."""
        ...

    def recv_nowait(self) -> bytes:
        """What has arrived (``b""`` at end of stream).

        Raises:
            BlockingIOError: nothing has arrived yet: park on :meth:`recv`.
            OSError: the connection broke.
        """
        ...

    async def recv(self) -> bytes:
        """Wait for bytes (``b""`` at end of stream), parking first: call it when
        :meth:`recv_nowait` found nothing, or when nothing is expected yet.

        Raises:
            OSError: the connection broke.
        """
        ...

    def send_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """Send what fits now; how many bytes that was.

        Raises:
            BlockingIOError: nothing fits now: use :meth:`send_all`.
            OSError: the connection broke.
        """
        ...

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send every byte, waiting for room as needed.

        Raises:
            OSError: the connection broke.
        """
        ...

    def close(self) -> None:
        """Close the connection (waking any task parked on it)."""
        ...


@final
class SocketTransport:
    """A non-blocking TCP socket: the production transport."""

    __slots__ = ("peer", "recv_nowait", "send_nowait", "sock")

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        #: The socket's own methods: the fast path is one C call.
        self.recv_nowait: Callable[[], bytes] = functools.partial(sock.recv, RECV_SIZE)
        self.send_nowait: Callable[[bytes | bytearray | memoryview], int] = sock.send

    async def recv(self) -> bytes:
        # Park first: callers try recv_nowait themselves when bytes may be waiting, so a
        # trial recv here would only fail (EAGAIN) once more.
        return await recv_when_readable(self.sock)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await send_all(self.sock, data)

    def close(self) -> None:
        close_quietly(self.sock)


@final
class StreamTransport:
    """Any Trio stream (a memory stream pair, a socket stream): for tests and embedding.

    Every call parks (``recv_nowait``/``send_nowait`` always say "would block"), so a driver
    runs its slow path only; the protocol logic is the same.
    """

    __slots__ = ("_closed", "peer", "sock", "stream")

    def __init__(self, stream: trio.abc.Stream, peer: str = "test:0") -> None:
        self.stream = stream
        self.peer = peer
        self.sock = None
        self._closed = False

    def recv_nowait(self) -> bytes:
        raise BlockingIOError

    async def recv(self) -> bytes:
        try:
            return bytes(await self.stream.receive_some(RECV_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise OSError(str(exc)) from exc

    def send_nowait(self, data: bytes | bytearray | memoryview) -> int:
        raise BlockingIOError

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise OSError(str(exc)) from exc

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _close_now(self.stream)


def _close_now(stream: object) -> None:
    """Close a Trio stream without awaiting: memory streams and sockets can."""
    if isinstance(stream, trio.StapledStream):
        _close_now(stream.send_stream)
        _close_now(stream.receive_stream)
    elif isinstance(stream, trio.SocketStream):
        stream.socket.close()
    else:
        close = getattr(stream, "close", None)
        if callable(close):
            close()
