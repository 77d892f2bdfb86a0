"""The etcd registry against a real etcd: reads, compare-and-swap updates, the watch, outages.

One etcd serves the module; each test works under a prefix of its own. The outage tests start
an etcd of their own, since they stop or hang it.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import trio

from resmesh.registry.base import RegistryUnavailable
from resmesh.registry.etcd import EtcdRegistry
from resmesh.registry.state import (
    ClusterEntry,
    NodeEntry,
    Snapshot,
    entry_document,
    parse_entry,
)
from tests.support.etcd import EtcdServer
from tests.support.servers import free_port

TIMEOUT = 5.0
#: The outage tests' registry timeout: short, so that they notice fast.
OUTAGE_TIMEOUT = 1.0


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def entry(*ports: int, weight: int = 100) -> ClusterEntry:
    doc = {"groups": {"dc-a": [f"127.0.0.1:{p}" for p in ports]}, "route": {"dc-a": weight}}
    return parse_entry("c", doc)


def add_node(port: int) -> Callable[[ClusterEntry | None], ClusterEntry]:
    def edit(current: ClusterEntry | None) -> ClusterEntry:
        assert current is not None
        node = NodeEntry(f"127.0.0.1:{port}", "dc-a")
        return ClusterEntry((*current.nodes, node), current.route, current.switches)

    return edit


def ports_of(e: ClusterEntry) -> set[int]:
    return {int(n.address.rsplit(":", 1)[1]) for n in e.nodes}


def revision(etcd: EtcdServer) -> int:
    return int(etcd.post("/v3/maintenance/status", {})["header"]["revision"])


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    return f"/test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def registry(etcd: EtcdServer, prefix: str) -> AsyncIterator[EtcdRegistry]:
    reg = EtcdRegistry([etcd.url], prefix, TIMEOUT)
    yield reg
    await reg.aclose()


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path)
    yield server
    server.stop()


def put_raw(etcd: EtcdServer, key: str, value: str) -> int:
    answer = etcd.post("/v3/kv/put", {"key": b64(key), "value": b64(value)})
    return int(answer["header"]["revision"])


class Follower:
    """``registry.follow`` in a task: the snapshots it delivers, and how it ended."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[Snapshot](math.inf)
        self.error: BaseException | None = None
        self.ended = trio.Event()

    async def run(self, registry: EtcdRegistry, after: Snapshot) -> None:
        try:
            await registry.follow(after, self.send.send_nowait)
        except Exception as exc:
            self.error = exc
        finally:
            self.ended.set()

    async def next(self, timeout: float = 5.0) -> Snapshot:
        with trio.fail_after(timeout):
            return await self.receive.receive()

    async def until(self, version: int, timeout: float = 5.0) -> list[Snapshot]:
        """Every snapshot delivered up to the one at ``version``."""
        seen: list[Snapshot] = []
        with trio.fail_after(timeout):
            while not seen or seen[-1].version < version:
                seen.append(await self.receive.receive())
        return seen


# ----------------------------------------------------------------------------------------------
# read and update


async def test_describe_and_kind() -> None:
    reg = EtcdRegistry(["http://127.0.0.1:2379/", "http://10.0.0.1:2379"], "/resmesh/", 2.0)
    assert reg.kind == "etcd"
    assert reg.describe() == "etcd http://127.0.0.1:2379,http://10.0.0.1:2379 prefix /resmesh"
    await reg.aclose()


async def test_read_empty_prefix(etcd: EtcdServer, registry: EtcdRegistry, prefix: str) -> None:
    # Keys beside the clusters directory must stay out of it.
    put_raw(etcd, f"{prefix}/clusters", "{}")
    put_raw(etcd, f"{prefix}/clusters0/x", "{}")
    put_raw(etcd, f"{prefix}/other/x", "{}")
    snapshot = await registry.read()
    assert snapshot.version == revision(etcd)
    assert dict(snapshot.clusters) == {}
    assert dict(snapshot.errors) == {}


async def test_update_creates_then_edits(
    etcd: EtcdServer, registry: EtcdRegistry, prefix: str
) -> None:
    seen: list[ClusterEntry | None] = []

    def create(current: ClusterEntry | None) -> ClusterEntry:
        seen.append(current)
        return entry(7001)

    v1, created = await registry.update("c", create)
    assert seen == [None]
    assert created == entry(7001)
    assert v1 == revision(etcd)
    snapshot = await registry.read()
    assert snapshot.version == v1
    assert dict(snapshot.clusters) == {"c": entry(7001)}

    # The value is the entry's JSON document, under PREFIX/clusters/NAME.
    kvs = etcd.post("/v3/kv/range", {"key": b64(f"{prefix}/clusters/c")})["kvs"]
    assert json.loads(base64.b64decode(kvs[0]["value"])) == entry_document(entry(7001))

    v2, edited = await registry.update("c", add_node(7002))
    assert v2 > v1
    assert edited is not None and ports_of(edited) == {7001, 7002}
    snapshot = await registry.read()
    assert (snapshot.version, dict(snapshot.clusters)) == (v2, {"c": edited})


async def test_edit_returning_the_same_entry_writes_nothing(
    etcd: EtcdServer, registry: EtcdRegistry
) -> None:
    v1, _ = await registry.update("c", lambda _: entry(7001))
    version, same = await registry.update("c", lambda current: current)
    assert (version, same) == (v1, entry(7001))
    assert revision(etcd) == v1
    # Absent and left absent: nothing written either.
    version, none = await registry.update("absent", lambda current: None)
    assert (version, none) == (v1, None)
    assert revision(etcd) == v1


async def test_edit_returning_none_deletes(etcd: EtcdServer, registry: EtcdRegistry) -> None:
    await registry.update("c", lambda _: entry(7001))
    await registry.update("d", lambda _: entry(7002))
    version, removed = await registry.update("c", lambda current: None)
    assert removed is None
    assert version == revision(etcd)
    snapshot = await registry.read()
    assert set(snapshot.clusters) == {"d"}
    assert snapshot.version == version


async def test_edit_that_raises_writes_nothing(etcd: EtcdServer, registry: EtcdRegistry) -> None:
    await registry.update("c", lambda _: entry(7001))
    before = await registry.read()

    class Refused(Exception):
        pass

    def refuse(current: ClusterEntry | None) -> ClusterEntry:
        raise Refused("no")

    with pytest.raises(Refused):
        await registry.update("c", refuse)
    with pytest.raises(Refused):
        await registry.update("new", refuse)
    assert revision(etcd) == before.version
    assert await registry.read() == before


async def test_unparsable_values_show_in_errors(
    etcd: EtcdServer, registry: EtcdRegistry, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    put_raw(etcd, f"{prefix}/clusters/bad-json", "{not json")
    put_raw(etcd, f"{prefix}/clusters/bad-entry", json.dumps({"groups": {}}))
    await registry.update("good", lambda _: entry(7001))
    snapshot = await registry.read()
    assert dict(snapshot.clusters) == {"good": entry(7001)}
    assert set(snapshot.errors) == {"bad-json", "bad-entry"}
    assert "clusters.bad-json" in snapshot.errors["bad-json"]
    assert "not valid JSON" in snapshot.errors["bad-json"]
    assert "clusters.bad-entry.groups" in snapshot.errors["bad-entry"]

    # An update starts an unreadable entry over (with a warning), and repairs it.
    seen: list[ClusterEntry | None] = []

    def repair(current: ClusterEntry | None) -> ClusterEntry:
        seen.append(current)
        return entry(7005)

    with caplog.at_level(logging.WARNING, logger="resmesh.registry.etcd"):
        await registry.update("bad-json", repair)
    assert seen == [None]
    assert "unreadable entry" in caplog.text
    # An edit that removes an unreadable entry removes it.
    await registry.update("bad-entry", lambda current: None)
    snapshot = await registry.read()
    assert dict(snapshot.clusters) == {"good": entry(7001), "bad-json": entry(7005)}
    assert dict(snapshot.errors) == {}


async def test_concurrent_updates_lose_nothing(registry: EtcdRegistry) -> None:
    await registry.update("c", lambda _: entry(7000))
    results: list[tuple[int, ClusterEntry | None]] = []

    async def append(port: int) -> None:
        results.append(await registry.update("c", add_node(port)))

    with trio.fail_after(8):
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(append, 7001 + i)

    versions = [v for v, _ in results]
    assert len(set(versions)) == 20
    # In commit (version) order, each write holds every earlier one plus exactly one node.
    have = {7000}
    for _, written in sorted(results, key=lambda r: r[0]):
        assert written is not None
        added = ports_of(written) - have
        assert len(added) == 1 and ports_of(written) >= have
        have = ports_of(written)
    assert have == {7000, *range(7001, 7021)}
    final = (await registry.read()).clusters["c"]
    assert ports_of(final) == have
    assert len(final.nodes) == 21


# ----------------------------------------------------------------------------------------------
# follow


async def test_follow_delivers_changes_in_order(
    etcd: EtcdServer, registry: EtcdRegistry, prefix: str
) -> None:
    start = await registry.read()
    follower = Follower()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(follower.run, registry, start)

        v1, e1 = await registry.update("c", lambda _: entry(7001))
        s1 = await follower.next()
        assert (s1.version, dict(s1.clusters), dict(s1.errors)) == (v1, {"c": e1}, {})

        v2, e2 = await registry.update("c", add_node(7002))
        s2 = await follower.next()
        assert (s2.version, dict(s2.clusters)) == (v2, {"c": e2})

        v3 = put_raw(etcd, f"{prefix}/clusters/broken", "[]")
        s3 = await follower.next()
        assert s3.version == v3
        assert dict(s3.clusters) == {"c": e2}
        assert set(s3.errors) == {"broken"}

        v4, _ = await registry.update("c", lambda current: None)
        s4 = await follower.next()
        assert (s4.version, dict(s4.clusters), set(s4.errors)) == (v4, {}, {"broken"})

        etcd.post("/v3/kv/deleterange", {"key": b64(f"{prefix}/clusters/broken")})
        s5 = await follower.next()
        assert s5.version > v4
        assert (dict(s5.clusters), dict(s5.errors)) == ({}, {})

        # Changes outside the clusters directory are not changes of the registry.
        put_raw(etcd, f"{prefix}/other", "x")
        v6, _ = await registry.update("d", lambda _: entry(7003))
        s6 = await follower.next()
        assert s6.version == v6
        assert set(s6.clusters) == {"d"}
        assert follower.error is None
        nursery.cancel_scope.cancel()
    assert follower.error is None


async def test_follow_from_an_old_version_replays(registry: EtcdRegistry) -> None:
    start = await registry.read()
    versions = [(await registry.update("c", lambda _: entry(7001)))[0]]
    for port in (7002, 7003):
        versions.append((await registry.update("c", add_node(port)))[0])
    versions.append((await registry.update("d", lambda _: entry(7009)))[0])
    now = await registry.read()

    follower = Follower()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(follower.run, registry, start)
        seen = await follower.until(versions[-1])
        nursery.cancel_scope.cancel()
    assert [s.version for s in seen] == sorted({s.version for s in seen})
    assert all(s.version in versions for s in seen)
    assert seen[-1].clusters == now.clusters
    assert ports_of(seen[-1].clusters["c"]) == {7001, 7002, 7003}

    # Following from a snapshot in the middle replays only what came after it.
    middle = Snapshot(versions[1], {"c": entry(7001, 7002)})
    follower = Follower()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(follower.run, registry, middle)
        seen = await follower.until(versions[-1])
        nursery.cancel_scope.cancel()
    assert seen[0].version > versions[1]
    assert seen[-1].clusters == now.clusters


async def test_follow_raises_what_changed_raises(registry: EtcdRegistry) -> None:
    start = await registry.read()

    def changed(snapshot: Snapshot) -> None:
        raise KeyError("from the callback")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(registry.update, "c", lambda _: entry(7001))
        with trio.fail_after(5), pytest.raises(KeyError, match="from the callback"):
            await registry.follow(start, changed)


async def test_follow_from_compacted_history_raises(
    etcd: EtcdServer, registry: EtcdRegistry
) -> None:
    start = await registry.read()
    await registry.update("c", lambda _: entry(7001))
    await registry.update("c", add_node(7002))
    compacted = revision(etcd)
    etcd.post("/v3/kv/compaction", {"revision": str(compacted), "physical": True})
    with trio.fail_after(5), pytest.raises(RegistryUnavailable, match="compacted") as caught:
        await registry.follow(start, lambda snapshot: None)
    assert str(compacted) in str(caught.value)
    assert etcd.url in str(caught.value)

    # Read again, then follow: that works.
    fresh = await registry.read()
    follower = Follower()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(follower.run, registry, fresh)
        version, _ = await registry.update("c", add_node(7003))
        assert (await follower.next()).version == version
        nursery.cancel_scope.cancel()


# ----------------------------------------------------------------------------------------------
# endpoints and outages


async def test_unreachable_endpoint_raises_naming_it() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    registry = EtcdRegistry([url], "/resmesh", OUTAGE_TIMEOUT)
    try:
        with trio.fail_after(OUTAGE_TIMEOUT + 0.5):
            with pytest.raises(RegistryUnavailable, match="cannot connect") as caught:
                await registry.read()
            assert url in str(caught.value)
            with pytest.raises(RegistryUnavailable):
                await registry.update("c", lambda _: entry(7001))
            with pytest.raises(RegistryUnavailable):
                await registry.follow(Snapshot(0), lambda snapshot: None)
    finally:
        await registry.aclose()


async def test_endpoints_are_tried_in_turn(
    etcd: EtcdServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    registry = EtcdRegistry([dead, etcd.url], prefix, TIMEOUT)
    try:
        with caplog.at_level(logging.WARNING, logger="resmesh.registry.etcd"):
            version, _ = await registry.update("c", lambda _: entry(7001))
            snapshot = await registry.read()
        assert snapshot.version == version
        assert dict(snapshot.clusters) == {"c": entry(7001)}
        # The endpoint that answered is remembered: one switch, not one per request.
        assert caplog.text.count(f"switched to {etcd.url}") == 1
    finally:
        await registry.aclose()


async def test_stopped_etcd_is_noticed_and_recovered_from(own_etcd: EtcdServer) -> None:
    registry = EtcdRegistry([own_etcd.url], "/resmesh", OUTAGE_TIMEOUT)
    try:
        start = await registry.read()
        follower = Follower()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follower.run, registry, start)
            await registry.update("c", lambda _: entry(7001))
            await follower.next()  # the watch is up

            await trio.to_thread.run_sync(own_etcd.stop)
            with trio.fail_after(2 * OUTAGE_TIMEOUT + 1):
                await follower.ended.wait()
            assert isinstance(follower.error, RegistryUnavailable)
            assert own_etcd.url in str(follower.error)

            with trio.fail_after(OUTAGE_TIMEOUT + 0.5):
                with pytest.raises(RegistryUnavailable, match=own_etcd.url):
                    await registry.read()

        await trio.to_thread.run_sync(own_etcd.start)
        snapshot = await registry.read()
        assert dict(snapshot.clusters) == {"c": entry(7001)}
    finally:
        await registry.aclose()


async def test_hung_etcd_is_noticed(own_etcd: EtcdServer) -> None:
    """A hung etcd keeps its connections open: only the deadlines and the probe notice it."""
    registry = EtcdRegistry([own_etcd.url], "/resmesh", OUTAGE_TIMEOUT)
    try:
        start = await registry.read()
        follower = Follower()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follower.run, registry, start)
            await registry.update("c", lambda _: entry(7001))
            await follower.next()  # the watch is up

            own_etcd.pause()
            try:
                paused_at = trio.current_time()
                with trio.fail_after(2 * OUTAGE_TIMEOUT + 1):
                    await follower.ended.wait()
                assert trio.current_time() - paused_at >= OUTAGE_TIMEOUT * 0.9
                assert isinstance(follower.error, RegistryUnavailable)
                assert "no answer in 1s" in str(follower.error)

                with trio.fail_after(OUTAGE_TIMEOUT + 0.5):
                    with pytest.raises(RegistryUnavailable, match="no answer in 1s"):
                        await registry.read()
                with trio.fail_after(OUTAGE_TIMEOUT + 0.5):
                    with pytest.raises(RegistryUnavailable, match="not done in 1s"):
                        await registry.update("c", add_node(7002))
            finally:
                own_etcd.resume()

        snapshot = await registry.read()
        assert dict(snapshot.clusters) == {"c": entry(7001)}
    finally:
        await registry.aclose()
