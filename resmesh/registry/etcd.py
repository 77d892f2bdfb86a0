"""The etcd registry: a fleet of gateways sharing the store operators already run.

Each cluster's entry is one key, ``PREFIX/clusters/NAME``, whose value is the entry's JSON
document (:func:`~resmesh.registry.state.entry_document`); one key per cluster means a change
to one cluster never races a change to another.

etcd is spoken to through its v3 JSON gateway over plain HTTP with ``httpx``
(https://etcd.io/docs/v3.4/dev-guide/api_grpc_gateway/): etcd 3.4 and later serve it under
``/v3/`` on the client port, it needs no gRPC stack and no generated code, and ``httpx`` runs
on Trio. Keys and
values travel base64-encoded, 64-bit numbers as strings, and fields at their zero value are
left out (a PUT event has no ``type``, a failed transaction no ``succeeded``).

Versions are etcd revisions. :meth:`EtcdRegistry.read` answers at the revision of its range
request; :meth:`EtcdRegistry.follow` watches the prefix from the revision after the snapshot it
starts from (each snapshot it delivers is at the revision of the newest change in it), so a
change made while nobody was following is replayed, unless etcd has compacted it away: then it
raises, and the caller reads again. The revision is global to etcd,
so versions grow with changes made outside the prefix too; they still only grow.

:meth:`EtcdRegistry.update` is a compare-and-swap on the key's ``mod_revision`` (or on its
absence, ``create_revision == 0``): etcd applies the write only if nobody wrote the key since it
was read, and otherwise the edit is re-applied to the newer entry. No lock is held, so a
crashed ``resmesh ctl`` leaves nothing behind to clean up.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from types import MappingProxyType
from typing import Any, Final, NoReturn

import httpx
import trio

from .base import Edit, Registry, RegistryUnavailable
from .state import ClusterEntry, Snapshot, entry_document, parse_entry

__all__ = ["EtcdRegistry"]

logger = logging.getLogger(__name__)

#: How many compare-and-swap rounds :meth:`EtcdRegistry.update` tries before giving up (it
#: also gives up at its deadline); each lost round means another writer's change went in.
MAX_ATTEMPTS: Final = 100

_STATUS: Final = "/v3/maintenance/status"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object) -> bytes:
    return base64.b64decode(text) if isinstance(text, str) else b""


def _prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes a range cover every key starting with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"  # every key
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _revision(message: dict[str, Any]) -> int:
    return int(message.get("header", {}).get("revision", 0))


class EtcdRegistry(Registry):
    """The registry kept in etcd under ``prefix``.

    Args:
        endpoints: etcd's client URLs (``http://127.0.0.1:2379``). When one cannot be connected
            to the next is tried, and the one that answered is tried first from then on.
        prefix: the key prefix of this fleet (``/resmesh``).
        timeout: how long one request (a read, an update, a liveness probe) may take.
    """

    kind = "etcd"

    def __init__(self, endpoints: Sequence[str], prefix: str, timeout: float) -> None:
        if not endpoints:
            raise ValueError("an etcd registry needs at least one endpoint")
        self.endpoints = tuple(url.rstrip("/") for url in endpoints)
        self.prefix = prefix.rstrip("/")
        self.timeout = timeout
        self._dir = f"{self.prefix}/clusters/".encode()
        self._current = 0  # index of the endpoint that answered last
        # Connecting gets a share of the deadline per endpoint, so that one unreachable
        # endpoint cannot use up a whole request's time before the others are tried.
        connect = timeout / len(self.endpoints)
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=connect))

    def describe(self) -> str:
        return f"etcd {','.join(self.endpoints)} prefix {self.prefix}"

    async def aclose(self) -> None:
        await self._client.aclose()

    # ------------------------------------------------------------------------------------

    async def read(self) -> Snapshot:
        end = _prefix_end(self._dir)
        answer = await self._post("/v3/kv/range", {"key": _b64(self._dir), "range_end": _b64(end)})
        clusters: dict[str, ClusterEntry] = {}
        errors: dict[str, str] = {}
        for kv in answer.get("kvs", ()):
            self._apply(kv, clusters, errors)
        return Snapshot(_revision(answer), MappingProxyType(clusters), MappingProxyType(errors))

    async def follow(self, after: Snapshot, changed: Callable[[Snapshot], None]) -> NoReturn:
        # The watch and the liveness probe run side by side; the first to fail (or ``changed``
        # raising) ends both, and its exception is raised as is, not in an ExceptionGroup.
        failures: list[BaseException] = []

        async def guarded(task: Callable[[], Awaitable[None]]) -> None:
            try:
                await task()
            except Exception as exc:
                failures.append(exc)
                nursery.cancel_scope.cancel()

        async def watch() -> None:
            await self._watch(after, changed)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(guarded, watch)
            nursery.start_soon(guarded, self._probe)
        if failures:
            raise failures[0]
        raise RegistryUnavailable(f"{self.describe()}: stopped following")  # not reached

    async def update(self, cluster: str, edit: Edit) -> tuple[int, ClusterEntry | None]:
        key = self._key(cluster)
        attempts = 0
        with trio.move_on_after(self.timeout) as deadline:
            while attempts < MAX_ATTEMPTS:
                attempts += 1
                done = await self._try_update(cluster, key, edit)
                if done is not None:
                    return done
        if deadline.cancelled_caught:
            raise RegistryUnavailable(
                f"{self.describe()}: update of cluster {cluster!r} not done in "
                f"{self.timeout:g}s ({attempts} attempts); its last write may or may not "
                "have been applied: read to see"
            )
        raise RegistryUnavailable(
            f"{self.describe()}: cluster {cluster!r} kept changing under the update "
            f"({attempts} attempts); try again"
        )

    # ------------------------------------------------------------------------------------

    def _key(self, cluster: str) -> bytes:
        return self._dir + cluster.encode()

    def _parse(self, name: str, value: bytes) -> ClusterEntry:
        """The entry stored as ``value``.

        Raises:
            ValueError: not JSON (:class:`~json.JSONDecodeError`), or not an entry
                (:class:`~resmesh.registry.state.RegistryDataError`).
        """
        try:
            doc = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"registry entry clusters.{name}: not valid JSON: {exc}") from None
        return parse_entry(name, doc)

    def _apply(
        self, kv: dict[str, Any], clusters: dict[str, ClusterEntry], errors: dict[str, str]
    ) -> None:
        """Put the entry stored in ``kv`` into ``clusters``, or into ``errors`` if it does not
        parse (a gateway keeps its last good state for that cluster)."""
        name = _unb64(kv.get("key"))[len(self._dir) :].decode(errors="replace")
        clusters.pop(name, None)
        errors.pop(name, None)
        try:
            clusters[name] = self._parse(name, _unb64(kv.get("value")))
        except ValueError as exc:
            errors[name] = str(exc)

    async def _try_update(
        self, cluster: str, key: bytes, edit: Edit
    ) -> tuple[int, ClusterEntry | None] | None:
        """One compare-and-swap round; ``None`` when another writer got in first."""
        answer = await self._post("/v3/kv/range", {"key": _b64(key)})
        kvs = answer.get("kvs") or []
        current: ClusterEntry | None = None
        corrupt = False
        if kvs:
            try:
                current = self._parse(cluster, _unb64(kvs[0].get("value")))
            except ValueError as exc:
                # Refusing would leave the operator no way to repair the entry with ctl:
                # the edit starts from nothing and its result replaces the bad value.
                logger.warning("%s: overwriting an unreadable entry: %s", self.describe(), exc)
                corrupt = True
        new = edit(current)
        if new == current and not corrupt:
            return _revision(answer), current
        if kvs:
            mod = str(kvs[0].get("mod_revision", "0"))
            compare = {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": mod}
        else:
            compare = {"key": _b64(key), "target": "CREATE", "result": "EQUAL"}
            compare["create_revision"] = "0"
        if new is None:
            write: dict[str, Any] = {"request_delete_range": {"key": _b64(key)}}
        else:
            value = json.dumps(entry_document(new)).encode()
            write = {"request_put": {"key": _b64(key), "value": _b64(value)}}
        result = await self._post("/v3/kv/txn", {"compare": [compare], "success": [write]})
        if not result.get("succeeded"):
            logger.debug("%s: %s changed under an update; retrying", self.describe(), cluster)
            return None
        return _revision(result), new

    async def _watch(self, after: Snapshot, changed: Callable[[Snapshot], None]) -> None:
        """Watch the prefix from the revision after ``after``; raise when the stream ends."""
        clusters = dict(after.clusters)
        errors = dict(after.errors)
        request = {
            "create_request": {
                "key": _b64(self._dir),
                "range_end": _b64(_prefix_end(self._dir)),
                "start_revision": str(after.version + 1),
            }
        }
        endpoint, response = await self._open_stream("/v3/watch", request)
        where = f"etcd {endpoint}: watch"
        try:
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                message = self._decode(where, line)
                result = message.get("result")
                if not isinstance(result, dict):
                    raise RegistryUnavailable(f"{where}: {message.get('error', message)}")
                if result.get("canceled"):
                    compacted = result.get("compact_revision")
                    reason = (
                        f"changes since version {after.version} were compacted "
                        f"(etcd keeps revisions from {compacted}); read again"
                        if compacted
                        else f"cancelled by etcd: {result.get('cancel_reason') or 'no reason'}"
                    )
                    raise RegistryUnavailable(f"{where}: {reason}")
                events = result.get("events")
                if not events:
                    continue  # the "created" answer, or a progress notification
                version = after.version
                for event in events:
                    kv = event.get("kv", {})
                    version = max(version, int(kv.get("mod_revision", 0)))
                    if event.get("type") == "DELETE":
                        name = _unb64(kv.get("key"))[len(self._dir) :].decode(errors="replace")
                        clusters.pop(name, None)
                        errors.pop(name, None)
                    else:
                        self._apply(kv, clusters, errors)
                # The version is the newest event's revision, not the header's: when etcd
                # catches a watcher up it may split the backlog over several answers that all
                # carry the current revision in their header.
                changed(
                    Snapshot(
                        version, MappingProxyType(dict(clusters)), MappingProxyType(dict(errors))
                    )
                )
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(f"{where}: stream broken: {exc!r}") from None
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(self.timeout):
                await response.aclose()
        raise RegistryUnavailable(f"{where}: etcd closed the stream")

    async def _probe(self) -> None:
        """Ask etcd for its status every ``max(timeout, 1s)``: a watch on a hung etcd (or a
        silently dropped connection) never ends by itself, a probe that gets no answer does."""
        while True:
            await trio.sleep(max(self.timeout, 1.0))
            await self._post(_STATUS, {}, only_current=True)

    # ------------------------------------------------------------------------------------

    def _order(self, only_current: bool) -> list[int]:
        """Endpoint indexes to try, the one that answered last first."""
        count = 1 if only_current else len(self.endpoints)
        return [(self._current + i) % len(self.endpoints) for i in range(count)]

    async def _post(
        self, path: str, body: dict[str, Any], *, only_current: bool = False
    ) -> dict[str, Any]:
        """POST ``body`` to ``path`` and return etcd's answer, within the timeout.

        Raises:
            RegistryUnavailable: no endpoint could be connected to, or the one connected to
                failed, answered with an error, or did not answer in time.
        """
        refused: list[str] = []
        endpoint = self.endpoints[self._current]
        with trio.move_on_after(self.timeout):
            for index in self._order(only_current):
                endpoint = self.endpoints[index]
                try:
                    response = await self._client.post(endpoint + path, json=body)
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    refused.append(f"{endpoint}: {exc or type(exc).__name__}")
                    continue
                except httpx.TimeoutException:
                    break
                except httpx.HTTPError as exc:
                    raise RegistryUnavailable(f"etcd {endpoint}: {path}: {exc!r}") from None
                self._use(index)
                if response.status_code != 200:
                    raise RegistryUnavailable(
                        f"etcd {endpoint}: {path}: HTTP {response.status_code}: "
                        f"{self._error_text(response.text)}"
                    )
                return self._decode(f"etcd {endpoint}: {path}", response.text)
            else:
                raise RegistryUnavailable(f"etcd: cannot connect: {'; '.join(refused)}")
        raise RegistryUnavailable(f"etcd {endpoint}: {path}: no answer in {self.timeout:g}s")

    async def _open_stream(self, path: str, body: dict[str, Any]) -> tuple[str, httpx.Response]:
        """Start a streaming POST (the watch), trying the endpoints as :meth:`_post` does; the
        stream itself has no read deadline (the liveness probe watches over it)."""
        refused: list[str] = []
        endpoint = self.endpoints[self._current]
        timeout = httpx.Timeout(self.timeout, connect=self._client.timeout.connect, read=None)
        with trio.move_on_after(self.timeout):
            for index in self._order(only_current=False):
                endpoint = self.endpoints[index]
                request = self._client.build_request(
                    "POST", endpoint + path, json=body, timeout=timeout
                )
                try:
                    response = await self._client.send(request, stream=True)
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    refused.append(f"{endpoint}: {exc or type(exc).__name__}")
                    continue
                except httpx.HTTPError as exc:
                    raise RegistryUnavailable(f"etcd {endpoint}: {path}: {exc!r}") from None
                self._use(index)
                if response.status_code != 200:
                    text = (await response.aread()).decode(errors="replace")
                    await response.aclose()
                    raise RegistryUnavailable(
                        f"etcd {endpoint}: {path}: HTTP {response.status_code}: "
                        f"{self._error_text(text)}"
                    )
                return endpoint, response
            else:
                raise RegistryUnavailable(f"etcd: cannot connect: {'; '.join(refused)}")
        raise RegistryUnavailable(f"etcd {endpoint}: {path}: no answer in {self.timeout:g}s")

    def _use(self, index: int) -> None:
        if index != self._current:
            logger.warning("%s: switched to %s", self.describe(), self.endpoints[index])
            self._current = index

    @staticmethod
    def _decode(where: str, text: str) -> dict[str, Any]:
        try:
            message = json.loads(text)
        except ValueError:
            raise RegistryUnavailable(f"{where}: not a JSON answer: {text[:200]!r}") from None
        if not isinstance(message, dict):
            raise RegistryUnavailable(f"{where}: unexpected answer: {text[:200]!r}")
        return message

    @staticmethod
    def _error_text(text: str) -> str:
        """The ``message`` of the gateway's error answer, else the start of the body."""
        try:
            message = json.loads(text)
        except ValueError:
            return text[:200]
        if isinstance(message, dict):
            return str(message.get("message") or message.get("error") or text[:200])
        return text[:200]
