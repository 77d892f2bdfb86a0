"""Balancers: distribution, exclusion, in-flight accounting and ketama stability."""

from __future__ import annotations

import random
import zlib
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resmesh.policies.balance import (
    Balancer,
    ConsistentHashBalancer,
    LeastLoadedBalancer,
    RandomBalancer,
    RoundRobinBalancer,
    WeightedBalancer,
    ketama_hash,
)


@dataclass(frozen=True)
class Node:
    address: str
    weight: float = 10

    def __str__(self) -> str:
        return self.address


A, B, C, D = (Node(f"10.0.0.{i}:6379") for i in range(1, 5))
ABC = (A, B, C)


def _all(seed: int = 1) -> list[Balancer[Node]]:
    return [
        RandomBalancer(random.Random(seed)),
        RoundRobinBalancer(),
        WeightedBalancer(),
        LeastLoadedBalancer(random.Random(seed)),
        ConsistentHashBalancer(rng=random.Random(seed)),
    ]


@pytest.mark.parametrize("balancer", _all(), ids=lambda b: type(b).__name__)
def test_empty_and_single(balancer: Balancer[Node]) -> None:
    assert balancer.pick((), b"k") is None
    assert balancer.pick((A,), b"k") is A
    assert balancer.pick((A,), b"k", exclude={A}) is None
    assert balancer.statistics().picks == 3


@given(
    seed=st.integers(0, 2**32),
    kind=st.integers(0, 4),
    excluded=st.sets(st.sampled_from([A, B, C, D])),
    key=st.one_of(st.none(), st.binary(max_size=8)),
)
def test_never_picks_an_excluded_node(
    seed: int, kind: int, excluded: set[Node], key: bytes | None
) -> None:
    balancer = _all(seed)[kind]
    nodes = (A, B, C, D)
    for _ in range(5):
        picked = balancer.pick(nodes, key, exclude=excluded)
        if excluded == set(nodes):
            assert picked is None
        else:
            assert picked in nodes and picked not in excluded


def test_random_is_roughly_uniform() -> None:
    balancer: RandomBalancer[Node] = RandomBalancer(random.Random(7))
    counts = Counter(balancer.pick(ABC) for _ in range(3000))
    assert all(900 <= counts[node] <= 1100 for node in ABC)


def test_round_robin_cycles_and_skips_excluded() -> None:
    balancer: RoundRobinBalancer[Node] = RoundRobinBalancer()
    assert [balancer.pick(ABC) for _ in range(6)] == [A, B, C, A, B, C]
    assert balancer.pick(ABC, exclude={A}) is B
    assert balancer.statistics().excluding_picks == 1


def test_weighted_is_nginx_smooth() -> None:
    balancer: WeightedBalancer[Node] = WeightedBalancer()
    nodes = (Node("a", 5), Node("b", 1), Node("c", 1))
    sequence = [balancer.pick(nodes) for _ in range(14)]
    assert [str(n) for n in sequence] == list("aabacaa" * 2)


@pytest.mark.parametrize(
    "weights",
    [(80, 20), (3, 2, 1), (0.5, 0.25, 0.25), (4000, 1, 1)],
    ids=["80-20", "3-2-1", "fractional", "huge-period"],
)
def test_weighted_shares_follow_weights(weights: tuple[float, ...]) -> None:
    nodes = tuple(Node(f"n{i}", w) for i, w in enumerate(weights))
    balancer: WeightedBalancer[Node] = WeightedBalancer()
    rounds = 4002
    counts = Counter(balancer.pick(nodes) for _ in range(rounds))
    total = sum(weights)
    for node in nodes:
        assert counts[node] == pytest.approx(rounds * node.weight / total, abs=2)


def test_weighted_zero_weights() -> None:
    balancer: WeightedBalancer[Node] = WeightedBalancer()
    drained = (Node("a", 10), Node("b", 0))
    assert {balancer.pick(drained) for _ in range(10)} == {drained[0]}
    assert balancer.pick(drained, exclude={drained[0]}) is None  # b is drained, not spare
    all_zero = (Node("a", 0), Node("b", 0))
    assert Counter(balancer.pick(all_zero) for _ in range(10)) == {all_zero[0]: 5, all_zero[1]: 5}


def test_weighted_notices_a_new_candidate_set() -> None:
    balancer: WeightedBalancer[Node] = WeightedBalancer()
    assert balancer.pick(ABC) is A
    assert balancer.pick([D]) is D
    assert {balancer.pick([A, B]) for _ in range(4)} == {A, B}


def test_least_loaded_prefers_the_idle_node() -> None:
    balancer: LeastLoadedBalancer[Node] = LeastLoadedBalancer(random.Random(3))
    for _ in range(5):
        balancer.start(A)
    # With two nodes both are always compared: the idle one wins every time.
    assert {balancer.pick((A, B)) for _ in range(50)} == {B}
    for _ in range(5):
        balancer.finish(A)
    balancer.finish(A)  # extra finish is harmless
    assert balancer.in_flight(A) == 0
    assert {balancer.pick((A, B)) for _ in range(50)} == {A, B}


def test_least_loaded_spreads_in_flight_calls_evenly() -> None:
    balancer: LeastLoadedBalancer[Node] = LeastLoadedBalancer(random.Random(5))
    nodes = (A, B, C, D)
    for _ in range(400):
        node = balancer.pick(nodes)
        assert node is not None
        balancer.start(node)
    loads = [balancer.in_flight(n) for n in nodes]
    assert max(loads) - min(loads) <= 2
    assert balancer.statistics().in_flight == tuple((str(n), 100) for n in nodes)


def test_least_loaded_weighs_load_by_weight() -> None:
    heavy, light = Node("heavy", 30), Node("light", 10)
    balancer: LeastLoadedBalancer[Node] = LeastLoadedBalancer(random.Random(5))
    for _ in range(400):
        node = balancer.pick((heavy, light))
        assert node is not None
        balancer.start(node)
    assert balancer.in_flight(heavy) == pytest.approx(300, abs=3)


# -- consistent hashing -------------------------------------------------------------------------

KEYS = [f"user:{i}".encode() for i in range(10_000)]


def test_ketama_hash_is_libketamas() -> None:
    # MD5("") = d41d8cd98f00b204e9800998ecf8427e: first 4 bytes little-endian.
    assert ketama_hash(b"") == 0xD98C1DD4


def test_consistent_hash_sends_a_key_to_the_same_node() -> None:
    balancer: ConsistentHashBalancer[Node] = ConsistentHashBalancer()
    first = [balancer.pick(ABC, key) for key in KEYS[:100]]
    again = [ConsistentHashBalancer[Node]().pick(ABC, key) for key in KEYS[:100]]
    assert first == again
    counts = Counter(balancer.pick(ABC, key) for key in KEYS)
    assert all(2800 <= counts[node] <= 3900 for node in ABC)


def test_adding_a_node_moves_only_about_a_quarter_of_the_keys_to_it() -> None:
    balancer: ConsistentHashBalancer[Node] = ConsistentHashBalancer()
    before = [balancer.pick(ABC, key) for key in KEYS]
    after = [balancer.pick((A, B, C, D), key) for key in KEYS]
    moved = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert all(new is D for _, new in moved)  # keys only ever move to the new node
    assert 1 - len(moved) / len(KEYS) >= 0.75


def test_removing_a_node_moves_only_its_keys() -> None:
    balancer: ConsistentHashBalancer[Node] = ConsistentHashBalancer()
    before = [balancer.pick((A, B, C, D), key) for key in KEYS]
    after = [balancer.pick(ABC, key) for key in KEYS]
    assert all(old == new for old, new in zip(before, after, strict=True) if old is not D)


@given(st.binary(max_size=16), st.sampled_from([A, B, C]))
def test_excluding_a_node_is_like_removing_it(key: bytes, gone: Node) -> None:
    balancer: ConsistentHashBalancer[Node] = ConsistentHashBalancer()
    rest = tuple(n for n in ABC if n is not gone)
    assert balancer.pick(ABC, key, exclude={gone}) == balancer.pick(rest, key)


def test_consistent_hash_weights_and_key_hash() -> None:
    heavy = (Node("a", 30), Node("b", 10))
    weighted: ConsistentHashBalancer[Node] = ConsistentHashBalancer()
    counts = Counter(weighted.pick(heavy, key) for key in KEYS)
    assert counts[heavy[0]] == pytest.approx(7500, abs=600)
    crc: ConsistentHashBalancer[Node] = ConsistentHashBalancer(key_hash=zlib.crc32)
    assert {crc.pick(ABC, key) for key in KEYS[:200]} == set(ABC)
    assert crc.pick(ABC, None) in ABC  # no key: any node
    assert crc.statistics().kind == "consistent_hash"


def test_least_loaded_skips_drained_nodes_unless_all_are() -> None:
    live, drained = Node("10.0.1.1:6379", 1), (Node("10.0.1.2:6379", 0), Node("10.0.1.3:6379", 0))
    balancer: LeastLoadedBalancer[Node] = LeastLoadedBalancer(random.Random(7))
    assert {balancer.pick((live, *drained)) for _ in range(3000)} == {live}
    two_live = (live, Node("10.0.1.4:6379", 1), *drained)
    assert {balancer.pick(two_live) for _ in range(3000)} == set(two_live[:2])
    assert {balancer.pick(drained) for _ in range(300)} == set(drained)  # all drained: equal
