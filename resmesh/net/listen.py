"""TCP listeners: bind, accept, and run one handler task per connection.

Each listener owns a nursery of connection tasks, so a connection never outlives the listener
that accepted it (structured concurrency). ``SO_REUSEPORT`` lets several worker processes share
one port, the kernel spreading connections across them (``bench/README.md`` measures what a
second worker adds: ``--workers 2``).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from .sockio import close_quietly

__all__ = ["bind_tcp", "serve_listener"]

log = logging.getLogger(__name__)

#: Accept errors that mean "out of resources for a moment", as ``trio.SocketListener`` treats
#: them: log, back off briefly, keep accepting, never crash the listener.
_TRANSIENT_ACCEPT_ERRORS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.ECONNABORTED}
)

ConnectionHandler = Callable[[socket.socket, str], Awaitable[None]]


def bind_tcp(
    host: str, port: int, *, reuse_port: bool = False, backlog: int = 1024
) -> socket.socket:
    """Bind and listen; the socket is non-blocking, ready for :func:`serve_listener`.

    Raises:
        OSError: the address is in use or not ours to bind.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, type_, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_listener(
    listener: socket.socket,
    handler: ConnectionHandler,
    connections: trio.Nursery,
) -> None:
    """Accept until cancelled, starting ``handler(sock, peer)`` in ``connections`` for each.

    The handler owns the client socket and must close it. Closing the listener is the caller's
    job (it stops accepting on drain while the connections nursery finishes in-flight work).
    """
    while True:
        try:
            client, addr = listener.accept()
        except BlockingIOError:
            await trio.lowlevel.wait_readable(listener)
            continue
        except OSError as exc:
            if exc.errno not in _TRANSIENT_ACCEPT_ERRORS:
                raise
            log.warning("accept failed, backing off: %s", exc)
            await trio.sleep(0.1)
            continue
        try:
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            close_quietly(client)
            continue
        peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        connections.start_soon(handler, client, peer)
        await trio.lowlevel.checkpoint_if_cancelled()
