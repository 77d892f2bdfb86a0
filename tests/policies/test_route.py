"""Group routing: weights, local-first with proportional spill, panic."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from resmesh.policies.route import GroupRouter


def _shares(router: GroupRouter, calls: int = 2000) -> dict[str | None, float]:
    counts = Counter(router.choose() for _ in range(calls))
    return {name: count / calls for name, count in counts.items()}


def test_weights_split_the_calls() -> None:
    router = GroupRouter({"dc-a": 80, "dc-b": 20}, rng=random.Random(1))
    shares = _shares(router)
    assert shares["dc-a"] == pytest.approx(0.8, abs=0.05)
    assert shares["dc-b"] == pytest.approx(0.2, abs=0.05)
    stats = router.statistics()
    assert stats.shares == (("dc-a", 0.8), ("dc-b", 0.2))
    assert sum(count for _, count in stats.chosen) == 2000


def test_a_zero_weight_gets_nothing_and_all_zero_is_none() -> None:
    router = GroupRouter({"dc-a": 100, "dc-b": 0}, rng=random.Random(1))
    assert set(_shares(router, 200)) == {"dc-a"}
    router.set_weights({"dc-a": 0, "dc-b": 0})
    assert router.choose() is None


def test_local_first_takes_everything_while_healthy() -> None:
    router = GroupRouter({"dc-a": 50, "dc-b": 50}, local="dc-b", rng=random.Random(1))
    assert _shares(router, 200) == {"dc-b": 1.0}
    router.set_health({"dc-b": 0.75})  # 0.75 x 1.4 >= 1: still everything
    assert _shares(router, 200) == {"dc-b": 1.0}


def test_local_spills_in_proportion_to_lost_health() -> None:
    router = GroupRouter({"dc-a": 30, "dc-b": 10, "dc-c": 10}, local="dc-c", rng=random.Random(2))
    router.set_health({"dc-c": 0.5})  # keeps 70 %, the rest by weight: 22.5 % / 7.5 %
    shares = _shares(router, 4000)
    assert shares["dc-c"] == pytest.approx(0.70, abs=0.03)
    assert shares["dc-a"] == pytest.approx(0.225, abs=0.03)
    assert shares["dc-b"] == pytest.approx(0.075, abs=0.02)
    router.set_health({"dc-c": False})  # down: all spills
    shares = _shares(router)
    assert "dc-c" not in shares
    assert shares["dc-a"] == pytest.approx(0.75, abs=0.05)


def test_local_with_nowhere_to_spill_keeps_its_traffic() -> None:
    router = GroupRouter({"dc-a": 10, "dc-b": 10}, local="dc-a", rng=random.Random(1))
    router.set_health({"dc-a": 0.3, "dc-b": 0.0})
    assert _shares(router, 100) == {"dc-a": 1.0}


def test_draining_the_local_group_beats_locality() -> None:
    router = GroupRouter({"dc-a": 0, "dc-b": 100}, local="dc-a", rng=random.Random(1))
    assert _shares(router, 100) == {"dc-b": 1.0}


def test_health_scales_weights_without_a_local_group() -> None:
    router = GroupRouter({"dc-a": 50, "dc-b": 50}, rng=random.Random(3))
    # dc-a at 50 % health: weight 50 x 0.7 = 35 against 50.
    counts = Counter(router.choose({"dc-a": 0.5}) for _ in range(4000))
    assert counts["dc-a"] / 4000 == pytest.approx(35 / 85, abs=0.03)


def test_panic_when_no_weighted_group_has_health() -> None:
    router = GroupRouter({"dc-a": 75, "dc-b": 25, "dc-c": 0}, rng=random.Random(4))
    router.set_health({"dc-a": 0, "dc-b": 0, "dc-c": 1})
    shares = _shares(router)
    assert shares["dc-a"] == pytest.approx(0.75, abs=0.05)
    assert "dc-c" not in shares  # drained on purpose: panic does not undo a shift
    assert router.statistics().panic


def test_choose_picks_up_a_changed_health_map() -> None:
    router = GroupRouter({"dc-a": 1, "dc-b": 1}, local="dc-a", rng=random.Random(5))
    health = {"dc-a": 1.0}
    assert router.choose(health) == "dc-a"
    health["dc-a"] = 0.0  # mutated in place: compared by value
    assert router.choose(health) == "dc-b"


def test_validation() -> None:
    with pytest.raises(ValueError, match="negative weight"):
        GroupRouter({"dc-a": -1})
    with pytest.raises(ValueError, match="overprovisioning"):
        GroupRouter({"dc-a": 1}, overprovisioning=0.5)


def _plan(router: GroupRouter) -> dict[str, float]:
    return dict(router.statistics().shares)


@pytest.mark.parametrize(
    ("local_health", "remote_health", "local_share"),
    [
        (1.0, 0.0, 1.0),
        (0.5, 1.0, 0.70),  # the remote tier has room for all that spills
        (0.5, 0.1, 0.70 / 0.84),  # Envoy: 0.7 and 0.14, normalised over 0.84
        (0.3, 0.01, 0.42 / 0.434),  # 1 % of remote nodes up: only 3 % spills there
        (0.0, 0.1, 0.0),
    ],
)
def test_local_first_spill_is_envoy_s_priority_load(
    local_health: float, remote_health: float, local_share: float
) -> None:
    router = GroupRouter({"dc-a": 100, "dc-b": 100}, local="dc-a", rng=random.Random(1))
    router.set_health({"dc-a": local_health, "dc-b": remote_health})
    shares = _plan(router)
    assert shares.get("dc-a", 0.0) == pytest.approx(local_share)
    assert shares.get("dc-b", 0.0) == pytest.approx(1 - local_share)


def test_without_a_local_group_health_scales_weights_before_normalising() -> None:
    router = GroupRouter({"dc-a": 50, "dc-b": 50}, rng=random.Random(1))
    router.set_health({"dc-a": 0.5})
    assert _plan(router)["dc-a"] == pytest.approx(0.35 / 0.85)  # 50 x 0.7 against 50
