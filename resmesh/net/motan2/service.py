"""A minimal Trio Motan2 server: async handlers by (service path, method), many calls at once.

What ``examples/motan2_echo.py`` and the tests serve, so the client (and later the agent) can be
exercised against a real socket without a Java or Go process. It answers the way a motan-go server
does (https://github.com/weibocom/motan-go: ``server/motanserver.go``, ``server/server.go``,
``provider/provider.go``), since that is what clients and agents in front of it expect:

- every request is handled in its own task and answered when done, so replies leave in any order
  and a slow method does not hold up the others on the connection;
- heartbeats are answered by the connection itself (``heartbeat_response``: ``13 08 30``);
- a oneway request is handled and answered anyway, as motan-go's server does (the client drops the
  reply);
- providers are looked up by service path alone (the group is the agents' business, as in
  motan-go's ``DefaultMessageHandler``), methods by name with the first letter upper-cased (Go's
  exported names: ``echo`` and ``Echo`` are one method);
- errors are motan-go's exception responses, errcode 500 and errtype 1 (service), with its
  wording: ``not found provider for <path>``, ``method <m> is not found in provider.``,
  ``deserialize fail. err:... method:<m>``, ``deserialize arguments fail.<reason>``,
  ``convert to response fail. err:...``. A handler that raises :class:`Motan2Error` answers with
  that exception; any other ``Exception`` becomes errcode 500 with errtype 2 (business): the
  service's own code failed, the node is healthy.

Two departures, both bounds the project's rules ask for: a handler has ``handler_timeout``
seconds (an exception response when it runs out; motan-go's server has no such deadline), and
at most ``max_in_flight`` requests of one connection are handled at once: past that the
connection stops reading, which pushes back on the client through TCP.

Structured concurrency: :meth:`Motan2Service.serve` owns a nursery of connections; each connection
owns a nursery of its writer and its requests' tasks, so cancelling ``serve`` ends everything.
Replies go through the same :class:`~resmesh.net.motan2.client.Outbox` as the client's requests:
whole frames only, so a request task cancelled mid-way leaves nothing half-written.
"""

from __future__ import annotations

import inspect
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar, final

import trio

from ...protocols._errors import LocalProtocolError, RemoteProtocolError
from ...protocols.motan2 import bodies
from ...protocols.motan2.frames import (
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_META,
    ERRTYPE_BUSINESS,
    ERRTYPE_SERVICE,
    META_METHOD,
    META_PATH,
    Frame,
    FrameDecoder,
    FrameError,
    encode_frame,
    exception_response,
    heartbeat_response,
    response,
)
from ..listen import bind_tcp, serve_listener
from ..sockio import close_quietly, recv
from .client import DEFAULT_MAX_UNSENT, Motan2Error, Outbox

__all__ = [
    "DEFAULT_HANDLER_TIMEOUT",
    "DEFAULT_SERVER_MAX_IN_FLIGHT",
    "Handler",
    "Motan2Service",
]

log = logging.getLogger(__name__)

#: An async function called with the decoded arguments; its return value is the result.
Handler = Callable[..., Awaitable[Any]]
_H = TypeVar("_H", bound=Handler)

#: Seconds a handler may run before the call is answered with an exception.
DEFAULT_HANDLER_TIMEOUT: Final = 30.0
#: Requests of one connection handled at once at most; past that the connection stops reading.
DEFAULT_SERVER_MAX_IN_FLIGHT: Final = 10_000
#: motan-go's server answers its own errors with this code (and errtype 1, service).
_ERRCODE: Final = 500


def _first_upper(name: str) -> str:
    """motan-go's ``FirstUpper``: how its provider turns ``M_m`` into a Go method name."""
    return name[:1].upper() + name[1:]


@final
class _Method:
    __slots__ = ("handler", "signature")

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        try:
            self.signature: inspect.Signature | None = inspect.signature(handler)
        except (TypeError, ValueError):  # a callable without an introspectable signature
            self.signature = None


@final
class Motan2Service:
    """Handlers by service path and method name, and a server that answers calls to them.

    ``service.register("com.example.Echo", "echo", echo)`` then
    ``await nursery.start(service.serve, host, port)`` (which returns the bound port: pass port 0
    for any free one).
    """

    __slots__ = (
        "_providers",
        "handler_timeout",
        "idle_timeout",
        "max_body",
        "max_in_flight",
        "max_meta",
        "max_unsent",
    )

    def __init__(
        self,
        *,
        handler_timeout: float = DEFAULT_HANDLER_TIMEOUT,
        idle_timeout: float = math.inf,
        max_in_flight: int = DEFAULT_SERVER_MAX_IN_FLIGHT,
        max_meta: int = DEFAULT_MAX_META,
        max_body: int = DEFAULT_MAX_BODY,
        max_unsent: int = DEFAULT_MAX_UNSENT,
    ) -> None:
        """Args:
        handler_timeout: seconds a handler may take.
        idle_timeout: seconds a connection with no request in progress may stay silent before
            it is closed (none by default: motan-go clients keep their connections open).
        max_in_flight: requests of one connection handled at once.
        max_meta, max_body: the frame decoder's limits (a request over them closes the
            connection, as motan-go does).
        max_unsent: reply bytes queued for one connection before request tasks wait.
        """
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        self._providers: dict[str, dict[str, _Method]] = {}
        self.handler_timeout = handler_timeout
        self.idle_timeout = idle_timeout
        self.max_in_flight = max_in_flight
        self.max_meta = max_meta
        self.max_body = max_body
        self.max_unsent = max_unsent

    def register(self, service: str, method: str, handler: Handler) -> None:
        """Answer calls to ``service.method`` with ``await handler(*args)``.

        Raises:
            ValueError: the method is already registered (case of its first letter aside).
        """
        methods = self._providers.setdefault(service, {})
        key = _first_upper(method)
        if key in methods:
            raise ValueError(f"{service}.{method} is already registered")
        methods[key] = _Method(handler)

    def method(self, service: str, name: str | None = None) -> Callable[[_H], _H]:
        """Decorator form of :meth:`register`; the method name defaults to the function's."""

        def decorate(handler: _H) -> _H:
            self.register(service, name or handler.__name__, handler)
            return handler

        return decorate

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` and serve until cancelled; ``nursery.start`` gets the bound
        port.

        Raises:
            OSError: the address cannot be bound.
        """
        await self.serve_on(bind_tcp(host, port), task_status=task_status)

    async def serve_on(
        self,
        listener: socket.socket,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on a listening socket (from :func:`~resmesh.net.listen.bind_tcp`) until
        cancelled, then close it; ``nursery.start`` gets its port.

        Why a separate step: a program that binds first sees a bind error as a plain
        ``OSError``, before any nursery could wrap it in an exception group.
        """
        try:
            bound: int = listener.getsockname()[1]
            async with trio.open_nursery() as connections:
                task_status.started(bound)
                await serve_listener(listener, self.serve_connection, connections)
        finally:
            close_quietly(listener)

    async def serve_connection(self, sock: socket.socket, peer: str) -> None:
        """Serve one accepted connection until the peer leaves or breaks the protocol; closes
        ``sock``."""
        try:
            await _Connection(self, sock, peer).run()
        finally:
            close_quietly(sock)

    async def dispatch(self, frame: Frame) -> Frame:
        """The response to a request frame: the handler's result or an exception response
        (never raises for what the peer or the handler did)."""
        start = trio.current_time()
        request_id = frame.request_id
        path = frame.meta.get(META_PATH, "")
        name = frame.meta.get(META_METHOD, "")

        def failure(errmsg: str, errcode: int = _ERRCODE, errtype: int = ERRTYPE_SERVICE) -> Frame:
            return exception_response(
                request_id, errcode, errmsg, errtype, process_time=_elapsed_ms(start)
            )

        methods = self._providers.get(path)
        if methods is None:
            return failure(f"not found provider for {path}")
        method = methods.get(_first_upper(name))
        if method is None:
            return failure(f"method {name} is not found in provider.")
        try:
            args = bodies.decode_arguments(frame.serialization, frame.gunzip_body(self.max_body))
        except bodies.SerializationNotFound as exc:
            return failure(exc.errmsg(name))
        except RemoteProtocolError as exc:
            return failure(f"deserialize fail. err:{exc.reply_hint} method:{name}")
        if method.signature is not None:
            try:
                method.signature.bind(*args)
            except TypeError as exc:
                return failure(f"deserialize arguments fail.{exc}")
        result: Any = None
        with trio.move_on_after(self.handler_timeout) as scope:
            try:
                result = await method.handler(*args)
            except Motan2Error as exc:
                return failure(exc.errmsg, exc.errcode, exc.errtype)
            except Exception as exc:
                log.debug("%s.%s raised", path, name, exc_info=True)
                return failure(f"{type(exc).__name__}: {exc}", _ERRCODE, ERRTYPE_BUSINESS)
        if scope.cancelled_caught:
            return failure(f"provider call timed out after {self.handler_timeout:g}s")
        try:
            body = bodies.encode_result(frame.serialization, result)
        except LocalProtocolError as exc:
            return failure(f"convert to response fail. err:{exc.reply_hint}")
        return response(
            request_id,
            body,
            process_time=_elapsed_ms(start),
            serialization=frame.serialization,
        )


def _elapsed_ms(start: float) -> int:
    """``M_pt``: the processing time in whole milliseconds, as motan-go writes it."""
    return max(0, round((trio.current_time() - start) * 1000))


@final
class _Connection:
    """One accepted connection: a reader (this task), a writer, a task per request."""

    __slots__ = ("_idle", "_nursery", "_outbox", "_peer", "_service", "_slots", "_sock")

    def __init__(self, service: Motan2Service, sock: socket.socket, peer: str) -> None:
        self._service = service
        self._sock = sock
        self._peer = peer
        self._outbox = Outbox(sock, self._write_failed, service.max_unsent)
        self._slots = trio.Semaphore(service.max_in_flight)
        self._nursery: trio.Nursery | None = None
        #: Around the reader: its deadline is ``idle_timeout`` after the last activity while no
        #: request is in progress, and infinite while one is.
        self._idle = trio.CancelScope()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._outbox.run)
            self._touch()
            with self._idle:
                await self._read_loop(nursery)
            if self._idle.cancelled_caught:
                log.debug(
                    "motan2 service: %s: idle for %gs, closing",
                    self._peer,
                    self._service.idle_timeout,
                )
            nursery.cancel_scope.cancel()

    def _touch(self) -> None:
        """Restart the idle timer if no request is in progress."""
        if self._slots.value == self._service.max_in_flight:
            self._idle.deadline = trio.current_time() + self._service.idle_timeout

    def _write_failed(self, error: OSError) -> None:
        log.debug("motan2 service: %s: write failed: %s", self._peer, error)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _read_loop(self, nursery: trio.Nursery) -> None:
        service = self._service
        decoder = FrameDecoder(service.max_meta, service.max_body)
        while True:
            try:
                data = await recv(self._sock)
            except OSError as exc:
                log.debug("motan2 service: %s: %s", self._peer, exc)
                return
            if not data:
                return  # the client left
            self._touch()
            # recv parks only when the socket is empty: let the request tasks run between reads.
            await trio.lowlevel.checkpoint()
            try:
                decoder.feed(data)
                for frame in decoder:
                    if frame.response:
                        continue  # a client never answers anything: nothing waits for it
                    if frame.heartbeat:
                        await self._outbox.wait_for_room()  # a client that does not read
                        self._outbox.put(encode_frame(heartbeat_response(frame.request_id)))
                        continue
                    await self._slots.acquire()
                    self._idle.deadline = math.inf
                    nursery.start_soon(self._answer, frame)
            except FrameError as exc:
                # motan-go's server closes the connection on a frame it cannot decode.
                log.debug("motan2 service: %s: %s", self._peer, exc.reply_hint)
                return
            except OSError:
                return  # the writer failed; the connection is ending

    async def _answer(self, frame: Frame) -> None:
        try:
            reply = encode_frame(await self._service.dispatch(frame))
            with trio.move_on_after(self._service.handler_timeout):
                await self._outbox.wait_for_room()
                self._outbox.put(reply)
        except OSError:
            pass  # the connection broke: nobody is left to answer
        finally:
            self._slots.release()
            self._touch()
