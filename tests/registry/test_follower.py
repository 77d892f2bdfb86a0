"""resmesh.registry.follower: a gateway keeps its clusters on the registry's state."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import trio

from resmesh.cluster.topology import ClusterState
from resmesh.config import ClusterConfig, NodeRole, parse_config
from resmesh.policies.limit import LimitConfig, LimiterConfig
from resmesh.policies.switch import Switch, SwitchMode
from resmesh.registry.edits import degrade, limit, node_add, node_enable, primary
from resmesh.registry.file import FileRegistry
from resmesh.registry.follower import Follower
from resmesh.registry.state import ClusterEntry, NodeEntry, SwitchEntry, entry_from_config

P, R = "127.0.0.1:6379", "127.0.0.1:6389"


def configs() -> dict[str, ClusterConfig]:
    data = {
        "clusters": {
            "feed": {
                "protocol": "redis",
                "listen": "127.0.0.1:6380",
                "groups": {
                    "dc-a": [{"address": P, "role": "primary"}],
                    "dc-b": [{"address": R}],
                },
                "route": {"dc-a": 100},
            },
            "shards": {
                "protocol": "redis",
                "listen": "127.0.0.1:6381",
                "mode": "sharded",
                "groups": {"dc-a": ["127.0.0.1:7001", "127.0.0.1:7002"]},
            },
        }
    }
    return dict(parse_config(data, Path("x.yaml")).clusters)


class Limits:
    """Stands in for a cluster's policies: records the limits it is given."""

    def __init__(self) -> None:
        self.given: list[LimiterConfig] = []

    def set_limits(self, limits: LimiterConfig, now: float) -> None:
        self.given.append(limits)


class Target:
    """Records every layout it is given."""

    def __init__(self) -> None:
        self.applied: list[tuple[ClusterState, list[Switch] | None]] = []
        self.policies = Limits()

    def apply(self, state: ClusterState, switches: Iterable[Switch] | None = None) -> None:
        self.applied.append((state, None if switches is None else list(switches)))

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.applied[-1][0].nodes]


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "registry.yaml"
        self.registry = FileRegistry(self.path)
        self.configs = configs()
        self.targets = {name: Target() for name in self.configs}
        self.follower = Follower(self.registry, self.configs, self.targets)
        self.changes = 0

        def changed() -> None:
            self.changes += 1

        self.follower.on_change = changed

    def config_entry(self, name: str) -> ClusterEntry:
        return entry_from_config(self.configs[name])

    async def edit(self, name: str, edit: Callable[[ClusterEntry], ClusterEntry | None]) -> int:
        def from_current(current: ClusterEntry | None) -> ClusterEntry | None:
            return edit(current or self.config_entry(name))

        version, _ = await self.registry.update(name, from_current)
        return version


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


async def until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(3):
        while not condition():
            await trio.sleep(0.01)


# ----------------------------------------------------------------------------------------------
# start / apply


async def test_start_with_an_empty_registry_applies_nothing(setup: Setup) -> None:
    assert setup.follower.status()["reachable"] is False
    assert await setup.follower.start() is True
    assert setup.follower.version == 0
    assert all(target.applied == [] for target in setup.targets.values())
    assert setup.follower.entry("feed") == setup.config_entry("feed")
    assert setup.follower.cluster_status("feed") == {"version": 0, "error": None}
    status = setup.follower.status()
    assert (status["reachable"], status["error"], status["version"]) == (True, None, 0)


async def test_an_entry_is_applied(setup: Setup) -> None:
    await setup.edit("feed", lambda e: node_add(e, "127.0.0.1:6399", has_primary=True))
    version = await setup.edit("feed", lambda e: node_enable(e, R, False))
    version = await setup.edit(
        "feed", lambda e: degrade(e, SwitchMode.FALLBACK, "get", "n/a", "sick")
    )
    assert version == 3
    assert await setup.follower.start() is True
    feed = setup.targets["feed"]
    assert len(feed.applied) == 1
    state, switches = feed.applied[0]
    assert state.version == 3
    assert [(n.address, n.primary) for n in state.nodes] == [
        (P, True),
        ("127.0.0.1:6399", False),
    ]
    assert dict(state.route) == {"dc-a": 100, "dc-b": 0}
    assert switches == [Switch("feed", SwitchMode.FALLBACK, "GET", b"n/a", "sick")]
    assert setup.targets["shards"].applied == []
    assert setup.follower.version == 3
    assert setup.follower.cluster_status("feed") == {"version": 3, "error": None}
    assert setup.follower.cluster_status("shards") == {"version": 3, "error": None}
    assert setup.follower.entry("feed").node(R) == NodeEntry(
        R, "dc-b", NodeRole.REPLICA, 100, False
    )
    assert setup.changes == 1


async def test_an_unchanged_entry_is_not_applied_again(setup: Setup) -> None:
    await setup.edit("feed", lambda e: degrade(e, SwitchMode.MISS))
    await setup.follower.start()
    assert len(setup.targets["feed"].applied) == 1
    await setup.edit("shards", lambda e: degrade(e, SwitchMode.ERROR))
    setup.follower.apply(await setup.registry.read())
    assert len(setup.targets["feed"].applied) == 1
    assert len(setup.targets["shards"].applied) == 1
    assert setup.follower.version == 2
    assert setup.follower.cluster_status("feed")["version"] == 2


async def test_a_removed_entry_puts_the_cluster_back_on_its_config(setup: Setup) -> None:
    await setup.edit("feed", lambda e: primary(e, R, has_primary=True))
    await setup.follower.start()
    assert [(n.address, n.primary) for n in setup.targets["feed"].applied[-1][0].nodes] == [
        (P, False),
        (R, True),
    ]
    await setup.registry.update("feed", lambda current: None)
    setup.follower.apply(await setup.registry.read())
    state, switches = setup.targets["feed"].applied[-1]
    assert len(setup.targets["feed"].applied) == 2
    assert state.version == 2
    assert [(n.address, n.primary) for n in state.nodes] == [(P, True), (R, False)]
    assert switches == []
    assert setup.follower.entry("feed") == setup.config_entry("feed")


async def test_an_invalid_entry_keeps_the_last_good_state(setup: Setup) -> None:
    await setup.edit("feed", lambda e: degrade(e, SwitchMode.MISS))
    await setup.follower.start()
    good = setup.follower.entry("feed")

    def two_primaries(entry: ClusterEntry) -> ClusterEntry:
        return entry.replace_node(R, role=NodeRole.PRIMARY)

    await setup.edit("feed", two_primaries)
    setup.follower.apply(await setup.registry.read())
    assert len(setup.targets["feed"].applied) == 1
    assert setup.follower.entry("feed") == good
    status = setup.follower.cluster_status("feed")
    assert status["version"] == 1
    assert "2 enabled primaries" in status["error"]
    assert setup.follower.version == 2

    # A valid entry later applies, and clears the error.
    await setup.edit("feed", lambda e: e.replace_node(R, role=NodeRole.REPLICA, weight=10))
    setup.follower.apply(await setup.registry.read())
    assert len(setup.targets["feed"].applied) == 2
    state, _ = setup.targets["feed"].applied[-1]
    assert state.version == 3
    assert [(n.address, n.weight) for n in state.nodes] == [(P, 100), (R, 10)]
    assert setup.follower.cluster_status("feed") == {"version": 3, "error": None}


async def test_an_entry_that_does_not_parse_keeps_the_last_good_state(setup: Setup) -> None:
    await setup.edit("feed", lambda e: degrade(e, SwitchMode.MISS))
    await setup.follower.start()
    text = setup.path.read_text()
    setup.path.write_text(
        text.replace("version: 1", "version: 2").replace("weight: 100", "weight: 500", 1)
    )
    setup.follower.apply(await setup.registry.read())
    assert len(setup.targets["feed"].applied) == 1
    status = setup.follower.cluster_status("feed")
    assert status["version"] == 1
    assert "weight" in status["error"] and "500" in status["error"]


async def test_a_cluster_unknown_to_the_config_is_ignored(setup: Setup) -> None:
    await setup.registry.update("ghost", lambda current: setup.config_entry("feed"))
    assert await setup.follower.start() is True
    assert setup.follower.version == 1
    assert all(target.applied == [] for target in setup.targets.values())
    assert set(setup.follower.config()["clusters"]) == {"feed", "shards"}


# ----------------------------------------------------------------------------------------------
# run: following, outages


async def test_run_follows_changes(setup: Setup) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(setup.follower.run)
        await until(lambda: setup.follower.reachable)
        await setup.edit("shards", lambda e: node_enable(e, "127.0.0.1:7001", False))
        await until(lambda: setup.follower.version == 1)
        nursery.cancel_scope.cancel()
    assert setup.targets["shards"].addresses == ["127.0.0.1:7002"]
    assert setup.targets["shards"].applied[-1][0].sharded is True


async def test_an_unreachable_registry_keeps_the_state_and_resyncs(setup: Setup) -> None:
    await setup.edit("feed", lambda e: degrade(e, SwitchMode.MISS))
    assert await setup.follower.start() is True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(setup.follower.run)
        text = setup.path.read_text()
        before = time.time()
        setup.path.write_text("clusters: [unclosed\n")
        await until(lambda: not setup.follower.reachable)
        status = setup.follower.status()
        assert "not valid YAML" in status["error"]
        assert status["version"] == 1
        assert status["since"] >= before
        assert len(setup.targets["feed"].applied) == 1
        assert setup.follower.entry("feed").switches == (SwitchEntry(SwitchMode.MISS),)

        # Fixed, with a change made meanwhile: applied as soon as the registry answers.
        setup.path.write_text(text.replace("version: 1", "version: 5").replace("miss", "error"))
        await until(lambda: setup.follower.reachable)
        await until(lambda: setup.follower.version == 5)
        nursery.cancel_scope.cancel()
    status = setup.follower.status()
    assert (status["reachable"], status["error"]) == (True, None)
    state, switches = setup.targets["feed"].applied[-1]
    assert state.version == 5
    assert switches == [Switch("feed", SwitchMode.ERROR)]


async def test_start_with_an_unreachable_registry(setup: Setup) -> None:
    setup.path.write_text("- not\n- a mapping\n")
    assert await setup.follower.start() is False
    status = setup.follower.status()
    assert status["reachable"] is False
    assert "expected a mapping" in status["error"]
    assert setup.follower.version == 0
    assert all(target.applied == [] for target in setup.targets.values())


async def test_run_after_a_failed_start_applies_the_registry_once_it_answers(
    setup: Setup,
) -> None:
    await setup.edit("feed", lambda e: degrade(e, SwitchMode.READONLY))
    text = setup.path.read_text()
    setup.path.write_text("version: [\n")
    assert await setup.follower.start() is False
    async with trio.open_nursery() as nursery:
        nursery.start_soon(setup.follower.run)
        setup.path.write_text(text)
        await until(lambda: setup.follower.version == 1)
        nursery.cancel_scope.cancel()
    assert setup.follower.status()["reachable"] is True
    state, switches = setup.targets["feed"].applied[-1]
    assert state.version == 1
    assert switches == [Switch("feed", SwitchMode.READONLY)]


# ----------------------------------------------------------------------------------------------
# status / config


async def test_status_and_config_shapes(setup: Setup) -> None:
    await setup.edit("feed", lambda e: degrade(e, SwitchMode.MISS, reason="sick"))
    await setup.follower.start()
    status = setup.follower.status()
    assert set(status) == {"kind", "where", "version", "reachable", "error", "since"}
    assert status["kind"] == "file"
    assert status["where"] == f"file {setup.path}"
    assert status["version"] == 1
    assert isinstance(status["since"], float)
    config = setup.follower.config()
    assert config["version"] == 1
    assert config["clusters"]["feed"] == {
        "groups": {
            "dc-a": [{"address": P, "role": "primary", "weight": 100, "enabled": True}],
            "dc-b": [{"address": R, "role": "replica", "weight": 100, "enabled": True}],
        },
        "route": {"dc-a": 100, "dc-b": 0},
        "switches": {"*": {"mode": "miss", "reason": "sick"}},
        "limits": {},
        "version": 1,
    }
    assert config["clusters"]["shards"]["version"] == 1
    assert config["clusters"]["shards"]["switches"] == {}
    assert [n["address"] for n in config["clusters"]["shards"]["groups"]["dc-a"]] == [
        "127.0.0.1:7001",
        "127.0.0.1:7002",
    ]


async def test_config_state_is_reported_before_any_read(setup: Setup) -> None:
    config = setup.follower.config()
    assert config["version"] == 0
    assert config["clusters"]["feed"]["version"] == 0
    assert config["clusters"]["feed"]["route"] == {"dc-a": 100, "dc-b": 0}
    assert setup.follower.status()["error"] == "not read yet"
    assert dataclasses.asdict(setup.follower.entry("shards").nodes[0])["role"] is None


async def test_limit_overrides_reach_the_policies_merged_with_the_config(setup: Setup) -> None:
    await setup.edit("feed", lambda e: limit(e, "get", LimitConfig(concurrency=3)))
    await setup.follower.start()
    given = setup.targets["feed"].policies.given
    assert len(given) == 1
    assert given[0].operations["GET"] == LimitConfig(concurrency=3)
    assert given[0].cluster == LimitConfig()  # the config's: none
