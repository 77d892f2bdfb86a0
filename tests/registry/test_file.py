"""resmesh.registry.file: the YAML file registry (read, update under flock, follow)."""

from __future__ import annotations

import dataclasses
import fcntl
import multiprocessing
import os
import threading
import time
from pathlib import Path
from types import MappingProxyType

import pytest
import trio
import yaml

from resmesh.config import NodeRole
from resmesh.registry.base import RegistryUnavailable
from resmesh.registry.file import FileRegistry
from resmesh.registry.state import ClusterEntry, NodeEntry, Snapshot

ENTRY = ClusterEntry(
    (NodeEntry("127.0.0.1:6379", "dc-a", NodeRole.PRIMARY),),
    MappingProxyType({"dc-a": 100}),
)


def with_node(port: int) -> ClusterEntry:
    return dataclasses.replace(
        ENTRY, nodes=(*ENTRY.nodes, NodeEntry(f"127.0.0.1:{port}", "dc-a", NodeRole.REPLICA))
    )


def stat_of(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


# ----------------------------------------------------------------------------------------------
# read / update


async def test_a_missing_file_is_an_empty_registry(tmp_path: Path) -> None:
    snapshot = await FileRegistry(tmp_path / "registry.yaml").read()
    assert snapshot == Snapshot(0)
    assert dict(snapshot.clusters) == {} and dict(snapshot.errors) == {}


async def test_an_empty_file_is_an_empty_registry(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text("# nothing yet\n")
    assert await FileRegistry(path).read() == Snapshot(0)


async def test_update_creates_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "registry.yaml"
    reg = FileRegistry(path)
    assert await reg.update("feed", lambda current: ENTRY) == (1, ENTRY)
    assert path.read_text().startswith("# resmesh registry")
    data = yaml.safe_load(path.read_text())
    assert data["version"] == 1
    assert list(data["clusters"]) == ["feed"]
    snapshot = await reg.read()
    assert snapshot.version == 1
    assert dict(snapshot.clusters) == {"feed": ENTRY}


async def test_every_edit_bumps_the_version_and_sees_the_current_entry(tmp_path: Path) -> None:
    reg = FileRegistry(tmp_path / "registry.yaml")
    seen: list[ClusterEntry | None] = []

    def edit_to(new: ClusterEntry) -> object:
        def edit(current: ClusterEntry | None) -> ClusterEntry:
            seen.append(current)
            return new

        return edit

    await reg.update("feed", edit_to(ENTRY))  # type: ignore[arg-type]
    assert await reg.update("feed", edit_to(with_node(1))) == (2, with_node(1))  # type: ignore[arg-type]
    assert await reg.update("other", edit_to(with_node(2))) == (3, with_node(2))  # type: ignore[arg-type]
    assert seen == [None, ENTRY, None]
    snapshot = await reg.read()
    assert snapshot.version == 3
    assert dict(snapshot.clusters) == {"feed": with_node(1), "other": with_node(2)}


async def test_an_edit_that_changes_nothing_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    reg = FileRegistry(path)
    await reg.update("feed", lambda current: ENTRY)
    before = stat_of(path)
    assert await reg.update("feed", lambda current: current) == (1, ENTRY)
    assert stat_of(path) == before
    assert (await reg.read()).version == 1


async def test_removing_a_missing_entry_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    reg = FileRegistry(path)
    assert await reg.update("feed", lambda current: None) == (0, None)
    assert not path.exists()


async def test_an_edit_returning_none_deletes_the_entry(tmp_path: Path) -> None:
    reg = FileRegistry(tmp_path / "registry.yaml")
    await reg.update("feed", lambda current: ENTRY)
    await reg.update("other", lambda current: ENTRY)
    assert await reg.update("feed", lambda current: None) == (3, None)
    snapshot = await reg.read()
    assert snapshot.version == 3
    assert list(snapshot.clusters) == ["other"]


async def test_an_edit_that_raises_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    reg = FileRegistry(path)
    await reg.update("feed", lambda current: ENTRY)
    before = stat_of(path)

    def refuse(current: ClusterEntry | None) -> ClusterEntry:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        await reg.update("feed", refuse)
    assert stat_of(path) == before
    assert await reg.read() == Snapshot(1, MappingProxyType({"feed": ENTRY}))
    # The lock was released: the next writer goes through.
    assert (await reg.update("feed", lambda current: with_node(1)))[0] == 2


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("clusters: [unclosed\n", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
        ("just text\n", "expected a mapping"),
        ("version: x\nclusters: {}\n", "expected a mapping"),
        ("version: -1\nclusters: {}\n", "expected a mapping"),
        ("version: true\nclusters: {}\n", "expected a mapping"),
        ("version: 1\nclusters: [a]\n", "expected a mapping"),
    ],
)
async def test_an_unreadable_file_is_unavailable(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text(text)
    reg = FileRegistry(path)
    with pytest.raises(RegistryUnavailable) as info:
        await reg.read()
    assert str(path) in str(info.value)
    assert words in str(info.value)
    with pytest.raises(RegistryUnavailable):
        await reg.update("feed", lambda current: ENTRY)
    assert path.read_text() == text


async def test_a_bad_entry_is_an_error_of_its_cluster_only(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text(
        "version: 4\n"
        "clusters:\n"
        "  good: {groups: {dc-a: [{address: 127.0.0.1:6379, role: primary}]}, route: {dc-a: 100}}\n"
        "  bad: {groups: {dc-a: [{address: 127.0.0.1:6379, weight: 500}]}}\n"
    )
    reg = FileRegistry(path)
    snapshot = await reg.read()
    assert snapshot.version == 4
    assert dict(snapshot.clusters) == {"good": ENTRY}
    assert list(snapshot.errors) == ["bad"]
    assert "clusters.bad.groups.dc-a.0.weight" in snapshot.errors["bad"]
    # An update of the bad entry starts over from nothing, and repairs it.
    seen: list[ClusterEntry | None] = []

    def repair(current: ClusterEntry | None) -> ClusterEntry:
        seen.append(current)
        return ENTRY

    assert await reg.update("bad", repair) == (5, ENTRY)
    assert seen == [None]
    snapshot = await reg.read()
    assert dict(snapshot.errors) == {}
    assert dict(snapshot.clusters) == {"good": ENTRY, "bad": ENTRY}


async def test_an_update_gives_up_when_the_lock_is_held(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    reg = FileRegistry(path, timeout=0.2)
    with (tmp_path / "registry.yaml.lock").open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(RegistryUnavailable, match="another writer holds"):
            await reg.update("feed", lambda current: ENTRY)
    assert not path.exists()
    assert (await reg.update("feed", lambda current: ENTRY))[0] == 1


# ----------------------------------------------------------------------------------------------
# follow


class Recorder:
    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []
        self._event = trio.Event()

    def __call__(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)
        self._event.set()
        self._event = trio.Event()

    async def until(self, version: int) -> Snapshot:
        with trio.fail_after(3):
            while not self.snapshots or self.snapshots[-1].version < version:
                await self._event.wait()
        return self.snapshots[-1]


async def test_follow_sees_an_update(tmp_path: Path) -> None:
    reg = FileRegistry(tmp_path / "registry.yaml")
    start = await reg.read()
    seen = Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reg.follow, start, seen)
        await reg.update("feed", lambda current: ENTRY)
        assert (await seen.until(1)).clusters == {"feed": ENTRY}
        await reg.update("feed", lambda current: with_node(1))
        assert (await seen.until(2)).clusters == {"feed": with_node(1)}
        nursery.cancel_scope.cancel()
    assert [s.version for s in seen.snapshots] == [1, 2]


async def test_follow_sees_a_hand_edit(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    reg = FileRegistry(path)
    await reg.update("feed", lambda current: ENTRY)
    start = await reg.read()
    seen = Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reg.follow, start, seen)
        path.write_text(path.read_text().replace("version: 1", "version: 7").replace("100", "55"))
        snapshot = await seen.until(7)
        nursery.cancel_scope.cancel()
    assert snapshot.clusters["feed"].nodes[0].weight == 55
    assert [s.version for s in seen.snapshots] == [7]


async def test_follow_from_an_older_snapshot_reports_the_current_one_at_once(
    tmp_path: Path,
) -> None:
    reg = FileRegistry(tmp_path / "registry.yaml")
    start = await reg.read()
    await reg.update("feed", lambda current: ENTRY)
    seen = Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reg.follow, start, seen)
        assert (await seen.until(1)).clusters == {"feed": ENTRY}
        nursery.cancel_scope.cancel()


async def test_follow_is_quiet_when_nothing_changed(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    reg = FileRegistry(path)
    await reg.update("feed", lambda current: ENTRY)
    start = await reg.read()

    reads = 0
    reread = trio.Event()
    read = reg._read

    def counted() -> object:
        nonlocal reads
        result = read()
        reads += 1
        if reads == 2:  # the first read is follow's own; the second sees the touched file
            trio.from_thread.run_sync(reread.set)
        return result

    reg._read = counted  # type: ignore[method-assign]
    seen = Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reg.follow, start, seen)
        with trio.fail_after(3):
            while reads < 1:
                await trio.sleep(0.01)
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # same content
        with trio.fail_after(3):
            await reread.wait()
        assert seen.snapshots == []
        await reg.update("feed", lambda current: with_node(1))
        await seen.until(2)
        nursery.cancel_scope.cancel()
    assert [s.version for s in seen.snapshots] == [2]


# ----------------------------------------------------------------------------------------------
# Concurrent writers


def _add_nodes(path: Path, writer: int) -> None:
    """One writer: 5 updates, each appending a node of its own to ``feed``."""
    reg = FileRegistry(path, timeout=20)
    for i in range(5):
        port = 10000 + writer * 10 + i

        def edit(current: ClusterEntry | None, port: int = port) -> ClusterEntry:
            assert current is not None
            node = NodeEntry(f"127.0.0.1:{port}", "dc-a", NodeRole.REPLICA)
            return dataclasses.replace(current, nodes=(*current.nodes, node))

        trio.run(reg.update, "feed", edit)


def _check_all_added(path: Path) -> None:
    snapshot = trio.run(FileRegistry(path).read)
    assert snapshot.version == 41
    nodes = snapshot.clusters["feed"].nodes
    expected = {f"127.0.0.1:{10000 + w * 10 + i}" for w in range(8) for i in range(5)}
    assert {n.address for n in nodes[1:]} == expected
    assert len(nodes) == 41


def _start_reader(path: Path, stop: threading.Event, problems: list[str]) -> threading.Thread:
    """Reads the file over and over while the writers write: every read is a whole file."""

    def read() -> None:
        last = 0
        while not stop.is_set():
            try:
                data = yaml.safe_load(path.read_text())
                version = data["version"]
                if version < last:
                    problems.append(f"version went back from {last} to {version}")
                if len(data["clusters"]["feed"]["groups"]["dc-a"]) != version:
                    problems.append(f"version {version} with a different number of nodes")
                last = version
            except Exception as exc:
                problems.append(repr(exc))
            time.sleep(0.001)  # pacing, not synchronization: leave the writers the GIL

    thread = threading.Thread(target=read)
    thread.start()
    return thread


def test_concurrent_processes_lose_no_update(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    trio.run(FileRegistry(path).update, "feed", lambda current: ENTRY)
    context = multiprocessing.get_context("fork")  # no re-import: each writer starts at once
    writers = [context.Process(target=_add_nodes, args=(path, w)) for w in range(8)]
    for writer in writers:
        writer.start()
    stop, problems = threading.Event(), list[str]()
    reader = _start_reader(path, stop, problems)
    try:
        for writer in writers:
            writer.join(timeout=30)
            assert writer.exitcode == 0
    finally:
        stop.set()
        reader.join()
    _check_all_added(path)
    assert problems == []


def test_concurrent_threads_lose_no_update(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    trio.run(FileRegistry(path).update, "feed", lambda current: ENTRY)
    failures: list[BaseException] = []

    def write(writer: int) -> None:
        try:
            _add_nodes(path, writer)
        except BaseException as exc:
            failures.append(exc)

    stop, problems = threading.Event(), list[str]()
    reader = _start_reader(path, stop, problems)
    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    stop.set()
    reader.join()
    assert failures == []
    _check_all_added(path)
    assert problems == []
