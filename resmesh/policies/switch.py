"""Degrade switches: per cluster or per operation, answer calls without (fully) serving them.

Set in the configuration, and driven at run time by the registry (``resmesh ctl degrade
CLUSTER --mode miss --op GET``), as motan-go's registry ``CMDDegrade`` command and its named
switchers drive its filters. Modes:

* ``MISS``: reads answer empty (a cache miss: nil for a Redis GET, an empty result set),
  writes are acknowledged without effect. For a cache whose backend is sick: the app falls
  back to its database as it would on a cold cache.
* ``ERROR``: every call gets a protocol error naming the switch.
* ``READONLY``: reads are served, writes get a protocol error naming the switch (SQL
  maintenance).
* ``FALLBACK``: every call is answered with a configured reply (a mock value).

This module knows nothing of protocols: it tells the frontend *what* to do
(:class:`SwitchAction`) and the frontend renders it ("empty" is a nil bulk string for a Redis
GET, an empty array for LRANGE, an OK packet with no rows for MySQL...). A ``FALLBACK`` value is
opaque bytes that the config layer prepared for the frontend.

A more specific switch wins: an operation's switch applies instead of its cluster's.
Switches live in an immutable snapshot swapped in one assignment, so a reader never sees a
half-applied update, and :meth:`Switchboard.decide` is two dict lookups returning a
precomputed decision (nothing allocated per call).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import final

__all__ = [
    "Switch",
    "SwitchAction",
    "SwitchDecision",
    "SwitchMode",
    "Switchboard",
    "SwitchboardStatistics",
]


class SwitchMode(enum.StrEnum):
    MISS = "miss"
    ERROR = "error"
    READONLY = "readonly"
    FALLBACK = "fallback"


class SwitchAction(enum.Enum):
    """What the frontend does with a switched call."""

    #: Answer as an empty read (nil, empty array, empty result set).
    EMPTY = "empty"
    #: Answer the write as if done (Redis ``+OK``/``:0``, MySQL OK packet, 0 rows affected).
    ACKNOWLEDGE = "acknowledge"
    #: Answer a protocol error carrying :attr:`SwitchDecision.message`.
    ERROR = "error"
    #: Answer :attr:`SwitchDecision.value`.
    FALLBACK = "fallback"


@final
@dataclass(frozen=True, slots=True)
class Switch:
    """One degrade switch, as the registry or ``resmesh ctl`` states it.

    Attributes:
        cluster: the cluster it applies to.
        mode: see :class:`SwitchMode`.
        operation: the operation it applies to (``GET``, ``SELECT``, ``svc.method``), or
            ``None`` for the whole cluster.
        value: the reply for ``FALLBACK`` (opaque, prepared for the cluster's protocol).
        reason: free text for humans (who set it and why), shown in errors and status.
    """

    cluster: str
    mode: SwitchMode
    operation: str | None = None
    value: bytes | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.mode is SwitchMode.FALLBACK and self.value is None:
            raise ValueError(
                f"switch {self.name}: mode fallback needs a value (the reply to answer with)"
            )

    @property
    def name(self) -> str:
        """``cluster`` or ``cluster operation``: how errors and status name the switch."""
        return self.cluster if self.operation is None else f"{self.cluster} {self.operation}"


@final
@dataclass(frozen=True, slots=True)
class SwitchDecision:
    """What to do with one switched call.

    Attributes:
        action: see :class:`SwitchAction`.
        switch: the switch that decided.
        message: for ``ERROR`` the error text naming the switch; otherwise a short description
            for the access log.
        value: for ``FALLBACK`` the configured reply; otherwise ``None``.
    """

    action: SwitchAction
    switch: Switch
    message: str
    value: bytes | None = None

    @property
    def mode(self) -> SwitchMode:
        return self.switch.mode


def _decisions(switch: Switch) -> tuple[SwitchDecision | None, SwitchDecision | None]:
    """The (read, write) decisions of a switch."""
    suffix = f": {switch.reason}" if switch.reason else ""
    mode = switch.mode
    if mode is SwitchMode.MISS:
        text = f"degraded by switch {switch.name} (mode miss){suffix}"
        return (
            SwitchDecision(SwitchAction.EMPTY, switch, text),
            SwitchDecision(SwitchAction.ACKNOWLEDGE, switch, text),
        )
    if mode is SwitchMode.ERROR:
        error = SwitchDecision(
            SwitchAction.ERROR, switch, f"degraded by switch {switch.name} (mode error){suffix}"
        )
        return error, error
    if mode is SwitchMode.READONLY:
        return None, SwitchDecision(
            SwitchAction.ERROR,
            switch,
            f"read-only by switch {switch.name}: writes are refused{suffix}",
        )
    fallback = SwitchDecision(
        SwitchAction.FALLBACK,
        switch,
        f"degraded by switch {switch.name} (mode fallback){suffix}",
        switch.value,
    )
    return fallback, fallback


_Pair = tuple[SwitchDecision | None, SwitchDecision | None]


@final
class _ClusterSwitches:
    """The switches of one cluster, immutable once published."""

    __slots__ = ("cluster", "operations")

    def __init__(self, cluster: _Pair | None, operations: Mapping[str, _Pair]) -> None:
        self.cluster = cluster
        self.operations = operations


@final
@dataclass(frozen=True, slots=True)
class SwitchboardStatistics:
    version: int
    switches: tuple[Switch, ...]
    #: Calls a switch decided.
    hits: int


@final
class Switchboard:
    """The degrade switches in force, swapped atomically."""

    __slots__ = ("_snapshot", "_switches", "active", "hits", "version")

    def __init__(self, switches: Iterable[Switch] = ()) -> None:
        self._switches: dict[tuple[str, str | None], Switch] = {}
        self._snapshot: Mapping[str, _ClusterSwitches] = {}
        #: Whether any switch is on: a hot path may skip :meth:`decide` while it is false
        #: (read it per batch, not once: switches change at run time).
        self.active = False
        self.version = 0
        self.hits = 0
        self.replace(switches)

    def decide(self, cluster: str, operation: str, is_write: bool) -> SwitchDecision | None:
        """What to do with a call, or ``None`` to serve it normally.

        ``is_write`` comes from the frontend's command knowledge (a Redis write command, a SQL
        statement other than a plain read, a Motan method not configured idempotent).
        """
        entry = self._snapshot.get(cluster)
        if entry is None:
            return None
        pair = entry.operations.get(operation)
        if pair is None:
            pair = entry.cluster
            if pair is None:
                return None
        decision = pair[is_write]
        if decision is not None:
            self.hits += 1
        return decision

    def set(self, switch: Switch) -> None:
        """Turn a switch on (replacing the one for the same cluster and operation)."""
        switches = dict(self._switches)
        switches[switch.cluster, switch.operation] = switch
        self._publish(switches)

    def clear(self, cluster: str, operation: str | None = None) -> None:
        """Turn off the switch of ``cluster`` (``operation`` ``None``) or of one operation."""
        switches = dict(self._switches)
        if switches.pop((cluster, operation), None) is not None:
            self._publish(switches)

    def restore(self, cluster: str) -> None:
        """Turn off every switch of ``cluster`` (``resmesh ctl restore CLUSTER``)."""
        switches = {key: s for key, s in self._switches.items() if key[0] != cluster}
        if len(switches) != len(self._switches):
            self._publish(switches)

    def replace(self, switches: Iterable[Switch]) -> None:
        """Make exactly ``switches`` the ones in force (a registry snapshot)."""
        self._publish({(s.cluster, s.operation): s for s in switches})

    def switches(self) -> tuple[Switch, ...]:
        return tuple(self._switches[key] for key in sorted(self._switches, key=_sort_key))

    def _publish(self, switches: dict[tuple[str, str | None], Switch]) -> None:
        clusters: dict[str, tuple[_Pair | None, dict[str, _Pair]]] = {}
        for (cluster, operation), switch in switches.items():
            _, operations = clusters.setdefault(cluster, (None, {}))
            if operation is None:
                clusters[cluster] = (_decisions(switch), operations)
            else:
                operations[operation] = _decisions(switch)
        # Plain dicts (faster to read than MappingProxyType) that nothing mutates once built.
        snapshot = {
            cluster: _ClusterSwitches(whole, operations)
            for cluster, (whole, operations) in clusters.items()
        }
        self._switches = switches
        self._snapshot = snapshot  # the one atomic swap
        self.active = bool(snapshot)
        self.version += 1

    def statistics(self) -> SwitchboardStatistics:
        return SwitchboardStatistics(version=self.version, switches=self.switches(), hits=self.hits)


def _sort_key(key: tuple[str, str | None]) -> tuple[str, str]:
    return key[0], key[1] or ""
