"""A Trio Motan2 client: one TCP connection, many calls in flight, replies matched by request id.

What Python applications, the tests and the agent use to talk to a Motan2 server or a mesh agent
(motan-go, https://github.com/weibocom/motan-go, or Java motan). The wire is
``protocols/motan2.md``; frames come from :mod:`resmesh.protocols.motan2.frames` and bodies from
:mod:`resmesh.protocols.motan2.bodies` (Simple, motan-go's default, and msgpack).

Why one connection carries many calls: Motan2 has no ordering rule, a server answers each
request when it is done and the reply names its request by id, so calls need not queue behind
each other. The shape is motan-go's own client channel (``V2Channel`` in
``endpoint/motanEndpoint.go``): a map of calls waiting by request id, one reader that hands each
reply to its call and drops a reply nobody waits for (a call that timed out, a oneway call: motan-go
servers answer those too), one writer that owns the socket's writes, and request ids that belong to
the connection (a per-hop id; the end-to-end id travels in meta ``M_rid``).

Structured concurrency: the reader and the writer run in :meth:`Motan2Client.run`, which its owner
starts in a nursery (``async with Motan2Client.connect(...)`` does it for you). A call never
writes to the socket itself: it hands one whole encoded frame to the writer in a single
synchronous step (:meth:`Outbox.put`), so a call cancelled at any point leaves no half-written frame
on the wire, and the frames of concurrent calls made in the same scheduler tick leave in one
``send``. Every wait of a call (a free slot, room in the send buffer, the reply) is under the call's
deadline.

Failures: a connection that breaks, is closed by the peer or sends bytes that are not Motan2 is
closed and fails every waiting call with :class:`Motan2ConnectionError`; a call without a reply in
time fails alone with :class:`Motan2Timeout` and the connection stays up (its late reply is
dropped); an exception response is a :class:`Motan2Error` with the peer's errcode, errmsg and
errtype.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from types import TracebackType
from typing import Any, Final, TypedDict, Unpack, final

import trio

from ...call import Outcome
from ...protocols.motan2 import bodies
from ...protocols.motan2.frames import (
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_META,
    ERRTYPE_BUSINESS,
    ERRTYPE_FRAMEWORK,
    ERRTYPE_SERVICE,
    META_EXCEPTION,
    ErrorInfo,
    Frame,
    FrameDecoder,
    FrameError,
    Serialization,
    encode_frame,
    heartbeat_request,
    request,
)
from ..backend.errors import BackendError
from ..sockio import close_quietly, open_tcp, recv

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MAX_UNSENT",
    "DEFAULT_TIMEOUT",
    "ClientOptions",
    "Motan2Client",
    "Motan2ConnectionError",
    "Motan2Error",
    "Motan2Timeout",
    "Outbox",
    "open_client",
]

log = logging.getLogger(__name__)

#: Seconds a call waits for its reply by default: motan-go's ``defaultRequestTimeout`` (1000 ms,
#: ``endpoint/motanEndpoint.go``).
DEFAULT_TIMEOUT: Final = 1.0
#: Seconds a connect may take by default: motan-go's ``defaultConnectTimeout`` (1000 ms).
DEFAULT_CONNECT_TIMEOUT: Final = 1.0
#: Calls waiting for a reply on one connection at most; more wait for a slot (under their own
#: deadline), so a slow server cannot make the client hold an unbounded number of calls.
DEFAULT_MAX_IN_FLIGHT: Final = 10_000
#: Bytes queued for the socket at most before callers wait for the writer to catch up.
DEFAULT_MAX_UNSENT: Final = 4 * 1024 * 1024

#: Bytes the reader may take in a row before letting other tasks run: ``recv`` parks only when
#: the socket is empty, so a peer streaming replies would otherwise hold the scheduler.
_YIELD_AFTER_BYTES: Final = 4 << 20
_U64_MAX: Final = 2**64 - 1


# -- errors ------------------------------------------------------------------------------------


class Motan2Error(Exception):
    """The peer answered the call with an exception response (status 1, meta ``M_e``).

    Also what a service handler raises to choose the exception it answers with.

    Attributes:
        errcode: the peer's code (500 for most of motan-go's own errors, 400 for its client
            timeouts, Java's 10001/30001...).
        errmsg: the peer's message.
        errtype: 0 framework, 1 service, 2 business (:data:`ERRTYPE_BUSINESS`: thrown by the
            service's own code; motan-go counts it as a success of the node).
        frame: the exception response, when the error came from the wire.
    """

    def __init__(
        self,
        errcode: int,
        errmsg: str,
        errtype: int = ERRTYPE_SERVICE,
        *,
        frame: Frame | None = None,
    ) -> None:
        super().__init__(f"motan2 exception {errcode} (errtype {errtype}): {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg
        self.errtype = errtype
        self.frame = frame

    @classmethod
    def from_frame(cls, frame: Frame) -> Motan2Error:
        """The error an exception response stands for. An ``M_e`` that is not a JSON object
        (motan-go fails such a call too) gives errcode 0, errtype framework and the raw text."""
        info = frame.exception()
        if info is None:
            raw = frame.meta.get(META_EXCEPTION)
            text = "exception response without M_e" if raw is None else raw
            return cls(0, text, ERRTYPE_FRAMEWORK, frame=frame)
        return cls(info.errcode, info.errmsg, info.errtype, frame=frame)

    @property
    def info(self) -> ErrorInfo:
        return ErrorInfo(self.errcode, self.errmsg, self.errtype)

    @property
    def outcome(self) -> Outcome:
        """How governance judges the node: a business exception is the caller's affair (the
        node answered), anything else the node's."""
        return Outcome.APP_ERROR if self.errtype == ERRTYPE_BUSINESS else Outcome.UPSTREAM_ERROR


class Motan2ConnectionError(BackendError):
    """No answer from the peer: the connect failed, the connection broke or was closed (by the
    peer, by :meth:`Motan2Client.close`), or the peer sent bytes that are not Motan2. A
    :class:`~resmesh.call.Unavailable` with outcome ``LOCAL_ERROR``, like every backend failure."""


class Motan2Timeout(Motan2ConnectionError):
    """The call got no reply (or no slot to be sent) within its timeout. Only this call failed:
    the connection stays up, and a reply arriving later is dropped."""


# -- the send side -----------------------------------------------------------------------------


@final
class Outbox:
    """The write side of a socket shared by many tasks: whole frames in, bytes out in order.

    Why a writer task rather than each caller writing: a caller cancelled in the middle of a
    ``send_all`` would leave part of a frame on the wire, and every later frame would be read
    from the wrong offset. :meth:`put` queues a whole frame without a checkpoint (it cannot be
    interrupted), and :meth:`run`, the only task that writes, sends what is queued. Frames put in
    the same scheduler tick leave in one ``send``.

    Memory is bounded by the callers: they :meth:`wait_for_room` before :meth:`put` while more
    than ``max_unsent`` bytes wait for the socket.
    """

    __slots__ = (
        "_max_unsent",
        "_on_error",
        "_room_lot",
        "_sock",
        "_unsent",
        "_writer_lot",
        "error",
    )

    def __init__(
        self,
        sock: socket.socket,
        on_error: Callable[[OSError], None],
        max_unsent: int = DEFAULT_MAX_UNSENT,
    ) -> None:
        """Args:
        sock: a connected non-blocking socket; the owner closes it.
        on_error: called once when a write fails (the owner closes the connection).
        max_unsent: bytes queued beyond which :meth:`wait_for_room` parks.
        """
        self._sock = sock
        self._on_error = on_error
        self._max_unsent = max_unsent
        self._unsent = bytearray()
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._room_lot = trio.lowlevel.ParkingLot()
        #: The write error that ended this outbox, or ``None`` while it works.
        self.error: OSError | None = None

    @property
    def unsent(self) -> int:
        """Bytes queued but not yet taken by the socket."""
        return len(self._unsent)

    async def wait_for_room(self) -> None:
        """Park while the queue is over its bound (returns at once if the outbox failed: the
        following :meth:`put` raises)."""
        while len(self._unsent) > self._max_unsent and self.error is None:
            await self._room_lot.park()

    def put(self, data: bytes) -> None:
        """Queue ``data`` (one or more whole frames) for the writer. No checkpoint: a frame is
        either queued whole or not at all.

        Raises:
            OSError: an earlier write failed (the connection is broken).
        """
        if self.error is not None:
            raise self.error
        if not self._unsent:
            self._writer_lot.unpark()
        self._unsent += data

    def fail(self, error: OSError) -> None:
        """End the outbox: drop what is queued, refuse new frames, wake everyone parked."""
        if self.error is None:
            self.error = error
        self._unsent.clear()
        self._writer_lot.unpark_all()
        self._room_lot.unpark_all()

    async def run(self) -> None:
        """The writer loop: send what is queued until the outbox fails or the task is cancelled.
        A write error ends the outbox and is reported to ``on_error``."""
        sock = self._sock
        unsent = self._unsent
        while self.error is None:
            if not unsent:
                await self._writer_lot.park()
                continue
            try:
                sent = sock.send(unsent)
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_writable(sock)
                except trio.ClosedResourceError:
                    self._failed(OSError(errno.EBADF, "connection closed"))
                continue
            except OSError as exc:
                self._failed(exc)
                continue
            del unsent[:sent]
            if len(unsent) <= self._max_unsent:
                self._room_lot.unpark_all()

    def _failed(self, error: OSError) -> None:
        self.fail(error)
        self._on_error(error)


# -- the client --------------------------------------------------------------------------------


class ClientOptions(TypedDict, total=False):
    """The settings of a :class:`Motan2Client` (its constructor's keyword arguments), as
    :meth:`Motan2Client.dial` and :meth:`Motan2Client.connect` pass them on."""

    source: str
    timeout: float
    max_in_flight: int
    max_unsent: int
    max_meta: int
    max_body: int


@final
class _Call:
    """One call waiting for its reply: the reader sets ``reply`` or the connection sets
    ``error``, then the event."""

    __slots__ = ("done", "error", "reply")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: Frame | None = None
        self.error: Motan2ConnectionError | None = None


@final
class Motan2Client:
    """A Motan2 client over one TCP connection (see the module docstring for the design).

    Usually opened with ``async with Motan2Client.connect(host, port) as client`` (or
    :func:`open_client`), which runs the connection in a nursery of its own and closes it on
    exit. An owner with its own nursery (the agent) uses :meth:`dial`, starts :meth:`run` there
    and calls :meth:`close` when done.

    Attributes:
        node: ``host:port`` of the peer, for error messages.
        source: the calling application's name, sent as meta ``M_s`` when not empty.
        timeout: the default per-call timeout in seconds.
        dropped: replies received that no call was waiting for (late replies of timed-out
            calls, replies to oneway requests, frames that are not responses).
    """

    __slots__ = (
        "_calls",
        "_closed",
        "_decoder",
        "_max_body",
        "_next_id",
        "_outbox",
        "_slots",
        "_sock",
        "dropped",
        "node",
        "source",
        "timeout",
    )

    def __init__(
        self,
        sock: socket.socket,
        node: str,
        *,
        source: str = "",
        timeout: float = DEFAULT_TIMEOUT,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_unsent: int = DEFAULT_MAX_UNSENT,
        max_meta: int = DEFAULT_MAX_META,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        """Wrap a connected non-blocking socket (the client owns it from now on).

        Args:
            sock: the connection, e.g. from :func:`~resmesh.net.sockio.open_tcp`.
            node: ``host:port``, for error messages.
            source: sent as ``M_s`` (motan-go's metrics key it by the caller's application).
            timeout: default seconds a call waits for its reply.
            max_in_flight: calls waiting for replies at most; more wait for a slot.
            max_unsent: bytes queued for the socket before callers wait.
            max_meta: largest meta block accepted in a reply (the codec's limit).
            max_body: largest body accepted in a reply, and largest a gzip'd one may expand to.
        """
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        self._sock = sock
        self.node = node
        self.source = source
        self.timeout = timeout
        self._decoder = FrameDecoder(max_meta, max_body)
        self._max_body = max_body
        self._calls: dict[int, _Call] = {}
        self._next_id = 0
        self._slots = trio.Semaphore(max_in_flight)
        self._outbox = Outbox(sock, self._write_failed, max_unsent)
        #: Why the connection ended, once it has.
        self._closed: str | None = None
        self.dropped = 0

    # -- opening and closing ---------------------------------------------------------------

    @classmethod
    async def dial(
        cls,
        host: str,
        port: int,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        **options: Unpack[ClientOptions],
    ) -> Motan2Client:
        """Connect, without starting the connection's tasks (start :meth:`run` in a nursery).

        ``options`` are those of the constructor.

        Raises:
            Motan2ConnectionError: the connect failed or took longer than ``connect_timeout``.
        """
        node = f"{host}:{port}"
        with trio.move_on_after(connect_timeout):
            try:
                sock = await open_tcp(host, port)
            except OSError as exc:
                raise Motan2ConnectionError(node, (exc.strerror or str(exc)).lower()) from exc
            try:
                return cls(sock, node, **options)
            except BaseException:
                close_quietly(sock)
                raise
        raise Motan2ConnectionError(node, f"connect timed out after {connect_timeout:g}s")

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        **options: Unpack[ClientOptions],
    ) -> _Connected:
        """``async with Motan2Client.connect(host, port, ...) as client``: connect, run the
        connection in a nursery owned by the ``async with`` block, close it on exit.

        ``options`` are those of the constructor (``source``, ``timeout``, ``max_in_flight``...).

        Raises:
            Motan2ConnectionError: on entry, when the connect fails or times out.
        """
        return _Connected(cls, host, port, connect_timeout, options)

    @property
    def closed(self) -> bool:
        return self._closed is not None

    @property
    def in_flight(self) -> int:
        """Calls waiting for their reply."""
        return len(self._calls)

    def close(self) -> None:
        """Close the connection: :meth:`run` returns, every waiting call fails."""
        self._end("connection closed by the client")

    async def run(self) -> None:
        """Read replies and write requests until the connection ends or this task is
        cancelled; when it returns, the connection is closed and every waiting call failed."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._outbox.run)
                await self._read_loop()
                nursery.cancel_scope.cancel()
        finally:
            self._end("connection closed by the client")

    # -- calls -----------------------------------------------------------------------------

    def build_request(
        self,
        service: str,
        method: str,
        *args: Any,
        group: str = "",
        version: str = "",
        method_desc: str = "",
        serialization: int = Serialization.SIMPLE,
        meta: Mapping[str, str] | None = None,
        oneway: bool = False,
    ) -> Frame:
        """The request frame :meth:`call` would send (its request id is set when sent): meta
        ``M_p``, ``M_m``, then ``M_md``, ``M_g``, ``M_v``, ``M_s`` when not empty, the
        attachments in ``meta``, and ``M_pp=motan2``; the arguments encoded with
        ``serialization`` (:mod:`resmesh.protocols.motan2.bodies`).

        Raises:
            LocalProtocolError: a serialization resmesh does not implement, an argument it
                cannot encode, or meta holding ``\\n``.
        """
        body = bodies.encode_arguments(serialization, args)
        return request(
            0,
            service,
            method,
            body,
            method_desc=method_desc,
            group=group,
            version=version,
            source=self.source,
            meta=meta,
            serialization=serialization,
            oneway=oneway,
        )

    async def call(
        self,
        service: str,
        method: str,
        *args: Any,
        group: str = "",
        version: str = "",
        method_desc: str = "",
        timeout: float | None = None,
        serialization: int = Serialization.SIMPLE,
        meta: Mapping[str, str] | None = None,
    ) -> Any:
        """Call ``service.method(*args)`` and return its result, decoded with
        ``serialization`` (Simple: see :mod:`resmesh.protocols.motan2.simple` for the Python
        types; an empty body is ``None``).

        Args:
            service: the service path, meta ``M_p`` (a Java interface name, say).
            method: the method name, ``M_m``.
            args: the arguments, encoded back to back.
            group: ``M_g``, what agents route on with the path.
            version: ``M_v``.
            method_desc: ``M_md``, the Java parameter types when the method is overloaded.
            timeout: seconds to wait for the reply; the client's :attr:`timeout` by default.
            serialization: the body encoding (its number goes in the header).
            meta: attachments, sent verbatim after the protocol's keys.

        Raises:
            Motan2Error: the peer answered with an exception.
            Motan2Timeout: no reply within ``timeout``.
            Motan2ConnectionError: the connection failed or is closed.
            RemoteProtocolError: the reply's body cannot be decoded (``close`` false).
            LocalProtocolError: as :meth:`build_request`.
        """
        frame = self.build_request(
            service,
            method,
            *args,
            group=group,
            version=version,
            method_desc=method_desc,
            serialization=serialization,
            meta=meta,
        )
        reply = await self.call_raw(frame, timeout=timeout)
        if reply.is_exception:
            raise Motan2Error.from_frame(reply)
        return bodies.decode_result(serialization, reply.gunzip_body(self._max_body))

    async def oneway(
        self,
        service: str,
        method: str,
        *args: Any,
        group: str = "",
        version: str = "",
        method_desc: str = "",
        timeout: float | None = None,
        serialization: int = Serialization.SIMPLE,
        meta: Mapping[str, str] | None = None,
    ) -> None:
        """Send a oneway request (flag 0x04) and return once it is queued for the socket; a
        reply that comes anyway (motan-go servers send one) is dropped.

        Raises:
            Motan2Timeout: the send buffer stayed full for ``timeout``.
            Motan2ConnectionError, ValueError, LocalProtocolError: as :meth:`call`.
        """
        frame = self.build_request(
            service,
            method,
            *args,
            group=group,
            version=version,
            method_desc=method_desc,
            serialization=serialization,
            meta=meta,
            oneway=True,
        )
        await self.send_raw(frame, timeout=timeout)

    async def call_raw(self, frame: Frame, *, timeout: float | None = None) -> Frame:
        """Send a request frame and return the response frame as received (exception responses
        included: nothing is raised for them, nothing is decoded or gunzipped).

        The frame's request id is replaced by one of this connection's (ids are per hop), so
        the response carries the client's id: a proxy restores its caller's id itself.

        Raises:
            ValueError: ``frame`` is a response or a oneway request (use :meth:`send_raw`).
            Motan2Timeout: no reply within ``timeout`` (the client's :attr:`timeout` if None).
            Motan2ConnectionError: the connection failed or is closed.
            LocalProtocolError: the frame cannot be encoded.
        """
        if frame.response or frame.oneway:
            raise ValueError("call_raw sends requests that expect a reply; see send_raw")
        if timeout is None:
            timeout = self.timeout
        request_id = self._new_id()
        data = encode_frame(replace(frame, request_id=request_id))
        call = _Call()
        waiting_for = "free slot (max_in_flight calls in flight)"
        with trio.move_on_after(timeout):
            async with self._slots:
                waiting_for = "room in the send buffer"
                await self._outbox.wait_for_room()
                self._check_open()
                self._calls[request_id] = call
                try:
                    self._put(data)
                    waiting_for = "reply"
                    await call.done.wait()
                finally:
                    self._calls.pop(request_id, None)
        if call.reply is not None:  # a reply that came as the deadline passed still counts
            return call.reply
        if call.error is not None:
            raise call.error
        raise Motan2Timeout(self.node, f"no {waiting_for} within {timeout:g}s")

    async def send_raw(self, frame: Frame, *, timeout: float | None = None) -> int:
        """Send a frame without waiting for any reply (a oneway request, say), under a new
        request id of this connection; returns that id. Any reply to it is dropped.

        Raises:
            Motan2Timeout: the send buffer stayed full for ``timeout``.
            Motan2ConnectionError, LocalProtocolError: as :meth:`call_raw`.
        """
        if timeout is None:
            timeout = self.timeout
        request_id = self._new_id()
        data = encode_frame(replace(frame, request_id=request_id))
        with trio.move_on_after(timeout):
            await self._outbox.wait_for_room()
            self._check_open()
            self._put(data)
            return request_id
        raise Motan2Timeout(self.node, f"no room in the send buffer within {timeout:g}s")

    async def heartbeat(self, *, timeout: float | None = None) -> float:
        """Send a heartbeat (motan-go's: flags 0x12, no meta or body) and wait for its reply;
        returns the round trip in seconds. What motan-go uses to probe an endpoint it marked
        unavailable.

        Raises:
            Motan2Timeout: no reply within ``timeout``.
            Motan2ConnectionError: the connection failed or is closed (a motan-go server told to
                refuse heartbeats closes the connection).
        """
        start = trio.current_time()
        await self.call_raw(heartbeat_request(0), timeout=timeout)
        return trio.current_time() - start

    # -- internals -------------------------------------------------------------------------

    def _new_id(self) -> int:
        """The next request id of this connection: a counter, so no id is reused while a call
        (or a late reply) may still hold it; wraps after 2**64 - 1, skipping 0."""
        self._next_id = self._next_id % _U64_MAX + 1
        return self._next_id

    def _check_open(self) -> None:
        if self._closed is not None:
            raise Motan2ConnectionError(self.node, self._closed)

    def _put(self, data: bytes) -> None:
        try:
            self._outbox.put(data)
        except OSError:
            self._check_open()  # the connection was ended with the reason: raise that
            raise Motan2ConnectionError(self.node, "connection broken") from None

    def _write_failed(self, error: OSError) -> None:
        self._end(error.strerror or str(error))

    def _end(self, reason: str) -> None:
        """Close the connection (once) and fail every waiting call with ``reason``."""
        if self._closed is not None:
            return
        self._closed = reason
        close_quietly(self._sock)
        self._outbox.fail(OSError(errno.EPIPE, reason))
        error = Motan2ConnectionError(self.node, reason)
        calls = list(self._calls.values())
        self._calls.clear()
        for call in calls:
            call.error = error
            call.done.set()

    async def _read_loop(self) -> None:
        """Read replies and hand each to its call until the connection ends."""
        sock = self._sock
        decoder = self._decoder
        unyielded = 0
        while self._closed is None:
            try:
                data = await recv(sock)
            except OSError as exc:
                self._end(exc.strerror or str(exc))
                return
            if not data:
                self._end("connection closed by the peer")
                return
            try:
                decoder.feed(data)
                for frame in decoder:
                    self._deliver(frame)
            except FrameError as exc:
                self._end(f"protocol error: {exc.reply_hint}")
                return
            unyielded += len(data)
            if unyielded >= _YIELD_AFTER_BYTES:
                unyielded = 0
                await trio.lowlevel.checkpoint()

    def _deliver(self, frame: Frame) -> None:
        call = self._calls.pop(frame.request_id, None) if frame.response else None
        if call is None:
            # A reply to a call that timed out or to a oneway request, or a request from the
            # peer (Motan2 servers never send one): motan-go's channel logs and drops these too.
            self.dropped += 1
            log.debug("%s: dropped a frame for request id %d", self.node, frame.request_id)
            return
        call.reply = frame
        call.done.set()


@final
class _Connected:
    """The ``async with`` of :meth:`Motan2Client.connect`.

    Why a class rather than ``@asynccontextmanager`` around a nursery: with strict exception
    groups, an exception raised in the ``async with`` body would cross the nursery and come out
    wrapped in an ``ExceptionGroup``. Here the body's exception never enters the nursery: on
    exit the connection is closed, the nursery is exited as if the body had ended normally
    (which it then does at once), and the body's exception propagates as it was.
    """

    __slots__ = ("_client", "_cls", "_connect_timeout", "_host", "_nursery", "_options", "_port")

    def __init__(
        self,
        cls: type[Motan2Client],
        host: str,
        port: int,
        connect_timeout: float,
        options: ClientOptions,
    ) -> None:
        self._cls = cls
        self._host = host
        self._port = port
        self._connect_timeout = connect_timeout
        self._options = options
        self._client: Motan2Client | None = None
        self._nursery: AbstractAsyncContextManager[trio.Nursery] | None = None

    async def __aenter__(self) -> Motan2Client:
        client = await self._cls.dial(
            self._host, self._port, connect_timeout=self._connect_timeout, **self._options
        )
        manager = trio.open_nursery()
        try:
            nursery = await manager.__aenter__()
        except BaseException:
            client.close()
            raise
        nursery.start_soon(client.run)
        self._client = client
        self._nursery = manager
        return client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client = self._client
        manager = self._nursery
        assert client is not None and manager is not None
        self._client = self._nursery = None
        client.close()
        await manager.__aexit__(None, None, None)


def open_client(
    host: str,
    port: int,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    **options: Unpack[ClientOptions],
) -> _Connected:
    """``async with open_client(host, port, ...) as client``: :meth:`Motan2Client.connect`."""
    return Motan2Client.connect(host, port, connect_timeout=connect_timeout, **options)
