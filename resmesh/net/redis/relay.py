"""Pub/sub: a subscribed session relays both directions on its dedicated connection until
either side ends.

A RESP2 subscriber gets messages the node sends when it likes, which cannot be paired with
requests, so once a client subscribes the gateway stops pairing: the node's bytes go to the
client as they come, and the client's commands go to the node, translated by the session's
state (:meth:`~resmesh.protocols.resp.session.RespSession.relay_payload`: the gateway's own
answers, refusals included, are made into commands the node answers in their place, so order
is kept)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import trio

from ...call import Outcome, Unavailable
from ...protocols._errors import ProtocolError
from ...protocols.resp import replies as R
from ...protocols.resp.requests import Command
from ..backend.redis_conn import RedisConnection
from ..sockio import recv

if TYPE_CHECKING:
    from .session import RedisSession

__all__ = ["relay"]


async def relay(session: RedisSession, commands: list[Command]) -> None:
    """Relay until the client or the node ends; ``commands`` start with the SUBSCRIBE."""
    conn = session.pinned
    assert conn is not None
    conn.reusable = False  # its subscriptions must never reach another client
    try:
        await _send(session, commands)
        async with trio.open_nursery() as nursery:
            # A subscriber waits for messages as an idle client waits for input: a drain
            # ends it at once (redis-server closes subscribers on shutdown too).
            session.idle_scope = nursery.cancel_scope
            if session.runtime.draining:
                nursery.cancel_scope.cancel()
            nursery.start_soon(_node_to_client, session, conn, nursery.cancel_scope)
            await _client_to_node(session)
            nursery.cancel_scope.cancel()
    except Unavailable as exc:
        await session.write(R.unavailable(exc.node, exc.reason))
    finally:
        session.idle_scope = None
        session.state.closing = True


async def _send(session: RedisSession, commands: list[Command]) -> None:
    """Send relayed commands (their replies come back unpaired, in the relay), counted for
    the node's health as one exchange."""
    conn = session.pinned
    assert conn is not None
    payload = session.state.relay_payload(commands, session.relay_refusal)
    await session.runtime.engine.execute_pinned(
        session.pinned_node, functools.partial(conn.send, payload), _sent
    )
    session.parser.authenticated = session.state.authenticated


def _sent(_: None) -> Outcome:
    return Outcome.OK


async def _node_to_client(
    session: RedisSession, conn: RedisConnection, cancel: trio.CancelScope
) -> None:
    try:
        while True:
            data = await recv(conn.sock)
            if not data:
                break
            await session.write(data)
            if session.state.closing:
                break
    except OSError:
        pass
    cancel.cancel()


async def _client_to_node(session: RedisSession) -> None:
    parser = session.parser
    while True:
        if parser.failed:
            data = b""  # malformed bytes already buffered: report them without waiting
        else:
            try:
                data = await session.transport.recv()
            except OSError:
                return  # the client's connection broke: it is gone
            if not data:
                return
        try:
            parser.feed(data)
            commands = parser.commands()
        except ProtocolError as exc:
            # The connection is closed after this; replies the node still owes for earlier
            # commands are dropped with it (redis-server would send them first).
            await session.write(R.error(exc.reply_hint))
            return
        if commands:
            await _send(session, commands)
