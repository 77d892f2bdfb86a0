"""One TCP connection to a Redis node, speaking RESP as a client.

Two ways to use it:

* *dedicated* (pinned to one client session: MULTI/WATCH, blocking commands, pub/sub): the
  session's own task writes a request and reads its replies with :meth:`request`;
* *multiplexed* (:class:`~resmesh.net.backend.redis_mux.MuxConnection` wraps it): many client
  sessions' commands share it, replies paired to requests by FIFO order.

Replies are framed, not decoded: :func:`scan_reply` finds where each one ends and the raw bytes
are forwarded as they came. Decoding a reply only to encode it again would spend CPU on every
reply to send the client the bytes it would have got anyway, or worse, different ones (a decoder
that collapses types, as hiredis does, turns a ``+OK`` status into a bulk string).
"""

from __future__ import annotations

import math
import socket

import trio

from ...protocols._errors import ProtocolError
from ...protocols.resp.framing import NEED_DATA, ReplyFramer
from ...protocols.resp.requests import encode_command
from ..sockio import close_quietly, open_tcp, recv, send_all
from .errors import BackendError

__all__ = ["RedisConnection", "ReplyBuffer", "connect"]


class ReplyBuffer:
    """Receive buffer that hands out complete raw replies in order.

    Replies are framed by a :class:`ReplyFramer` (:meth:`ReplyFramer.ends`), which
    resumes an incomplete aggregate where it stopped (a 100k-element ``LRANGE`` arriving in
    many reads is scanned once, not once per read) and caps what may be buffered.
    """

    __slots__ = ("_framer",)

    def __init__(self) -> None:
        self._framer = ReplyFramer()

    def feed(self, data: bytes) -> None:
        """Append bytes from the node.

        Raises:
            RemoteProtocolError: the reply in progress exceeds the framer's buffer cap.
        """
        self._framer.feed(data)

    def next_reply(self) -> bytes | None:
        """The next complete reply's bytes, or ``None`` until more arrive.

        Raises:
            RemoteProtocolError: the node sent something that is not RESP.
        """
        reply = self._framer.next_reply()
        return None if reply is NEED_DATA else reply

    def take(self, limit: int) -> tuple[bytes, int, int]:
        """Up to ``limit`` complete replies as one bytes object, how many it holds, and how
        many of them are error replies (none: ``(b"", 0, 0)``; fewer than could be: ask again).

        One slice for a whole run of replies: a client whose batch went out in one write gets
        its replies back as one buffer, without a bytes object per reply.

        Raises:
            RemoteProtocolError: the node sent something that is not RESP.
        """
        ends, errors = self._framer.ends(limit)
        if not ends:
            return b"", 0, 0
        return self._framer.buffer.take(ends[-1]), len(ends), errors

    def ends(self, limit: int) -> tuple[list[int], int]:
        """Where each of up to ``limit`` complete replies ends in :attr:`data` (fewer than
        could be: ask again once they are consumed), and how many are error replies; see
        ``ReplyFramer.ends``. Consumed with :meth:`commit`.

        Raises:
            RemoteProtocolError: the node sent something that is not RESP.
        """
        return self._framer.ends(limit)

    @property
    def data(self) -> bytes | bytearray:
        """The received bytes; the first not yet consumed is at :attr:`start`."""
        return self._framer.buffer.data

    @property
    def start(self) -> int:
        return self._framer.buffer.start

    def commit(self, end: int) -> None:
        """Consume the replies up to ``end`` (an offset :meth:`ends` gave)."""
        self._framer.buffer.commit(end)

    @property
    def empty(self) -> bool:
        return len(self._framer.buffer) == 0


class RedisConnection:
    """A connected, logged-in RESP client connection to one node.

    Attributes:
        node: ``host:port``, for error messages and stats.
        db: the database selected on it; ``resp``: 2 or 3 (what ``HELLO`` negotiated).
        reusable: False once session state of a client may linger on it (a ``SELECT`` inside a
            transaction, an aborted exchange): such a connection is closed, never pooled.
    """

    __slots__ = ("closed", "db", "node", "replies", "resp", "reusable", "sock")

    def __init__(self, sock: socket.socket, node: str, db: int, resp: int) -> None:
        self.sock = sock
        self.node = node
        self.db = db
        self.resp = resp
        self.replies = ReplyBuffer()
        self.reusable = True
        #: Set by :meth:`close` (a plain attribute: every command reads it).
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.reusable = False
            close_quietly(self.sock)

    def looks_alive(self) -> bool:
        """Cheap check before reusing an idle connection: has the node closed it meanwhile?

        Peeks without consuming; an idle connection must have nothing to read, so any byte
        (or end of stream, or an error) means it is unusable.
        """
        if self.closed:
            return False
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        except OSError:
            pass
        self.close()
        return False

    async def send(self, data: bytes) -> None:
        """Write ``data`` whole, or close the connection (a half-written request poisons it).

        Raises:
            BackendError: the connection broke or the write was cancelled.
        """
        if self.closed:
            raise BackendError(self.node, "connection closed")
        try:
            await send_all(self.sock, data)
        except OSError as exc:
            self.close()
            raise BackendError(self.node, exc.strerror or str(exc)) from exc
        except BaseException:
            self.close()
            raise

    async def read_reply(self) -> bytes:
        """Read one complete raw reply.

        Raises:
            BackendError: the connection closed, broke, or the node sent garbage.
        """
        data = b""
        while True:
            try:
                if data:
                    self.replies.feed(data)
                reply = self.replies.next_reply()
            except ProtocolError as exc:
                self.close()
                raise BackendError(self.node, f"protocol error: {exc.reply_hint}") from exc
            if reply is not None:
                return reply
            try:
                data = await recv(self.sock)
            except OSError as exc:
                self.close()
                raise BackendError(self.node, exc.strerror or str(exc)) from exc
            except BaseException:
                self.close()
                raise
            if not data:
                self.close()
                raise BackendError(self.node, "connection closed by the node")

    async def request(self, data: bytes, count: int, timeout: float) -> list[bytes]:
        """Send ``data`` (``count`` commands) and read their ``count`` replies.

        A timeout or cancellation closes the connection: replies still owed would otherwise
        be read as answers to the next request.

        Raises:
            BackendError: connection failure or timeout.
        """
        deadline = trio.current_time() + timeout if math.isfinite(timeout) else math.inf
        with trio.move_on_at(deadline) as scope:
            await self.send(data)
            return [await self.read_reply() for _ in range(count)]
        assert scope.cancelled_caught
        self.close()
        raise BackendError(self.node, f"timed out after {timeout:g}s")


async def connect(
    host: str,
    port: int,
    *,
    db: int,
    resp: int,
    username: str | None,
    password: str | None,
    timeout: float,
) -> RedisConnection:
    """Open a connection and bring it to the wanted state: logged in, ``db`` selected, ``resp``.

    One pipelined round trip does the whole handshake (``HELLO``/``AUTH`` + ``SELECT``).

    Raises:
        BackendError: cannot connect, log in or select within ``timeout``.
    """
    node = f"{host}:{port}"
    with trio.move_on_after(timeout) as scope:
        try:
            sock = await open_tcp(host, port)
        except OSError as exc:
            raise BackendError(node, (exc.strerror or str(exc)).lower()) from exc
        conn = RedisConnection(sock, node, db, resp)
        try:
            commands: list[list[bytes]] = []
            credentials = [password.encode()] if password is not None else []
            if credentials and username is not None:
                credentials.insert(0, username.encode())
            if resp == 3:
                hello: list[bytes] = [b"HELLO", b"3"]
                if credentials:
                    hello += [b"AUTH", (username or "default").encode(), credentials[-1]]
                commands.append(hello)
            elif credentials:
                # Plain AUTH rather than HELLO 2: it also works against pre-6.0 servers.
                commands.append([b"AUTH", *credentials])
            if db:
                commands.append([b"SELECT", str(db).encode()])
            if commands:
                payload = b"".join(encode_command(c) for c in commands)
                replies = await conn.request(payload, len(commands), timeout)
                for command, reply in zip(commands, replies, strict=True):
                    if reply[:1] in (b"-", b"!"):
                        text = reply[1:].split(b"\r\n", 1)[0].decode(errors="replace")
                        conn.close()
                        raise BackendError(node, f"{command[0].decode()} failed: {text}")
        except BaseException:
            conn.close()
            raise
        return conn
    assert scope.cancelled_caught
    raise BackendError(node, f"connect timed out after {timeout:g}s")
