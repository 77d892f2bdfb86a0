"""Pub/sub: a subscribed session relays both directions on its dedicated connection until
either side ends, or the client sends ``RESET``.

A RESP2 subscriber gets messages the node sends when it likes, which cannot be paired with
requests, so once a client subscribes the gateway stops pairing: the node's replies go to the
client in the order they come, and the client's commands go to the node, translated by the
session's state (:meth:`~resmesh.protocols.resp.session.RespSession.relay_payload`: the
gateway's own answers, refusals included, are made into commands the node answers in their
place, so order is kept).

``RESET`` leaves subscribed mode (redis-server 6.2): the relay sends the commands up to it,
passes on every reply up to the node's ``+RESET``, then closes the dedicated connection (a
``RESET`` there also logged it in as the node's ``default`` user, which must never serve
anything again) and hands the commands that followed back to the session, which goes on as a
fresh one on the shared connections.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Final

import trio

from ...call import Outcome, Unavailable
from ...protocols._errors import ProtocolError
from ...protocols.resp import replies as R
from ...protocols.resp.requests import Command
from ..backend.redis_conn import RedisConnection
from ..runtime import Waiting
from ..sockio import recv

if TYPE_CHECKING:
    from .session import RedisSession

__all__ = ["relay"]

_RESET_REPLY: Final = b"+RESET\r\n"
#: Replies passed on per write while no RESET is pending.
_RUN: Final = 1 << 16


class _Relay:
    """One subscribed stretch of a session: until a side closes, or a RESET is answered."""

    def __init__(self, session: RedisSession, conn: RedisConnection) -> None:
        self.session = session
        self.conn = conn
        #: RESETs sent whose ``+RESET`` has not come back yet.
        self.resets = 0
        #: The client's commands after a RESET: the session runs them once the relay ends.
        self.after_reset: list[Command] = []
        #: Whether the relay ended with a RESET (the session goes on) rather than a close.
        self.reset = False

    async def send(self, commands: list[Command]) -> bool:
        """Relay ``commands`` up to and including a RESET, keeping those after it; whether
        a RESET was among them (then nothing more is read from the client)."""
        for index, command in enumerate(commands):
            if command.args[0].upper() == b"RESET":
                self.after_reset = commands[index + 1 :]
                commands = commands[: index + 1]
                self.resets += 1
                break
        session = self.session
        payload = session.state.relay_payload(commands, session.relay_refusal)
        await session.runtime.engine.execute_pinned(
            session.pinned_node, functools.partial(self.conn.send, payload), _sent
        )
        session.parser.authenticated = session.state.authenticated
        return self.resets > 0

    async def node_to_client(self, cancel: trio.CancelScope) -> None:
        """Pass the node's replies on, whole ones only, until the node closes or the RESET
        is answered."""
        conn = self.conn
        buffer = conn.replies
        session = self.session
        try:
            while True:
                data = await recv(conn.sock)
                if not data:
                    break
                buffer.feed(data)
                out: list[bytes] = []
                while True:
                    if self.resets:
                        reply = buffer.next_reply()
                        if reply is None:
                            break
                        out.append(reply)
                        if reply == _RESET_REPLY:
                            self.reset = True
                            break
                    else:
                        run, count, _ = buffer.take(_RUN)
                        if not count:
                            break
                        out.append(run)
                if out:
                    await session.write(b"".join(out))
                if self.reset or session.state.closing:
                    break
        except (OSError, ProtocolError):
            pass
        cancel.cancel()

    async def client_to_node(self) -> bytes | None:
        """Relay the client's commands until it leaves or sends RESET; the protocol error to
        answer if it sent malformed bytes (the connection is closed after it; replies the
        node still owes for earlier commands are dropped with it, where redis-server would
        send them first)."""
        parser = self.session.parser
        while True:
            if parser.failed:
                data = b""  # malformed bytes already buffered: report them without waiting
            else:
                try:
                    data = await self.session.transport.recv()
                except OSError:
                    return None  # the client's connection broke: it is gone
                if not data:
                    return None
            try:
                parser.feed(data)
                commands = parser.commands()
            except ProtocolError as exc:
                return R.error(exc.reply_hint)
            if commands and await self.send(commands):
                await trio.sleep_forever()  # the other side ends the relay at +RESET


async def relay(session: RedisSession, commands: list[Command]) -> list[Command] | None:
    """Relay until the client or the node ends (``None``: the session is over) or a RESET
    is answered: then the commands that followed it, for the session to run."""
    conn = session.pinned
    assert conn is not None
    conn.reusable = False  # its subscriptions must never reach another client
    stretch = _Relay(session, conn)
    error: bytes | None = None
    try:
        async with trio.open_nursery() as nursery:
            # A subscriber waits for messages as an idle client waits for input: a drain
            # ends it at once (redis-server closes subscribers on shutdown too).
            session.waiting = Waiting.MESSAGES
            if session.runtime.draining:
                session.interrupt()
            nursery.start_soon(stretch.node_to_client, nursery.cancel_scope)
            if not await stretch.send(commands):
                error = await stretch.client_to_node()
            else:
                await trio.sleep_forever()
            nursery.cancel_scope.cancel()
        if error is not None:  # written once the other direction has stopped writing
            await session.write(error)
    except Unavailable as exc:
        await session.write(R.unavailable(exc.node, exc.reason))
    finally:
        session.waiting = Waiting.NOTHING
    if stretch.reset and not session.state.closing:
        session.left_subscribed_mode()
        return stretch.after_reset
    session.state.closing = True
    return None


def _sent(_: None) -> Outcome:
    return Outcome.OK
