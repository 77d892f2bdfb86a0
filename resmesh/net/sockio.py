"""Raw non-blocking socket I/O for the hot path.

Why not ``trio.SocketStream``: every ``send_all``/``receive_some`` on a Trio stream passes through
a checkpoint and a scheduler round trip even when the socket is ready. A Trio checkpoint alone
measured about 10 µs on the project's 2-core benchmark machine, where a whole proxied command
costs the gateway about 50 µs of CPU at ``-P 1`` (``bench/README.md``). Here we try the syscall
first and park on ``trio.lowlevel.wait_readable`` / ``wait_writable`` only on ``EAGAIN``. Both
waits are cancellation points, so cancel scopes and deadlines work as usual; a loop that never
parks must call :func:`trio.lowlevel.checkpoint` itself now and then (a Redis client session
does every few batches, a shared backend connection's reader every few MiB).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable
from typing import Final

import trio

__all__ = [
    "RECV_SIZE",
    "close_quietly",
    "open_tcp",
    "recv",
    "recv_when_readable",
    "send_all",
    "send_buffered",
]

#: One read's size: large enough that a 16-command pipeline or a batch of replies is one read.
RECV_SIZE: Final = 256 * 1024


async def recv(sock: socket.socket, size: int = RECV_SIZE) -> bytes:
    """Read what is available (at least one byte), or ``b""`` at end of stream.

    Raises:
        OSError: the connection broke (reset, etc.).
    """
    while True:
        try:
            return sock.recv(size)
        except BlockingIOError:
            await _wait(trio.lowlevel.wait_readable, sock)


async def recv_when_readable(sock: socket.socket, size: int = RECV_SIZE) -> bytes:
    """:func:`recv` for a socket just found empty: park until it is readable, then read.

    Raises:
        OSError: the connection broke.
    """
    while True:
        await _wait(trio.lowlevel.wait_readable, sock)
        try:
            return sock.recv(size)
        except BlockingIOError:
            continue  # a spurious wakeup: park again


async def send_all(sock: socket.socket, data: bytes | bytearray | memoryview) -> None:
    """Write every byte of ``data``.

    Cancellation may leave a prefix written; callers that share the socket must close it then
    (a half-written frame poisons the stream), and the callers here do.

    Raises:
        OSError: the connection broke.
    """
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await _wait(trio.lowlevel.wait_writable, sock)
            continue
        view = view[sent:]


async def _wait(waiter: Callable[[socket.socket], Awaitable[None]], sock: socket.socket) -> None:
    """Park until ``sock`` is ready; a socket closed meanwhile reads as a broken connection."""
    try:
        await waiter(sock)
    except trio.ClosedResourceError:
        raise OSError(errno.EBADF, "connection closed") from None


async def open_tcp(host: str, port: int) -> socket.socket:
    """Connect a non-blocking TCP socket (no Nagle), parking until the connect completes.

    The caller bounds the wait with its own deadline.

    Raises:
        OSError: the connect failed (refused, unreachable...).
    """
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except UnicodeError as exc:  # the IDNA codec refuses the name (an empty or long label)
        raise OSError(errno.EINVAL, f"invalid host name {host!r}: {exc}") from exc
    last_error: OSError | None = None
    for family, type_, proto, _, sockaddr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(sockaddr)
            if err in (errno.EINPROGRESS, errno.EAGAIN):
                await trio.lowlevel.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, f"{errno.errorcode.get(err, err)}: {host}:{port}")
            return sock
        except BaseException as exc:
            close_quietly(sock)
            if not isinstance(exc, OSError):
                raise
            last_error = exc
    raise last_error or OSError(f"no address for {host}:{port}")


def send_buffered(sock: socket.socket, unsent: bytearray) -> bool:
    """Send what the socket takes of ``unsent`` without waiting, and remove it from the
    buffer: whether nothing is left.

    Raises:
        OSError: the connection broke (never ``BlockingIOError``: a full socket sends
            nothing).
    """
    try:
        sent = sock.send(unsent)
    except BlockingIOError:
        return False
    if sent == len(unsent):
        unsent.clear()
        return True
    del unsent[:sent]
    return False


def close_quietly(sock: socket.socket) -> None:
    """Close a socket, waking any task parked on it first (Trio requires the notify)."""
    try:
        if sock.fileno() >= 0:
            trio.lowlevel.notify_closing(sock)
    finally:
        sock.close()
