"""A periodic push of the gateway's counters to Graphite, in its plaintext protocol.

Why: Weibo Mesh (the motan-go agent) reports its call metrics to Graphite, and the dashboards
and alerts built on it expect its key layout; resmesh pushes the same shape of keys so a
resmesh gateway shows up next to the agents it replaces or sits beside.

Protocol: Graphite's plaintext protocol, one ``<key> <value> <unix timestamp>\\n`` line per
value (https://graphite.readthedocs.io/en/latest/feeding-carbon.html), to carbon's line
receiver (port 2003) over TCP (one connection kept open, reconnected after an error with a
bounded exponential backoff; every connect and send has a deadline) or over UDP (whole lines
packed into datagrams of at most :data:`UDP_DATAGRAM_LIMIT` bytes; fire and forget).

Keys, like motan-go's ``<role>.<app>.<group>.byhost.<ip>.<service>.<method>.<metric>``:

* ``role``: ``resmesh-redis``, ``resmesh-mysql`` or ``resmesh-motan2``: ``resmesh-`` and the
  cluster's protocol (:data:`ROLES`; ``resmesh-unknown`` when the document has none);
* ``app``: the gateway's app name (``gateway.app``);
* ``group``: the node's group (data center) from the document's ``nodes`` (``unknown`` when
  the node is not listed there any more); ``none`` for calls refused before a node was chosen;
* ``ip``: the node's address with dots and the port's colon as ``_`` (``10_0_0_1_6379``);
  ``none`` for refused calls;
* ``service``: the cluster's name; ``method``: the operation (``GET``, ``COM_QUERY``, ...).

Every component is sanitized to ``[A-Za-z0-9_-]`` (anything else becomes ``_``, so a dot in a
name cannot add a level); a configured ``prefix`` comes first (``prod.resmesh-redis...``).

Metrics per (cluster, node, operation), for the interval since the previous push (the
documents' counters are cumulative; a series whose counts went down, a restarted process or a
node that left and came back, counts whole): ``count`` (calls ended, whatever their outcome),
``error_count`` (app, upstream and local errors), ``rejected_count`` (refused: by the engine,
or by a switch, a limit, no node or a passed deadline before it), ``qps`` (``count`` per
second), ``avg_time``, ``p50_time``, ``p90_time``, ``p99_time``, ``p999_time`` (milliseconds,
from the interval's histogram: bucket counts of the two documents subtracted; omitted when no
latency was recorded in the interval, as for calls refused before a node), ``bytes_in`` and
``bytes_out``. A series with no call in the interval sends nothing.

Per cluster, one gauge: ``<role>.<app>.cluster.byhost.<local-ip>.<service>.clients``: the
client connections open now, where ``local-ip`` is this host's address (the one its packets
to carbon leave from), sanitized like a node's.
"""

from __future__ import annotations

import logging
import math
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import trio

from ..config.metrics import GraphiteConfig, GraphiteTransport
from ..policies.window import histogram_from_counts
from .metrics import series_difference

__all__ = [
    "ROLES",
    "UDP_DATAGRAM_LIMIT",
    "GraphiteReporter",
    "graphite_lines",
    "host_component",
    "interval_series",
    "pack_datagrams",
    "sanitize",
]

logger = logging.getLogger(__name__)

#: The key's first component by cluster protocol.
ROLES: Final = {"redis": "resmesh-redis", "mysql": "resmesh-mysql", "motan2": "resmesh-motan2"}

#: A UDP datagram's payload at most, in bytes: whole lines under a typical 1500-byte MTU.
UDP_DATAGRAM_LIMIT: Final = 1400

#: Outcomes counted as errors (``error_count``).
_ERRORS: Final = ("app_error", "upstream_error", "local_error")

#: Percentile metrics: name and q (0..100).
_PERCENTILES: Final = (
    ("p50_time", 50.0),
    ("p90_time", 90.0),
    ("p99_time", 99.0),
    ("p999_time", 99.9),
)

#: Backoff between TCP connection attempts after a failure: doubles from the first to the cap.
_BACKOFF_FIRST: Final = 1.0
_BACKOFF_CAP: Final = 30.0
#: The deadline of a connect or a send, at most (and never longer than the interval).
_SEND_TIMEOUT: Final = 5.0

_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]")


def sanitize(component: str) -> str:
    """``component`` with every character outside ``[A-Za-z0-9_-]`` replaced by ``_``
    (``""`` becomes ``_``: a key has no empty level)."""
    return _UNSAFE.sub("_", component) or "_"


def host_component(address: str) -> str:
    """A node address as one key component: ``10.0.0.1:6379`` → ``10_0_0_1_6379``."""
    return sanitize(address)


def _role(protocol: str) -> str:
    return ROLES.get(protocol) or f"resmesh-{sanitize(protocol or 'unknown')}"


def _key(*components: str) -> str:
    return ".".join(sanitize(component) for component in components)


def _number(value: float) -> str:
    """A value as Graphite reads it: integers bare, others with 3 decimals at most."""
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return "0"
    rounded = round(value, 3)
    return str(int(rounded)) if rounded == int(rounded) else repr(rounded)


def interval_series(
    previous: dict[str, Any] | None, current: dict[str, Any]
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """Cluster → node address (``""``: none) → operation → that series' counts in the
    interval between two metrics documents (:func:`~resmesh.observe.metrics.
    series_difference`), with the cluster's ``refusals`` (calls refused before a node) folded
    into the ``""`` node as ``rejected`` outcomes. ``previous`` ``None``: everything in
    ``current`` counts."""
    before_clusters = (previous or {}).get("clusters", {})
    result: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for name, cluster in current.get("clusters", {}).items():
        before = before_clusters.get(name, {})
        before_series = before.get("series", {})
        nodes: dict[str, dict[str, dict[str, Any]]] = {}
        for address, table in cluster.get("series", {}).items():
            earlier = before_series.get(address, {})
            nodes[address] = {
                op: series_difference(earlier.get(op), document) for op, document in table.items()
            }
        before_refusals = before.get("refusals", {})
        for op, by_policy in cluster.get("refusals", {}).items():
            now_total = sum(by_policy.values())
            then_total = sum(before_refusals.get(op, {}).values())
            refused = now_total - then_total if now_total >= then_total else now_total
            if refused <= 0:
                continue
            table = nodes.setdefault("", {})
            series = table.get(op)
            if series is None:
                series = table[op] = {
                    "outcomes": {},
                    "bytes_in": 0,
                    "bytes_out": 0,
                    "latency": {"count": 0, "sum_us": 0, "max_us": 0, "buckets": {}},
                }
            series["outcomes"]["rejected"] = series["outcomes"].get("rejected", 0) + refused
        result[name] = nodes
    return result


def graphite_lines(
    previous: dict[str, Any] | None,
    current: dict[str, Any],
    interval: float,
    timestamp: int,
    *,
    prefix: str = "",
    local_ip: str = "127.0.0.1",
) -> list[str]:
    """The plaintext lines (each ending in ``\\n``) for the interval between two metrics
    documents (``previous`` ``None``: the first push, everything counted so far), ``interval``
    seconds long (for ``qps``), stamped ``timestamp`` (unix seconds). See the module's
    docstring for the keys; ``prefix`` goes first when not empty, ``local_ip`` names this
    host in the cluster gauges."""
    app = str(current.get("gateway", {}).get("app") or "unknown")
    head = (prefix,) if prefix else ()
    stamp = f" {int(timestamp)}\n"
    seconds = interval if interval > 0 else 1.0
    lines: list[str] = []
    clusters = current.get("clusters", {})
    for name, nodes in interval_series(previous, current).items():
        cluster = clusters[name]
        role = _role(str(cluster.get("protocol") or ""))
        known = cluster.get("nodes", {})
        for address in sorted(nodes):
            if address:
                group = str(known.get(address, {}).get("group") or "unknown")
                host = host_component(address)
            else:
                group, host = "none", "none"
            for op in sorted(nodes[address]):
                series = nodes[address][op]
                outcomes = series["outcomes"]
                count = sum(outcomes.values())
                if count <= 0:
                    continue
                base = _key(*head, role, app, group, "byhost", host, name, op)
                values: list[tuple[str, float]] = [
                    ("count", count),
                    ("error_count", sum(outcomes.get(e, 0) for e in _ERRORS)),
                    ("rejected_count", outcomes.get("rejected", 0)),
                    ("qps", count / seconds),
                ]
                latency = series["latency"]
                if latency["count"] > 0:
                    histogram = histogram_from_counts(
                        latency["buckets"], latency["count"], latency["sum_us"], latency["max_us"]
                    )
                    values.append(("avg_time", latency["sum_us"] / latency["count"] / 1000.0))
                    values.extend(
                        (metric, histogram.percentile(q) * 1000.0) for metric, q in _PERCENTILES
                    )
                values.append(("bytes_in", series["bytes_in"]))
                values.append(("bytes_out", series["bytes_out"]))
                lines.extend(f"{base}.{metric} {_number(value)}{stamp}" for metric, value in values)
        clients = cluster.get("clients")
        if isinstance(clients, int):
            key = _key(*head, role, app, "cluster", "byhost", local_ip, name, "clients")
            lines.append(f"{key} {clients}{stamp}")
    return lines


def pack_datagrams(lines: Iterable[str], limit: int = UDP_DATAGRAM_LIMIT) -> list[bytes]:
    """Whole lines packed into payloads of at most ``limit`` bytes (a line longer than the
    limit goes alone: carbon's UDP receiver takes up to 64 KiB, and a cut line is garbage)."""
    datagrams: list[bytes] = []
    current = bytearray()
    for line in lines:
        data = line.encode()
        if current and len(current) + len(data) > limit:
            datagrams.append(bytes(current))
            current = bytearray()
        current += data
    if current:
        datagrams.append(bytes(current))
    return datagrams


class GraphiteReporter:
    """Pushes the metrics document ``source`` returns to carbon every ``config.interval``
    seconds, until cancelled.

    A push that fails (carbon down, a send past its deadline) drops its lines (nothing is
    queued), counts in :attr:`failures`, and is logged once per outage (and its end once);
    it never raises. Over TCP, a failed connection is retried after a backoff doubling from
    1 s to 30 s; the pushes in between are dropped and counted as failures too.

    Attributes:
        failures: pushes that did not reach carbon (and documents ``source`` failed to give).
        sent_lines: lines handed to the network.
    """

    def __init__(
        self, config: GraphiteConfig, source: Callable[[], Awaitable[dict[str, Any]]]
    ) -> None:
        self.config = config
        self.source = source
        self.failures = 0
        self.sent_lines = 0
        self._previous: dict[str, Any] | None = None
        self._stream: trio.SocketStream | None = None
        self._udp: trio.socket.SocketType | None = None
        self._local_ip: str | None = None
        self._failing = False
        self._backoff = _BACKOFF_FIRST
        self._retry_at = -math.inf
        self._timeout = min(_SEND_TIMEOUT, config.interval)

    async def run(self) -> None:
        """Push every interval until cancelled; never raises otherwise."""
        interval = self.config.interval
        try:
            last = trio.current_time()
            next_push = last + interval
            while True:
                await trio.sleep_until(next_push)
                now = trio.current_time()
                next_push += interval
                if next_push <= now:  # fell behind (a slow source or send): skip, not burst
                    next_push = now + interval
                await self.push_once(now - last)
                last = now
        finally:
            await self._close()

    async def push_once(self, interval: float | None = None) -> None:
        """One push: the current document against the previous one, ``interval`` seconds
        apart (default: the configured interval)."""
        try:
            current = await self.source()
        except Exception as error:  # a source that failed once must not end the reporting
            self.failures += 1
            logger.warning("graphite: reading the metrics failed: %r", error)
            return
        if self._local_ip is None:
            self._local_ip = await self._find_local_ip()
        lines = graphite_lines(
            self._previous,
            current,
            self.config.interval if interval is None else interval,
            int(time.time()),
            prefix=self.config.prefix,
            local_ip=self._local_ip,
        )
        self._previous = current
        if not lines:
            return
        try:
            if self.config.transport is GraphiteTransport.UDP:
                await self._send_udp(lines)
            else:
                await self._send_tcp(lines)
        except (
            OSError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            trio.TooSlowError,
        ) as error:
            self._failed(error)
        else:
            self.sent_lines += len(lines)
            if self._failing:
                self._failing = False
                logger.info("graphite: pushing to %s again", self.config.address)

    def _failed(self, error: BaseException) -> None:
        self.failures += 1
        if not self._failing:
            self._failing = True
            logger.warning(
                "graphite: pushing to %s over %s failed, dropping its lines until it works "
                "again: %r",
                self.config.address,
                self.config.transport,
                error,
            )

    async def _find_local_ip(self) -> str:
        """This host's address towards carbon (a UDP socket's connect sends nothing)."""
        address = self.config.address
        try:
            with trio.fail_after(self._timeout):
                info = await trio.socket.getaddrinfo(
                    address.host, address.port, type=socket.SOCK_DGRAM
                )
                family, kind, proto, _, target = info[0]
                with trio.socket.socket(family, kind, proto) as sock:
                    await sock.connect(target)
                    return str(sock.getsockname()[0])
        except (OSError, trio.TooSlowError, IndexError):
            return socket.gethostname()

    async def _send_tcp(self, lines: list[str]) -> None:
        now = trio.current_time()
        if self._stream is None:
            if now < self._retry_at:
                raise trio.BrokenResourceError("backing off after a failed connection")
            address = self.config.address
            try:
                with trio.fail_after(self._timeout):
                    self._stream = await trio.open_tcp_stream(address.host, address.port)
            except (OSError, trio.TooSlowError):
                self._retry_at = now + self._backoff
                self._backoff = min(self._backoff * 2, _BACKOFF_CAP)
                raise
        payload = "".join(lines).encode()
        try:
            with trio.fail_after(self._timeout):
                await self._stream.send_all(payload)
        except BaseException:
            # A send cut short leaves part of a line on the wire: this connection is done.
            await self._drop_stream()
            raise
        self._backoff = _BACKOFF_FIRST

    async def _send_udp(self, lines: list[str]) -> None:
        if self._udp is None:
            address = self.config.address
            with trio.fail_after(self._timeout):
                info = await trio.socket.getaddrinfo(
                    address.host, address.port, type=socket.SOCK_DGRAM
                )
                family, kind, proto, _, target = info[0]
                sock = trio.socket.socket(family, kind, proto)
                try:
                    await sock.connect(target)
                except BaseException:
                    sock.close()
                    raise
                self._udp = sock
        try:
            with trio.fail_after(self._timeout):
                for datagram in pack_datagrams(lines):
                    await self._udp.send(datagram)
        except BaseException:
            # A connected UDP socket reports an earlier ICMP "port unreachable" as an error
            # on a later send; a fresh socket next time.
            self._udp.close()
            self._udp = None
            raise

    async def _drop_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async def _close(self) -> None:
        await self._drop_stream()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
