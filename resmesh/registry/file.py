"""The file registry: one YAML file, the embedded default (a single gateway needs nothing else).

The file holds a version counter and one entry per cluster::

    version: 3
    clusters:
      feed-cache: {groups: {...}, route: {...}, switches: {...}}

``resmesh ctl`` changes it under an exclusive lock (``flock`` on ``FILE.lock``), writing a
new file beside it and renaming it over the old one, so a reader never sees half a file and
two writers never lose each other's change. Gateways poll the file's identity (inode, size,
modification time) every 100 ms, far inside the one second they must obey in, and read it
whole every second whatever its identity says; a hand edit is picked up the same way (raise
``version`` with it, so status tells the versions apart).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, NoReturn, TypeVar

import trio
import yaml

from .base import Edit, Registry, RegistryUnavailable
from .state import ClusterEntry, RegistryDataError, Snapshot, entry_document, parse_entry

__all__ = ["FileRegistry"]

#: How often the file is checked for a change (seconds).
POLL_INTERVAL: Final = 0.1
#: How often it is read whatever its identity says: two writes in one timestamp tick that
#: reuse an inode and keep the size would otherwise look like none.
_REREAD: Final = 1.0

_HEADER: Final = (
    "# resmesh registry: the live state of the clusters (nodes, route weights, switches).\n"
    "# `resmesh ctl` writes it; gateways pick up every change within a second. When editing\n"
    "# by hand, raise `version` and keep the file valid YAML.\n"
)

_Identity = tuple[int, int, int]
_T = TypeVar("_T")


class FileRegistry(Registry):
    """The registry kept in the YAML file at ``path``; a missing file is an empty registry.

    Args:
        path: the file.
        timeout: how long a read or an update (waiting for the lock) may take.
    """

    kind = "file"

    def __init__(self, path: Path, timeout: float = 2.0) -> None:
        self.path = path
        self.timeout = timeout
        self._lock_path = path.with_name(path.name + ".lock")

    def describe(self) -> str:
        return f"file {self.path}"

    async def read(self) -> Snapshot:
        snapshot, _ = await self._in_thread(self._read)
        return snapshot

    async def follow(self, after: Snapshot, changed: Callable[[Snapshot], None]) -> NoReturn:
        last, identity = await self._in_thread(self._read)
        if last != after:
            changed(last)
        read_at = trio.current_time()
        while True:
            await trio.sleep(POLL_INTERVAL)
            if self._identity() == identity and trio.current_time() - read_at < _REREAD:
                continue
            snapshot, identity = await self._in_thread(self._read)
            read_at = trio.current_time()
            if snapshot != last:
                last = snapshot
                changed(snapshot)

    async def update(self, cluster: str, edit: Edit) -> tuple[int, ClusterEntry | None]:
        return await self._in_thread(lambda: self._update(cluster, edit))

    # ------------------------------------------------------------------------------------

    async def _in_thread(self, work: Callable[[], _T]) -> _T:
        """Run blocking file work off the event loop, within the timeout (a hung disk or a
        lock held too long leaves the thread behind, not the caller)."""
        with trio.move_on_after(self.timeout):
            return await trio.to_thread.run_sync(work, abandon_on_cancel=True)
        raise RegistryUnavailable(f"{self.describe()}: no answer in {self.timeout:g}s")

    def _identity(self) -> _Identity | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    def _read(self) -> tuple[Snapshot, _Identity | None]:
        identity = self._identity()
        version, documents = self._load()
        clusters: dict[str, ClusterEntry] = {}
        errors: dict[str, str] = {}
        for name, doc in documents.items():
            try:
                clusters[name] = parse_entry(name, doc)
            except RegistryDataError as exc:
                errors[name] = str(exc)
        snapshot = Snapshot(version, MappingProxyType(clusters), MappingProxyType(errors))
        return snapshot, identity

    def _load(self) -> tuple[int, dict[str, Any]]:
        """The version and the raw documents of every cluster (an absent file: none)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return 0, {}
        except (OSError, UnicodeDecodeError) as exc:
            raise RegistryUnavailable(f"{self.describe()}: cannot read it: {exc}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RegistryUnavailable(f"{self.describe()}: not valid YAML: {exc}") from None
        if data is None:
            return 0, {}
        version = data.get("version", 0) if isinstance(data, dict) else None
        clusters = data.get("clusters") or {} if isinstance(data, dict) else None
        if (
            not isinstance(version, int)
            or isinstance(version, bool)
            or version < 0
            or not isinstance(clusters, dict)
        ):
            raise RegistryUnavailable(
                f"{self.describe()}: expected a mapping with 'version' (a whole number) and "
                "'clusters' (a mapping of cluster name to entry)"
            )
        return version, {str(name): doc for name, doc in clusters.items()}

    def _update(self, cluster: str, edit: Edit) -> tuple[int, ClusterEntry | None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock_path.open("a") as lock:
            self._lock(lock.fileno())
            version, documents = self._load()
            current = None
            if cluster in documents:
                try:
                    current = parse_entry(cluster, documents[cluster])
                except RegistryDataError:
                    current = None  # overwritten by the edit, which starts over
            new = edit(current)
            if new == current and (cluster in documents) == (new is not None):
                return version, current
            if new is None:
                documents.pop(cluster, None)
            else:
                documents[cluster] = entry_document(new)
            version += 1
            self._write(version, documents)
            return version, new

    def _lock(self, fd: int) -> None:
        """Take the writers' lock, or give up within the timeout (never later: a writer that
        went on after its caller gave up would make a change nobody reports)."""
        deadline = time.monotonic() + self.timeout / 2
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RegistryUnavailable(
                        f"{self.describe()}: another writer holds {self._lock_path}"
                    ) from None
                time.sleep(0.005)

    def _write(self, version: int, documents: dict[str, Any]) -> None:
        body = yaml.safe_dump(
            {"version": version, "clusters": documents}, sort_keys=False, default_flow_style=None
        )
        fd, temp = tempfile.mkstemp(prefix=self.path.name, suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(_HEADER + body)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
