"""The registry interface every backend implements: read, watch, compare-and-swap update.

Gateways read the whole registry once, then watch it; ``resmesh ctl`` changes one cluster's
entry at a time with :meth:`Registry.update`, a read-modify-write that the backend retries
when another writer changed the entry in between (etcd's transactions on ``mod_revision``; a
lock on the file), so two operators never lose each other's change.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import NoReturn

from .state import ClusterEntry, Snapshot

__all__ = ["Edit", "Registry", "RegistryUnavailable"]

#: A change to one cluster's entry: takes the current entry (``None`` when the registry has
#: none) and returns the new one (``None`` removes the entry). It may raise to refuse.
Edit = Callable[[ClusterEntry | None], ClusterEntry | None]


class RegistryUnavailable(Exception):
    """The registry cannot be reached or read now (a network error, a timeout, a file that
    cannot be read); the message says which and where."""


class Registry(abc.ABC):
    """One registry backend, as a gateway or ``resmesh ctl`` uses it."""

    #: The backend's kind, as ``registry.kind`` names it.
    kind: str

    @abc.abstractmethod
    def describe(self) -> str:
        """Where it is, for logs and status (``file /etc/resmesh/registry.yaml``)."""

    @abc.abstractmethod
    async def read(self) -> Snapshot:
        """Every cluster's entry, and the version they are at.

        Raises:
            RegistryUnavailable: it cannot be reached in its timeout.
        """

    @abc.abstractmethod
    async def follow(self, after: Snapshot, changed: Callable[[Snapshot], None]) -> NoReturn:
        """Call ``changed`` with every snapshot newer than ``after``, as soon as it is there,
        in version order, until cancelled. A change made while nobody was following is never
        missed (etcd's watch from a revision; the file's version).

        A callback rather than an iterator: a backend follows with tasks of its own (a
        watch stream and a liveness probe), and a Trio async generator may not yield from
        inside a nursery.

        Raises:
            RegistryUnavailable: the connection was lost, or the registry can no longer
                serve changes since ``after`` (etcd compacted them): read again, then follow.
        """

    @abc.abstractmethod
    async def update(self, cluster: str, edit: Edit) -> tuple[int, ClusterEntry | None]:
        """Apply ``edit`` to ``cluster``'s current entry, atomically: if another writer
        changes the entry between the read and the write, read again and re-apply.

        Returns the version the change is at and the entry as written.

        Raises:
            RegistryUnavailable: it cannot be reached in its timeout.
            Exception: whatever ``edit`` raises (nothing is written then).
        """

    async def aclose(self) -> None:  # noqa: B027 (a backend with nothing to close needs none)
        """Release connections."""
