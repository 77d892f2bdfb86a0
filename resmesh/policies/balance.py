"""Load balancers: pick one node of a group for a call.

Every balancer has the same interface (:class:`Balancer`)::

    pick(candidates, key=None, exclude=None) -> node | None
    start(node) / finish(node)        # in-flight accounting (used by least-loaded only)
    statistics()

``candidates`` are the nodes to choose from (typically what the outlier detector's
``available()`` returned); ``key`` is the call's routing key (used by consistent hashing only);
``exclude`` holds nodes already tried, so failover and hedging reach *a different node*
(Envoy's ``previous_hosts`` retry host predicate; motan-go's failover, ``ha/failoverHA.go``,
selects again from its balancer with no exclusion, so it may pick the node that just failed).
``None`` means nothing is left to pick.

A node is any hashable object with a ``weight`` (:class:`WeightedNode`). Balancers cache what
they derive from a candidate sequence (a weighted schedule, a hash ring) and recognise the same
sequence by identity first, then by contents (including weights), so pass immutable sequences,
such as a cluster snapshot's tuples, and do not mutate a sequence after passing it.

All picks are synchronous, O(1) for the common case and allocation-free unless ``exclude`` is
non-empty (the failover path) or the candidate set changed.
"""

from __future__ import annotations

import enum
import hashlib
import math
import random
import struct
from bisect import bisect_left
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any, Final, Generic, Protocol, TypeVar, final

__all__ = [
    "BalanceName",
    "Balancer",
    "BalancerStatistics",
    "ConsistentHashBalancer",
    "LeastLoadedBalancer",
    "RandomBalancer",
    "RoundRobinBalancer",
    "WeightedBalancer",
    "WeightedNode",
    "balancer_for",
    "ketama_hash",
]


class BalanceName(enum.StrEnum):
    """How a node is picked inside a group: the configuration's ``balance``.

    ``least_loaded`` is power-of-two-choices on in-flight calls: it steers around a slow node
    without any tuning, which is why it is the default for replicated clusters. ``hash`` is
    consistent hashing (ketama) on the call's key; a sharded cluster always uses it, and a
    replicated one may (each key then sticks to one node, which keeps node-local caches warm).
    """

    RANDOM = "random"
    ROUND_ROBIN = "round_robin"
    WEIGHTED = "weighted"
    LEAST_LOADED = "least_loaded"
    HASH = "hash"


class WeightedNode(Protocol):
    """What a balancer needs of a node: hashable (the default for objects) and a weight.

    Weights are relative (motan-go's endpoint weight defaults to 10, range 1-500). A weight of 0
    or less drains a node from the weighted balancers unless every candidate has one, in which
    case they are treated as equal (a misconfigured weight must not black-hole a group).
    """

    @property
    def weight(self) -> float: ...


N = TypeVar("N", bound=WeightedNode)


@final
@dataclass(frozen=True, slots=True)
class BalancerStatistics:
    kind: str
    picks: int
    #: Picks that had to avoid already-tried nodes (failover / hedge).
    excluding_picks: int
    #: In-flight calls per node (``str(node)``), least-loaded balancer only.
    in_flight: tuple[tuple[str, int], ...] = ()


class Balancer(Protocol[N]):
    """The interface every balancer here implements."""

    def pick(
        self,
        candidates: Sequence[N],
        key: bytes | None = None,
        exclude: Collection[N] | None = None,
    ) -> N | None: ...

    def start(self, node: N) -> None: ...

    def finish(self, node: N) -> None: ...

    def forget(self, node: N) -> None:
        """``node`` left this balancer's candidates (removed, or moved to another group):
        drop what is kept for it."""
        ...

    def statistics(self) -> BalancerStatistics: ...


def _without(candidates: Sequence[N], exclude: Collection[N]) -> Sequence[N]:
    return [node for node in candidates if node not in exclude]


def _weights(nodes: Sequence[N]) -> list[float]:
    weights = [max(0.0, float(node.weight)) for node in nodes]
    if not any(weights):
        return [1.0] * len(nodes)
    return weights


@final
class RandomBalancer(Generic[N]):
    """Uniformly random, ignoring weights (motan-go ``random``). ``rng`` is injectable for tests."""

    __slots__ = ("_random", "excluding_picks", "picks")

    def __init__(self, rng: random.Random | None = None) -> None:
        self._random = (rng or random.Random()).random
        self.picks = 0
        self.excluding_picks = 0

    def pick(
        self,
        candidates: Sequence[N],
        key: bytes | None = None,
        exclude: Collection[N] | None = None,
    ) -> N | None:
        self.picks += 1
        if exclude:
            self.excluding_picks += 1
            candidates = _without(candidates, exclude)
        n = len(candidates)
        if n <= 1:
            return candidates[0] if n else None
        return candidates[int(self._random() * n)]

    def start(self, node: N) -> None:
        pass

    def finish(self, node: N) -> None:
        pass

    def forget(self, node: N) -> None:
        pass

    def statistics(self) -> BalancerStatistics:
        return BalancerStatistics("random", self.picks, self.excluding_picks)


@final
class RoundRobinBalancer(Generic[N]):
    """Each node in turn, ignoring weights (motan-go ``roundrobin``)."""

    __slots__ = ("_next", "excluding_picks", "picks")

    def __init__(self) -> None:
        self._next = 0
        self.picks = 0
        self.excluding_picks = 0

    def pick(
        self,
        candidates: Sequence[N],
        key: bytes | None = None,
        exclude: Collection[N] | None = None,
    ) -> N | None:
        self.picks += 1
        n = len(candidates)
        if n == 0:
            return None
        i = self._next
        self._next = i + 1 if i < 1 << 30 else 0
        if not exclude:
            return candidates[i % n]
        self.excluding_picks += 1
        for step in range(n):
            node = candidates[(i + step) % n]
            if node not in exclude:
                return node
        return None

    def start(self, node: N) -> None:
        pass

    def finish(self, node: N) -> None:
        pass

    def forget(self, node: N) -> None:
        pass

    def statistics(self) -> BalancerStatistics:
        return BalancerStatistics("round_robin", self.picks, self.excluding_picks)


#: Longest precomputed weighted schedule; above it the O(n) algorithm runs per pick.
_MAX_SCHEDULE: Final = 4096


def _smooth_schedule(nodes: Sequence[N], weights: Sequence[float]) -> list[N]:
    """One period of nginx's smooth weighted round robin over integer weights.

    Each step adds every node's weight to its current weight, picks the largest, and takes the
    total off the winner: nodes are interleaved (weights 5,1,1 give a a b a c a a, not
    a a a a a b c) and each period holds exactly ``weight / gcd`` picks of each node.
    """
    ints = [int(w) for w in weights]
    divisor = reduce(math.gcd, ints)
    ints = [w // divisor for w in ints]
    total = sum(ints)
    current = [0] * len(ints)
    schedule: list[N] = []
    for _ in range(total):
        best = 0
        for i, w in enumerate(ints):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= total
        schedule.append(nodes[best])
    return schedule


@final
class WeightedBalancer(Generic[N]):
    """Smooth weighted round robin (nginx ``ngx_http_upstream_get_peer``), deterministic.

    For integer weights whose period (sum / gcd) is at most 4096 the schedule is computed once
    per candidate set, so a pick is an index; otherwise (fractional weights, huge periods) the
    O(n) smooth algorithm runs per pick with the same result.
    """

    __slots__ = (
        "_current",
        "_key",
        "_members",
        "_pos",
        "_schedule",
        "_seq",
        "_weights",
        "excluding_picks",
        "picks",
    )

    def __init__(self) -> None:
        self._seq: Sequence[N] | None = None
        self._key: tuple[tuple[N, ...], tuple[float, ...]] = ((), ())
        self._schedule: list[N] = []
        self._weights: list[float] = []
        #: The candidates with a positive (effective) weight: the only ones ever picked.
        self._members: tuple[N, ...] = ()
        self._current: list[float] = []
        self._pos = 0
        self.picks = 0
        self.excluding_picks = 0

    def _prepare(self, candidates: Sequence[N]) -> None:
        nodes = tuple(candidates)
        weights = tuple(float(node.weight) for node in nodes)
        if (nodes, weights) != self._key:
            self._key = (nodes, weights)
            self._weights = _weights(nodes)
            self._members = tuple(n for n, w in zip(nodes, self._weights, strict=True) if w > 0)
            self._current = [0.0] * len(nodes)
            self._pos = 0
            self._schedule = []
            if all(w.is_integer() for w in self._weights):
                ints = [int(w) for w in self._weights]
                if sum(ints) // reduce(math.gcd, ints) <= _MAX_SCHEDULE:
                    self._schedule = _smooth_schedule(nodes, self._weights)
        self._seq = candidates

    def pick(
        self,
        candidates: Sequence[N],
        key: bytes | None = None,
        exclude: Collection[N] | None = None,
    ) -> N | None:
        self.picks += 1
        if candidates is not self._seq:
            if not candidates:
                return None
            self._prepare(candidates)
        if exclude:
            self.excluding_picks += 1
            if all(node in exclude for node in self._members):
                return None
        schedule = self._schedule
        if schedule:
            while True:
                pos = self._pos
                self._pos = pos + 1 if pos + 1 < len(schedule) else 0
                node = schedule[pos]
                if not exclude or node not in exclude:
                    return node
        while True:
            node = self._smooth_step()
            if not exclude or node not in exclude:
                return node

    def _smooth_step(self) -> N:
        nodes = self._key[0]
        current = self._current
        total = 0.0
        best = 0
        for i, w in enumerate(self._weights):
            current[i] += w
            total += w
            if current[i] > current[best]:
                best = i
        current[best] -= total
        return nodes[best]

    def start(self, node: N) -> None:
        pass

    def finish(self, node: N) -> None:
        pass

    def forget(self, node: N) -> None:
        pass

    def statistics(self) -> BalancerStatistics:
        return BalancerStatistics("weighted", self.picks, self.excluding_picks)


@final
class LeastLoadedBalancer(Generic[N]):
    """Power of two choices: of two distinct random nodes, the one with less load per weight.

    Load is the in-flight count the caller keeps with :meth:`start` / :meth:`finish` around
    each call. Comparing ``weight / (in_flight + 1)`` is Envoy's weighted least-request rule
    (active-request bias 1.0); two random choices avoid the herd that "always the least loaded"
    causes when every gateway sees the same counts (Mitzenmacher).
    """

    __slots__ = ("_in_flight", "_random", "excluding_picks", "picks")

    def __init__(self, rng: random.Random | None = None) -> None:
        self._random = (rng or random.Random()).random
        self._in_flight: dict[N, int] = {}
        self.picks = 0
        self.excluding_picks = 0

    def pick(
        self,
        candidates: Sequence[N],
        key: bytes | None = None,
        exclude: Collection[N] | None = None,
    ) -> N | None:
        self.picks += 1
        if exclude:
            self.excluding_picks += 1
            candidates = _without(candidates, exclude)
        n = len(candidates)
        if n <= 1:
            return candidates[0] if n else None
        return self._two_choices(candidates, n, weighted=True)

    def _two_choices(self, pool: Sequence[N], n: int, *, weighted: bool) -> N:
        rand = self._random
        i = int(rand() * n)
        j = int(rand() * (n - 1))
        if j >= i:
            j += 1
        a = pool[i]
        b = pool[j]
        weight_a, weight_b = (a.weight, b.weight) if weighted else (1, 1)
        if weight_a <= 0 or weight_b <= 0:
            # Drained nodes (the caller usually filters them out): skip them, unless all
            # are drained, and then all count as equal (:class:`WeightedNode`).
            positive = [node for node in pool if node.weight > 0]
            if len(positive) == 1:
                return positive[0]
            chosen = positive or pool
            return self._two_choices(chosen, len(chosen), weighted=bool(positive))
        in_flight = self._in_flight
        # a wins if weight_a / (load_a + 1) >= weight_b / (load_b + 1), cross-multiplied.
        if weight_a * (in_flight.get(b, 0) + 1) >= weight_b * (in_flight.get(a, 0) + 1):
            return a
        return b

    def start(self, node: N) -> None:
        """A call to ``node`` started."""
        self._in_flight[node] = self._in_flight.get(node, 0) + 1

    def finish(self, node: N) -> None:
        """A call to ``node`` that :meth:`start` counted ended (however it ended)."""
        count = self._in_flight.get(node, 0) - 1
        if count > 0:
            self._in_flight[node] = count
        else:
            self._in_flight.pop(node, None)

    def forget(self, node: N) -> None:
        self._in_flight.pop(node, None)

    def in_flight(self, node: N) -> int:
        return self._in_flight.get(node, 0)

    def statistics(self) -> BalancerStatistics:
        return BalancerStatistics(
            "least_loaded",
            self.picks,
            self.excluding_picks,
            tuple(sorted((str(node), count) for node, count in self._in_flight.items())),
        )


_FIRST_U32_LE: Final = struct.Struct("<I").unpack_from
_md5 = hashlib.md5


def ketama_hash(data: bytes) -> int:
    """libketama's key hash: the first 4 bytes of the MD5 digest, little-endian (0..2**32-1)."""
    value: int = _FIRST_U32_LE(_md5(data).digest())[0]
    return value


#: Points per node at equal weights (libketama, twemproxy ``KETAMA_POINTS_PER_SERVER``).
KETAMA_POINTS: Final = 160
#: How many hash rings (candidate sets) a consistent-hash balancer remembers: the full group
#: and a few "minus one ejected node" variants.
_MAX_RINGS: Final = 8


@final
class _Ring(Generic[N]):
    __slots__ = ("nodes", "owners", "points")

    def __init__(self, nodes: Sequence[N], name: Callable[[N], str]) -> None:
        weights = _weights(nodes)
        total = sum(weights)
        n = len(nodes)
        ring: list[tuple[int, int]] = []
        for index, (node, weight) in enumerate(zip(nodes, weights, strict=True)):
            # twemproxy's ketama: floor(share x 160/4 x n) digests of "name-i", 4 points each.
            digests = int(weight / total * (KETAMA_POINTS // 4) * n + 1e-10)
            label = name(node)
            for i in range(digests):
                digest = hashlib.md5(f"{label}-{i}".encode()).digest()
                for k in range(4):
                    ring.append((int.from_bytes(digest[4 * k : 4 * k + 4], "little"), index))
        ring.sort()
        self.points = [point for point, _ in ring]
        self.owners = [nodes[index] for _, index in ring]
        #: The nodes that own points (a node whose weight share is tiny may own none).
        owning = {index for _, index in ring}
        self.nodes = tuple(node for index, node in enumerate(nodes) if index in owning)


@final
class ConsistentHashBalancer(Generic[N]):
    """Ketama consistent hashing on the call's key: the same key goes to the same node, and
    adding or removing a node moves only the keys of that node (≈ 1/n of them).

    The ring follows libketama/twemproxy: for each node, MD5 of ``"<name>-<i>"`` gives 4 points
    per digest, 160 points per node at equal weights, scaled by weight share. A key hashes with
    ``key_hash`` (default :func:`ketama_hash`; ``zlib.crc32`` is faster, if no other client
    must agree on placement) to the first point at or after it, wrapping round.

    ``name`` gives the node's stable name on the ring (default ``str``; it must not include
    anything that changes, such as the weight, or every key moves when it changes). A call
    without a key goes to a random node. With ``exclude``, the walk continues clockwise to the
    next node not excluded, which is where the key would go if the excluded nodes were gone.
    """

    __slots__ = (
        "_key_hash",
        "_name",
        "_random",
        "_ring",
        "_rings",
        "_seq",
        "excluding_picks",
        "picks",
    )

    def __init__(
        self,
        name: Callable[[N], str] = str,
        key_hash: Callable[[bytes], int] = ketama_hash,
        rng: random.Random | None = None,
    ) -> None:
        self._name = name
        self._key_hash = key_hash
        self._random = (rng or random.Random()).random
        self._rings: dict[tuple[tuple[N, ...], tuple[float, ...]], _Ring[N]] = {}
        self._seq: Sequence[N] | None = None
        self._ring: _Ring[N] | None = None
        self.picks = 0
        self.excluding_picks = 0

    def _ring_for(self, candidates: Sequence[N]) -> _Ring[N]:
        nodes = tuple(candidates)
        ident = (nodes, tuple(float(node.weight) for node in nodes))
        ring = self._rings.get(ident)
        if ring is None:
            if len(self._rings) >= _MAX_RINGS:
                self._rings.clear()
            ring = self._rings[ident] = _Ring(nodes, self._name)
        self._seq = candidates
        self._ring = ring
        return ring

    def pick(
        self,
        candidates: Sequence[N],
        key: bytes | None = None,
        exclude: Collection[N] | None = None,
    ) -> N | None:
        self.picks += 1
        if not candidates:
            return None
        ring = self._ring
        if candidates is not self._seq or ring is None:
            ring = self._ring_for(candidates)
        if exclude:
            self.excluding_picks += 1
            if all(node in exclude for node in ring.nodes):
                return None
        if key is None:
            nodes = _without(ring.nodes, exclude) if exclude else ring.nodes
            return nodes[int(self._random() * len(nodes))]
        points = ring.points
        i = bisect_left(points, self._key_hash(key))
        if i == len(points):
            i = 0
        owner = ring.owners[i]
        if exclude:
            owners = ring.owners
            while owner in exclude:
                i = i + 1 if i + 1 < len(owners) else 0
                owner = owners[i]
        return owner

    def start(self, node: N) -> None:
        pass

    def finish(self, node: N) -> None:
        pass

    def forget(self, node: N) -> None:
        pass

    def statistics(self) -> BalancerStatistics:
        return BalancerStatistics("consistent_hash", self.picks, self.excluding_picks)


def balancer_for(name: BalanceName, rng: random.Random | None = None) -> Any:
    """The balancer a cluster's ``balance`` names (``hash`` needs a key: see the caller)."""
    if name is BalanceName.RANDOM:
        return RandomBalancer(rng)
    if name is BalanceName.ROUND_ROBIN:
        return RoundRobinBalancer()
    if name is BalanceName.WEIGHTED:
        return WeightedBalancer()
    return LeastLoadedBalancer(rng)
