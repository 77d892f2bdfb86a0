"""Outlier ejection: consecutive failures, escalating times, the ejection cap and panic mode."""

from __future__ import annotations

import pytest

from resmesh.call import Outcome
from resmesh.policies.outlier import OutlierConfig, OutlierDetector

NODES = ("a", "b", "c")


def _fail(detector: OutlierDetector, node: str, times: int, now: float) -> None:
    for _ in range(times):
        detector.record(node, Outcome.UPSTREAM_ERROR, now)


def test_defaults_come_from_envoy() -> None:
    config = OutlierConfig()
    assert (config.consecutive_failures, config.base_ejection, config.max_ejection) == (
        5,
        30.0,
        300.0,
    )
    assert (config.max_ejection_percent, config.panic_threshold) == (10.0, 50.0)


def test_ejects_after_five_consecutive_node_failures() -> None:
    detector = OutlierDetector(NODES)
    _fail(detector, "a", 4, now=0.0)
    detector.record("a", Outcome.APP_ERROR, 0.0)  # the caller's fault resets the streak
    _fail(detector, "a", 4, now=0.0)
    detector.record("a", Outcome.REJECTED, 0.0)  # ignored
    assert detector.available(NODES, 0.0) is NODES  # nothing ejected: the same object
    detector.record("a", Outcome.LOCAL_ERROR, 1.0)
    assert detector.is_ejected("a", 1.0)
    assert list(detector.available(NODES, 1.0)) == ["b", "c"]
    assert detector.available(NODES, 2.0) is detector.available(NODES, 3.0)  # cached
    # Back after 30 s.
    assert list(detector.available(NODES, 30.99)) == ["b", "c"]
    assert detector.available(NODES, 31.0) is NODES
    stats = detector.statistics(31.0)
    assert (stats.ejected, stats.total_ejections, stats.max_ejected) == (0, 1, 1)


def test_ejection_time_escalates_and_is_capped_and_decays() -> None:
    config = OutlierConfig(max_ejection_percent=100.0)
    detector = OutlierDetector(NODES, config)
    now = 0.0
    durations = []
    for _ in range(12):
        _fail(detector, "a", 5, now)
        until = detector.statistics(now).per_node[0].ejected_until
        assert until is not None
        durations.append(until - now)
        now = until  # fail again the moment it returns
    assert durations[:4] == [30.0, 60.0, 90.0, 120.0]
    assert max(durations) == 300.0 == durations[-1]
    # Healthy for 95 s after returning (9 decay intervals of 10 s): multiplier 10 -> 1 + 1.
    now += 95.0
    _fail(detector, "a", 5, now)
    until = detector.statistics(now).per_node[0].ejected_until
    assert until == now + 30.0 * 2


def test_failures_of_an_ejected_node_do_not_extend_its_ejection() -> None:
    detector = OutlierDetector(NODES)
    _fail(detector, "a", 5, now=0.0)
    _fail(detector, "a", 50, now=10.0)
    assert detector.statistics(10.0).per_node[0].ejected_until == 30.0
    assert detector.statistics(10.0).per_node[0].consecutive_failures == 0


def test_at_most_ten_percent_but_at_least_one() -> None:
    detector = OutlierDetector(NODES)
    _fail(detector, "a", 5, now=0.0)
    _fail(detector, "b", 5, now=0.0)  # cap reached: b stays in
    assert list(detector.available(NODES, 0.0)) == ["b", "c"]
    # b is ejected at its next failure once a's slot frees.
    detector.record("b", Outcome.UPSTREAM_ERROR, 30.0)
    assert list(detector.available(NODES, 30.0)) == ["a", "c"]

    twenty = tuple(f"n{i}" for i in range(20))
    big = OutlierDetector(twenty)
    for node in twenty[:5]:
        _fail(big, node, 5, now=0.0)
    assert big.statistics(0.0).ejected == 2  # 10 % of 20


def test_a_lone_node_is_ejected_but_still_offered_in_panic() -> None:
    """A group of one can lose its node (its data center's calls then spill elsewhere: the
    router reads group health), yet the group still offers it: panic beats no node at all."""
    detector = OutlierDetector(["a"])
    _fail(detector, "a", 5, now=0.0)
    assert detector.is_ejected("a", 0.0)
    assert detector.statistics(0.0).ejected == 1
    assert list(detector.available(["a"], 0.0)) == ["a"]


def test_two_nodes_one_ejected_is_not_panic() -> None:
    detector = OutlierDetector(["a", "b"])
    _fail(detector, "a", 5, now=0.0)
    assert list(detector.available(["a", "b"], 0.0)) == ["b"]
    assert not detector.statistics(0.0).panic


def test_panic_mode_below_half_healthy_uses_every_node() -> None:
    nodes = ("a", "b", "c", "d")
    detector = OutlierDetector(nodes, OutlierConfig(max_ejection_percent=100.0))
    _fail(detector, "a", 5, now=0.0)
    _fail(detector, "b", 5, now=0.0)
    assert list(detector.available(nodes, 0.0)) == ["c", "d"]  # exactly 50 %: no panic
    _fail(detector, "c", 5, now=0.0)
    assert detector.available(nodes, 0.0) is nodes  # 25 % healthy: panic
    assert detector.statistics(0.0).panic
    # Panic is judged on the nodes offered: of ("a", "d"), d is 50 %.
    assert list(detector.available(("a", "d"), 0.0)) == ["d"]

    no_panic = OutlierDetector(nodes, OutlierConfig(max_ejection_percent=100.0, panic_threshold=0))
    for node in nodes:
        _fail(no_panic, node, 5, now=0.0)
    assert list(no_panic.available(nodes, 0.0)) == []


def test_membership_changes_and_restore() -> None:
    detector = OutlierDetector(NODES)
    _fail(detector, "a", 5, now=0.0)
    detector.record("zzz", Outcome.UPSTREAM_ERROR, 0.0)  # unknown: ignored
    detector.update_nodes(["a", "b", "c", "d"])
    assert detector.is_ejected("a", 1.0)
    detector.update_nodes(["b", "c", "d"])
    assert not detector.is_ejected("a", 1.0)
    assert detector.statistics(1.0).ejected == 0
    _fail(detector, "b", 5, now=2.0)
    detector.restore("b", now=3.0)
    assert not detector.is_ejected("b", 3.0)
    assert detector.available(("b", "c", "d"), 3.0) == ("b", "c", "d")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("consecutive_failures", 0),
        ("base_ejection", 0.0),
        ("max_ejection", 1.0),
        ("max_ejection_percent", 101.0),
        ("panic_threshold", -1.0),
        ("decay_interval", 0.0),
    ],
)
def test_config_validation(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field.split("_")[0]):
        OutlierConfig(**{field: value})  # type: ignore[arg-type]


def test_max_ejection_percent_zero_ejects_nothing() -> None:
    """0 % means never eject (Envoy, gRPC A50); the at-least-one floor is for small groups."""
    detector = OutlierDetector(["a", "b", "c"], OutlierConfig(max_ejection_percent=0))
    for i in range(5):
        detector.record("a", Outcome.UPSTREAM_ERROR, float(i))
    assert not detector.is_ejected("a", 5.0)
