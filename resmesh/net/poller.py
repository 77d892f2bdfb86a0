"""One edge-triggered epoll set for a cluster's sockets (its clients', and the backend
connections they share), waited on by one task.

Why not a task per client parked in ``trio.lowlevel.wait_readable``, the usual Trio way: each
such wait re-arms the socket in Trio's epoll (one ``epoll_ctl``) and each wakeup is a task
switch, about 5 µs of CPU per request together on the project's benchmark machine (an echo
over 50 connections cost 9.0 µs per message that way, 3.8 µs with this poller), a fifth of a
proxied command at ``-P 1``. Here each socket is registered once, edge-triggered
(``EPOLLET``, see ``epoll(7)``), and the poller's one task wakes for every socket that became
readable since its last wakeup, calling that session's reader right there. A session whose
request needs no waiting is served without its own task waking at all; one that must wait is
handed to its task (:meth:`~resmesh.net.runtime.ClientSession.dispatch`). A shared backend
connection reads its replies here too and sends the requests of a round at its end
(:meth:`Poller.defer`), so a request and its reply cost no task switch at all.

Edge-triggered means a socket is reported once per arrival, not while bytes remain: a reader
that stops before the socket is empty (it read a full buffer, or its session is busy) must
come back to it itself (:meth:`Poller.again`, or when the session is done). The peer's close
(``EPOLLRDHUP``, ``EPOLLHUP``) may come in the same report as its last bytes, so a reader
must remember it and read on to the end of the stream.

Linux only, as the gateway is (``select.epoll``).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
from collections.abc import Callable
from typing import Final

import trio

__all__ = ["HANG_UP", "Poller"]

_EVENTS = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
#: The peer closed (its side, or the whole connection), or the socket failed.
HANG_UP: Final = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
#: Rounds the poller runs in a row while sockets keep becoming readable, before it lets the
#: other tasks run: each return to Trio's scheduler costs a wait on the epoll set (two
#: ``epoll_ctl`` and the scheduler's own work), and under load the next round's sockets are
#: usually ready by the time one round ends.
_ROUNDS_PER_WAKEUP: Final = 8


class Poller:
    """The readers of one cluster's sockets; :meth:`run` in the cluster's nursery."""

    __slots__ = ("_again", "_deferred", "_epoll", "_in_round", "_readers", "_wakeup", "running")

    def __init__(self) -> None:
        self._epoll = select.epoll()
        #: Socket descriptor → what to call when it becomes readable.
        self._readers: dict[int, Callable[[int], None]] = {}
        #: Readers to call again at the next round without waiting for an event.
        self._again: list[Callable[[int], None]] = []
        #: Whether :meth:`run` is running: a session is only handed to a running poller.
        self.running = False
        #: Whether readers are being called now, and what to call once they all have been.
        self._in_round = False
        self._deferred: list[Callable[[], None]] = []
        #: Makes the epoll set readable, waking the poller's task, for :meth:`again` from
        #: another task: an ``eventfd`` (see ``eventfd(2)``) while :meth:`run` runs.
        self._wakeup = -1

    def register(self, sock: socket.socket, reader: Callable[[int], None]) -> int:
        """Call ``reader`` (it must not block or raise) with the event mask whenever ``sock``
        becomes readable or its peer closes, until :meth:`unregister`; returns the descriptor
        to unregister."""
        fd = sock.fileno()
        self._epoll.register(fd, _EVENTS)
        self._readers[fd] = reader
        return fd

    def unregister(self, fd: int, reader: Callable[[int], None]) -> None:
        """Stop calling ``reader`` for ``fd``. Closing the socket first is fine (the kernel
        drops a closed descriptor from the set), and once closed, its number may already
        belong to another client's socket, whose reader is left alone."""
        if self._readers.get(fd) == reader:
            del self._readers[fd]
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)

    def again(self, reader: Callable[[int], None]) -> None:
        """Call ``reader`` at the next round: its socket may hold more than one read took, and
        other clients get their turn first. From outside a round (another task read the
        socket) this wakes the poller, which may be waiting for a socket event."""
        if not self._again and not self._in_round and self.running:
            os.eventfd_write(self._wakeup, 1)
        self._again.append(reader)

    def defer(self, callback: Callable[[], None]) -> bool:
        """Call ``callback`` (it must not block or raise) once the readers of the current
        round have all run, and return ``True``; ``False`` outside a round.

        What it is for: a backend connection that many sessions write to in one round sends
        their requests in one ``send`` at its end, from this task, instead of waking a writer
        task to do it (a task switch per round).
        """
        if not self._in_round:
            return False
        self._deferred.append(callback)
        return True

    async def run(self) -> None:
        """Wait for readable sockets and call their readers (one round per ``epoll_wait``,
        several in a row while more are ready), until cancelled."""
        epoll = self._epoll
        readers = self._readers
        self._wakeup = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        epoll.register(self._wakeup, select.EPOLLIN)  # level-triggered: drained when seen
        self.running = True
        try:
            while True:
                if self._again:
                    await trio.lowlevel.checkpoint()
                else:
                    await trio.lowlevel.wait_readable(epoll.fileno())
                for _ in range(_ROUNDS_PER_WAKEUP):
                    ready = epoll.poll(0)
                    if not ready and not self._again:
                        break
                    again, self._again = self._again, []
                    self._in_round = True
                    try:
                        for fd, events in ready:
                            reader = readers.get(fd)
                            if reader is not None:
                                reader(events)
                            elif fd == self._wakeup:
                                with contextlib.suppress(BlockingIOError):
                                    os.eventfd_read(self._wakeup)
                        for reader in again:
                            reader(0)
                    finally:
                        self._in_round = False
                        deferred, self._deferred = self._deferred, []
                        for callback in deferred:
                            callback()
        finally:
            self.running = False
            self._readers.clear()
            trio.lowlevel.notify_closing(epoll.fileno())
            epoll.close()
            os.close(self._wakeup)
            self._wakeup = -1
