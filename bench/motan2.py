"""Benchmark the resmesh Motan2 agent against calling the service directly, in the same run.

**What it measures.** Closed-loop Motan2 load, ``resmesh.demo.EchoService.hello("world")``
(group ``resmesh-demo``, Simple serialization), sent to the example echo service
(``examples/motan2_echo.py``) directly and through the agent's client side (``motan2.client``),
in alternating runs (direct, agent, direct, agent, ... ``--repeat`` times). For each shape
(connections x requests in flight per connection; default ``50x1`` and ``16x32``) it prints
calls/s, p50 and p99 latency, the agent/direct throughput ratio, and CPU per call: the
gateway's (user+sys from ``/proc/PID/stat``, its whole process tree, over the measured window,
divided by the calls completed in it), the echo service's and the load generator's. With
``--two-hops`` a third path is measured in the same rounds: client -> client-side agent ->
server-side agent (``motan2.server``, exporting the service) -> service, both sides in one
gateway, as Weibo Mesh deploys them.

**How.** The benchmark starts the echo service and a gateway per agent path on free ports
(never 9981/9982/8100, which a user may be running), waits until each answers a call, and runs
every measurement in a separate load-generator process (``bench/motan2.py --generate``, so its
CPU is measured on its own and it shares no GIL with anything): plain non-blocking sockets on
one ``epoll``, TCP_NODELAY, the request encoded once with only its 8-byte request id patched
per call, replies framed from the sizes in their 21 header bytes, each connection's new
requests sent in one write. Each reply immediately triggers the next request on its
connection. It warms up (``--warmup``, 2 s), measures a window (``--seconds``, 10 s) and reads
the CPU counters of every process at the window's edges itself, keeps the load on a little
longer, then stops sending and waits for every call in flight (an unanswered call is
reported: a stall). It checks that each connection's first reply decodes to "hello world" and
counts exception responses (there must be none: they are printed, and the exit code is 1).
A run in which other processes used more than ``--max-noise`` of the box is retried.

**Why.** The agent's job is the motan-go agent's (https://github.com/weibocom/motan-go, the
Weibo Mesh agent): the reference to beat, measured with it on this machine under the same kind
of load, is 60-82 µs of agent CPU per call and 0.34-0.44x the direct throughput. Those anchors
are printed next to the results. Prefer the CPU per call when comparing versions: throughput
on a 2-core box that also runs the service and the load generator moves with everything else.

Run it (see bench/README.md, "Motan2 agent")::

    python bench/motan2.py --repeat 3
    python bench/motan2.py --two-hops --repeat 1
    python bench/motan2.py --shapes 16x32 --workers 2 --profile
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from _common import (
    ROOT,
    BenchError,
    Gateway,
    busiest_others,
    cpu_seconds,
    free_port,
    git_revision,
    interrupt_on_signals,
    kill_if_running,
    note,
    print_profile,
    process_cpu_snapshot,
    process_tree,
    quietest,
    spawn,
    start_profiler,
    stop,
    system_cpu_seconds,
    wait_until,
)

from resmesh.protocols.motan2 import simple
from resmesh.protocols.motan2.frames import (
    META_EXCEPTION,
    Frame,
    FrameDecoder,
    Serialization,
    decode_meta,
    encode_frame,
    request,
)

DEFAULT_OUT: Final = ROOT / "bench" / "out"
ECHO: Final = ROOT / "examples" / "motan2_echo.py"

SERVICE: Final = "resmesh.demo.EchoService"
GROUP: Final = "resmesh-demo"
METHOD: Final = "hello"
ARGUMENT: Final = "world"
EXPECTED: Final = "hello world"

#: The motan-go agent on this machine under the same load: agent CPU per call, x direct.
MOTAN_GO_US: Final = (60.0, 82.0)
MOTAN_GO_RATIO: Final = (0.34, 0.44)

DIRECT: Final = "direct"
AGENT: Final = "agent"
TWO_HOPS: Final = "two-hops"

"""Other load below this many CPU-seconds never causes a retry: /proc counts in 10 ms ticks."""

# The wire (protocols/motan2.md §1): magic 2, flags 1, version|status 1, serialization 1,
# request id 8, meta size 4 | meta | body size 4 | body.
_HEAD: Final = struct.Struct(">HBBBQI")
_U32: Final = struct.Struct(">I")
_ID: Final = struct.Struct(">Q")
_ID_AT: Final = 5
_MAGIC: Final = 0xF1F1
_FLAG_HEARTBEAT: Final = 0x10
_STATUS_EXCEPTION: Final = 1


def hello_frame(request_id: int) -> bytes:
    """The benchmark's call, encoded: hello("world") to the echo service, Simple body."""
    return encode_frame(
        request(
            request_id,
            SERVICE,
            METHOD,
            simple.encode(ARGUMENT),
            group=GROUP,
            source="resmesh-bench",
            serialization=Serialization.SIMPLE,
        )
    )


# --- the load generator (its own process: --generate) ----------------------------------------


class _Conn:
    """One generator connection: its socket, unparsed input, calls in flight, unsent output."""

    __slots__ = ("checked", "fd", "inbox", "next_id", "outbox", "sent", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.inbox = bytearray()
        self.outbox = bytearray()
        #: request id -> perf_counter() when its batch was written.
        self.sent: dict[int, float] = {}
        self.next_id = 1
        self.checked = False


def _cpu_of(pids: Sequence[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def generate(argv: Sequence[str]) -> int:
    """Run one measurement and print its figures as one JSON object on stdout."""
    parser = argparse.ArgumentParser(prog="bench/motan2.py --generate")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--depth", type=int, required=True)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--tail", type=float, default=0.5, help="load after the window")
    parser.add_argument("--drain", type=float, default=5.0, help="wait for calls in flight")
    parser.add_argument(
        "--watch",
        action="append",
        default=[],
        metavar="NAME=PID[,PID...]",
        help="processes whose CPU to read at the window's edges",
    )
    args = parser.parse_args(argv)
    watched: dict[str, list[int]] = {}
    for spec in args.watch:
        name, _, pids = spec.partition("=")
        watched[name] = [int(pid) for pid in pids.split(",") if pid]
    ours = {os.getpid(), os.getppid(), *(pid for pids in watched.values() for pid in pids)}

    template = hello_frame(0)
    head, tail = template[:_ID_AT], template[_ID_AT + 8 :]
    pack_id = _ID.pack
    unpack_head = _HEAD.unpack_from
    unpack_u32 = _U32.unpack_from
    clock = time.perf_counter

    epoll = select.epoll()
    conns: dict[int, _Conn] = {}
    for _ in range(args.connections):
        sock = socket.create_connection(("127.0.0.1", args.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conn = _Conn(sock)
        conns[conn.fd] = conn
        epoll.register(conn.fd, select.EPOLLIN)

    latencies: list[float] = []
    record = latencies.append
    calls = 0
    exceptions = 0
    exception_samples: list[str] = []
    unknown_ids = 0
    check_failures: list[str] = []
    checked = 0
    connection_errors: list[str] = []
    measuring = False
    issuing = True

    def send(conn: _Conn, count: int, now: float) -> None:
        first = conn.next_id
        conn.next_id = first + count
        ids = range(first, first + count)
        payload = b"".join([head + pack_id(i) + tail for i in ids])
        conn.sent.update(dict.fromkeys(ids, now))
        if conn.outbox:
            conn.outbox += payload
            return
        try:
            written = conn.sock.send(payload)
        except BlockingIOError:
            written = 0
        if written < len(payload):
            conn.outbox += payload[written:]
            epoll.modify(conn.fd, select.EPOLLIN | select.EPOLLOUT)

    def flush(conn: _Conn) -> None:
        try:
            written = conn.sock.send(conn.outbox)
        except BlockingIOError:
            return
        del conn.outbox[:written]
        if not conn.outbox:
            epoll.modify(conn.fd, select.EPOLLIN)

    def drop(conn: _Conn, why: str) -> None:
        connection_errors.append(f"connection {conn.fd}: {why}")
        epoll.unregister(conn.fd)
        conn.sock.close()
        del conns[conn.fd]

    def check(conn: _Conn, frame: bytes | bytearray, meta_size: int) -> None:
        nonlocal checked
        conn.checked = True
        checked += 1
        try:
            value = simple.decode_one(bytes(frame[21 + meta_size :]))
        except Exception as exc:  # any failure to decode is a failed check
            value = f"<undecodable: {exc}>"
        if value != EXPECTED and len(check_failures) < 5:
            check_failures.append(f"first reply on a connection was {value!r}, not {EXPECTED!r}")

    def snapshot(opening: bool) -> dict[str, Any]:
        """Every counter at one edge of the window. The scan of /proc (for the noise) stays
        outside the window, so the generator's own CPU does not include it."""
        procs = process_cpu_snapshot() if opening else {}
        if opening:
            busy, irq = system_cpu_seconds()
            cpu = {name: _cpu_of(pids) for name, pids in watched.items()}
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self_ticks = cpu_seconds(os.getpid())
        at = clock()
        if not opening:
            cpu = {name: _cpu_of(pids) for name, pids in watched.items()}
            busy, irq = system_cpu_seconds()
            procs = process_cpu_snapshot()
        return {
            "t": at,
            "procs": procs,
            "busy": busy,
            "irq": irq,
            "cpu": cpu,
            "self_ticks": self_ticks,
            "self": usage.ru_utime + usage.ru_stime,
        }

    for conn in list(conns.values()):
        send(conn, args.depth, clock())

    start_at = clock() + args.warmup
    end_at = start_at + args.seconds
    phases = [start_at, end_at, end_at + args.tail]
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    drain_deadline = 0.0
    poll = epoll.poll
    while conns:
        now = clock()
        if phases and now >= phases[0]:
            phases.pop(0)
            if len(phases) == 2:
                before = snapshot(opening=True)
                measuring = True
            elif len(phases) == 1:
                measuring = False
                after = snapshot(opening=False)
            else:
                issuing = False
                drain_deadline = now + args.drain
        if not issuing and (now >= drain_deadline or not any(c.sent for c in conns.values())):
            break
        deadline = phases[0] if phases else drain_deadline
        events = poll(max(0.0, deadline - now))
        now = clock()
        for fd, mask in events:
            found = conns.get(fd)
            if found is None:
                continue
            conn = found
            if mask & select.EPOLLOUT:
                try:
                    flush(conn)
                except OSError as exc:
                    drop(conn, f"send failed: {exc}")
                    continue
            if not mask & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                continue
            try:
                data = conn.sock.recv(262144)
            except BlockingIOError:
                continue
            except OSError as exc:
                drop(conn, f"recv failed: {exc}")
                continue
            if not data:
                drop(conn, f"closed by the peer with {len(conn.sent)} calls in flight")
                continue
            inbox = conn.inbox
            inbox += data
            size = len(inbox)
            pos = 0
            done = 0
            sent = conn.sent
            garbled = False
            while size - pos >= 21:
                magic, flags, status, _, request_id, meta_size = unpack_head(inbox, pos)
                if magic != _MAGIC:
                    garbled = True
                    break
                body_at = pos + 17 + meta_size
                if body_at + 4 > size:
                    break
                end = body_at + 4 + unpack_u32(inbox, body_at)[0]
                if end > size:
                    break
                if flags & _FLAG_HEARTBEAT:
                    pos = end
                    continue
                sent_at = sent.pop(request_id, None)
                if sent_at is None:
                    unknown_ids += 1
                elif measuring:
                    record(now - sent_at)
                    calls += 1
                if status & 7 == _STATUS_EXCEPTION:
                    exceptions += 1
                    if len(exception_samples) < 5:
                        meta = decode_meta(bytes(inbox[pos + 17 : body_at]))
                        exception_samples.append(meta.get(META_EXCEPTION, "(no M_e)"))
                elif not conn.checked:
                    check(conn, inbox[pos:end], meta_size)
                done += 1
                pos = end
            if garbled:
                drop(conn, f"not a Motan2 frame at offset {pos}: {bytes(inbox[pos : pos + 8])!r}")
                continue
            del inbox[:pos]
            if done and issuing:
                send(conn, done, now)

    unanswered = sum(len(c.sent) for c in conns.values())
    for conn in conns.values():
        conn.sock.close()
    epoll.close()
    if not after:
        raise SystemExit("the generator lost every connection before the window ended")

    latencies.sort()
    window = after["t"] - before["t"]

    def percentile(share: float) -> float:
        if not latencies:
            return 0.0
        return 1000 * latencies[min(len(latencies) - 1, int(share * len(latencies)))]

    others, _ = busiest_others(before["procs"], after["procs"], ours)
    watched_cpu = {name: after["cpu"][name] - before["cpu"][name] for name in watched}
    self_ticks = after["self_ticks"] - before["self_ticks"]
    result = {
        "calls": calls,
        "window_s": window,
        "rate": calls / window if window > 0 else 0.0,
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "mean_ms": 1000 * statistics.fmean(latencies) if latencies else 0.0,
        "max_ms": 1000 * latencies[-1] if latencies else 0.0,
        "exceptions": exceptions,
        "exception_samples": exception_samples,
        "unknown_ids": unknown_ids,
        "unanswered": unanswered,
        "connection_errors": connection_errors[:5],
        "checked": checked,
        "check_failures": check_failures,
        "cpu": watched_cpu,
        "generator_cpu_s": after["self"] - before["self"],
        "busy_s": after["busy"] - before["busy"],
        "irq_s": after["irq"] - before["irq"],
        "other_cpu_s": (after["busy"] - before["busy"]) - sum(watched_cpu.values()) - self_ticks,
        "other_top": others,
    }
    print(json.dumps(result))
    return 0


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    connections: int
    depth: int

    def __str__(self) -> str:
        return f"{self.connections}x{self.depth}"


@dataclass
class Run:
    path: str
    shape: str
    calls: int
    window_s: float
    rate: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    exceptions: int
    exception_samples: list[str]
    unknown_ids: int
    unanswered: int
    connection_errors: list[str]
    checked: int
    check_failures: list[str]
    agent_cpu_s: float | None
    service_cpu_s: float
    generator_cpu_s: float
    other_cpu_s: float
    busy_cpu_s: float
    irq_cpu_s: float
    other_top: list[tuple[str, float]]
    gateway_rss_kb: int | None = None
    gateway_fds: int | None = None
    profiled: bool = False
    discarded: bool = False

    @property
    def noise(self) -> float:
        """Share of the machine's CPU that other processes used during the window."""
        return max(0.0, self.other_cpu_s) / (self.window_s * (os.cpu_count() or 1))

    @property
    def busy(self) -> float:
        """Share of the machine's CPU in use during the window (everything, ours too)."""
        return self.busy_cpu_s / (self.window_s * (os.cpu_count() or 1))

    def per_call(self, cpu_s: float | None) -> float | None:
        return None if cpu_s is None or not self.calls else 1e6 * cpu_s / self.calls

    @property
    def agent_us(self) -> float | None:
        return self.per_call(self.agent_cpu_s)

    @property
    def service_us(self) -> float:
        return self.per_call(self.service_cpu_s) or 0.0

    @property
    def generator_us(self) -> float:
        return self.per_call(self.generator_cpu_s) or 0.0

    @property
    def failures(self) -> list[str]:
        """What went wrong in the run: each an anomaly to report."""
        out = [f"{self.exceptions} exception responses: {s}" for s in self.exception_samples[:1]]
        out += self.check_failures + self.connection_errors
        if self.unknown_ids:
            out.append(f"{self.unknown_ids} replies with a request id never sent")
        if self.unanswered:
            out.append(f"{self.unanswered} calls never answered (stall)")
        return out


@dataclass
class Row:
    """The medians of the repeats for one (shape, path)."""

    shape: str
    path: str
    repeats: int
    rate: float
    ratio: float | None
    p50_ms: float
    p99_ms: float
    agent_us: float | None
    service_us: float
    generator_us: float
    max_noise: float
    busy: float
    exceptions: int
    rates: list[float] = field(default_factory=list)
    agent_us_all: list[float] = field(default_factory=list)
    profile: dict[str, Any] | None = None


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def summarize(shape: str, path: str, runs: list[Run], direct_rate: float | None) -> Row:
    rate = median([r.rate for r in runs])
    agent = [us for r in runs if (us := r.agent_us) is not None]
    return Row(
        shape=shape,
        path=path,
        repeats=len(runs),
        rate=rate,
        ratio=rate / direct_rate if direct_rate else None,
        p50_ms=median([r.p50_ms for r in runs]),
        p99_ms=median([r.p99_ms for r in runs]),
        agent_us=median(agent) if agent else None,
        service_us=median([r.service_us for r in runs]),
        generator_us=median([r.generator_us for r in runs]),
        max_noise=max(r.noise for r in runs),
        busy=median([r.busy for r in runs]),
        exceptions=sum(r.exceptions for r in runs),
        rates=[r.rate for r in runs],
        agent_us_all=agent,
    )


# --- arguments -------------------------------------------------------------------------------


def _shapes(text: str) -> list[Shape]:
    """``50x1,16x32``: connections x requests in flight on each."""
    shapes = []
    for part in text.split(","):
        connections, sep, depth = part.strip().lower().partition("x")
        try:
            shape = Shape(int(connections), int(depth))
        except ValueError:
            shape = Shape(0, 0)
        if not sep or shape.connections < 1 or shape.depth < 1:
            raise argparse.ArgumentTypeError(
                f"shapes are CONNECTIONSxIN_FLIGHT, comma-separated (e.g. 50x1,16x32), not {text!r}"
            )
        shapes.append(shape)
    return shapes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Closed-loop Motan2 calls to the echo service directly and through the "
        "resmesh agent, interleaved; prints calls/s, p50/p99, agent/direct and CPU per call.",
    )
    parser.add_argument(
        "--shapes",
        type=_shapes,
        default=_shapes("50x1,16x32"),
        metavar="CxN,...",
        help="connections x calls in flight per connection (default: 50x1,16x32)",
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="measured window per run (default: 10)"
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="load before each window (default: 2)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs per path, interleaved (direct, agent, ...); medians are reported "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="gateway.workers (default: %(default)s)"
    )
    parser.add_argument(
        "--two-hops",
        action="store_true",
        help="also measure client -> client-side agent -> server-side agent -> service "
        "(one gateway, both sides), as a third path in the same rounds",
    )
    parser.add_argument(
        "--max-noise",
        type=float,
        default=0.10,
        metavar="SHARE",
        help="retry a run when other processes used more than this share of the machine's CPU "
        "during its window (default: %(default)s); a negative value keeps every run",
    )
    parser.add_argument(
        "--retries", type=int, default=2, help="retries per run for --max-noise (default: 2)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after each shape's runs, one more run per agent path under py-spy record "
        "(raw collapsed stacks in --out; the top functions are printed)",
    )
    parser.add_argument(
        "--profile-rate", type=int, default=200, help="py-spy samples per second (default: 200)"
    )
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="save results")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="where configs, logs and profiles go (default: bench/out)",
    )
    return parser


# --- processes -------------------------------------------------------------------------------


def call_hello(port: int, timeout: float = 2.0) -> object:
    """One blocking call (setup and checks only): the decoded result, or the exception text."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(hello_frame(7))
        decoder = FrameDecoder()
        while True:
            frame = decoder.next_frame()
            if isinstance(frame, Frame):
                if frame.request_id != 7:
                    raise BenchError(f"reply has request id {frame.request_id}, not 7")
                if frame.is_exception:
                    return f"exception: {frame.meta.get(META_EXCEPTION)}"
                return simple.decode_one(frame.body)
            data = sock.recv(65536)
            if not data:
                raise OSError("connection closed before the reply")
            decoder.feed(data)


def answers(port: int) -> bool:
    try:
        return call_hello(port) == EXPECTED
    except (OSError, BenchError):
        return False


def status_value(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class Bench:
    def __init__(self, args: argparse.Namespace, stack: ExitStack) -> None:
        self.args = args
        self.stack = stack
        self.out: Path = args.out
        self.service: subprocess.Popen[bytes] | None = None
        self.service_port = 0
        self.ports: dict[str, int] = {}
        self.gateways: dict[str, Gateway] = {}
        self.discarded: list[Run] = []
        self.generators: list[subprocess.Popen[bytes]] = []

    def start_service(self) -> None:
        self.service_port = free_port()
        log_path = self.out / f"motan2-echo-{self.service_port}.log"
        log = self.stack.enter_context(log_path.open("wb"))
        argv = [sys.executable, str(ECHO), "--port", str(self.service_port)]
        proc = spawn(argv, stdout=log, cwd=ROOT)
        self.service = proc
        self.stack.callback(self._stop_service)

        def ready() -> bool:
            if proc.poll() is not None:
                raise BenchError(f"the echo service exited with code {proc.returncode}")
            return answers(self.service_port)

        wait_until(ready, 20, f"the echo service to answer on port {self.service_port}")

    def _stop_service(self) -> None:
        proc, self.service = self.service, None
        if proc is not None:
            code = stop(proc, signal.SIGTERM)
            if code != 0:
                note(f"ERROR: the echo service exited with code {code} after SIGTERM")

    def gateway_config(self, path: str, port: int) -> dict[str, Any]:
        agent: dict[str, Any] = {"client": f"127.0.0.1:{port}"}
        node = f"127.0.0.1:{self.service_port}"
        if path == TWO_HOPS:
            server = free_port()
            agent["server"] = f"127.0.0.1:{server}"
            agent["export"] = {SERVICE: node}
            node = f"127.0.0.1:{server}"  # the cluster's node: this gateway's own server side
        return {
            "gateway": {
                "app": "bench",
                "workers": self.args.workers,
                "admin": None,
                "drain_timeout": "5s",
            },
            "motan2": agent,
            "clusters": {
                "echo": {
                    "protocol": "motan2",
                    "groups": {"dc-a": [node]},
                    "motan2": {"service": SERVICE, "group": GROUP},
                    "governance": {
                        "operations": {"echo": {"idempotent": True}, "hello": {"idempotent": True}}
                    },
                }
            },
        }

    @property
    def exits(self) -> dict[str, int]:
        return {path: g.exit for path, g in self.gateways.items() if g.exit is not None}

    def start_gateway(self, path: str) -> None:
        port = free_port()
        config_path = self.out / f"motan2-{path}-{port}.yaml"
        gateway = Gateway(self.stack, config_path, port, name=path)
        self.gateways[path] = gateway
        self.ports[path] = port
        gateway.start(self.gateway_config(path, port), answers, "answer a call")
        processes = len(process_tree(gateway.pid))
        if processes < self.args.workers:
            note(f"note: workers={self.args.workers} but the gateway runs {processes} process(es)")

    def stop_gateway(self, path: str) -> None:
        self.gateways[path].stop()

    def gateway_pids(self, path: str) -> list[int]:
        return process_tree(self.gateways[path].pid)

    def run_once(self, path: str, shape: Shape, *, profile: Path | None = None) -> Run:
        assert self.service is not None
        port = self.service_port if path == DIRECT else self.ports[path]
        argv = [
            sys.executable, str(Path(__file__).resolve()), "--generate",
            "--port", str(port),
            "--connections", str(shape.connections),
            "--depth", str(shape.depth),
            "--warmup", str(self.args.warmup),
            "--seconds", str(self.args.seconds),
            "--watch", f"service={self.service.pid}",
        ]  # fmt: skip
        for name in self.gateways:
            argv += ["--watch", f"{name}=" + ",".join(map(str, self.gateway_pids(name)))]
        spy = None
        if profile is not None:
            spy = self.start_profiler(self.gateways[path].pid, profile)
        proc = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        self.generators.append(proc)
        try:
            out, err = proc.communicate(timeout=self.args.warmup + self.args.seconds + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise BenchError(
                f"the load generator against {path} ({shape}) did not finish"
            ) from None
        finally:
            self.generators.remove(proc)
            if spy is not None:
                stop(spy, signal.SIGINT, timeout=60)  # py-spy writes its output on SIGINT
        if proc.returncode != 0:
            raise BenchError(
                f"the load generator against {path} ({shape}) failed "
                f"(exit {proc.returncode}): {err.decode(errors='replace')[-2000:]}"
                + (f"\ngateway log:\n{self.gateways[path].log_tail()}" if path != DIRECT else "")
            )
        result = json.loads(out)
        cpu = result["cpu"]
        run = Run(
            path=path,
            shape=str(shape),
            calls=result["calls"],
            window_s=result["window_s"],
            rate=result["rate"],
            p50_ms=result["p50_ms"],
            p99_ms=result["p99_ms"],
            mean_ms=result["mean_ms"],
            max_ms=result["max_ms"],
            exceptions=result["exceptions"],
            exception_samples=result["exception_samples"],
            unknown_ids=result["unknown_ids"],
            unanswered=result["unanswered"],
            connection_errors=result["connection_errors"],
            checked=result["checked"],
            check_failures=result["check_failures"],
            agent_cpu_s=cpu.get(path) if path != DIRECT else None,
            service_cpu_s=cpu["service"],
            generator_cpu_s=result["generator_cpu_s"],
            other_cpu_s=result["other_cpu_s"],
            busy_cpu_s=result["busy_s"],
            irq_cpu_s=result["irq_s"],
            other_top=[(str(name), float(cpu)) for name, cpu in result["other_top"]],
            profiled=profile is not None,
        )
        if path != DIRECT:
            pids = self.gateway_pids(path)
            rss = [status_value(pid, "VmRSS") for pid in pids]
            fds = [fd_count(pid) for pid in pids]
            run.gateway_rss_kb = sum(v for v in rss if v is not None)
            run.gateway_fds = sum(v for v in fds if v is not None)
        agent = "" if run.agent_us is None else f"  agent {run.agent_us:.1f}"
        memory = ""
        if run.gateway_rss_kb is not None:
            memory = f"  gateway RSS {run.gateway_rss_kb / 1024:.1f} MiB, {run.gateway_fds} fds"
        note(
            f"  {shape!s:>6} {path:8} {fmt_rate(run.rate):>7} calls/s  "
            f"p50/p99 {run.p50_ms:.2f}/{run.p99_ms:.2f} ms  µs/call:{agent}  "
            f"service {run.service_us:.1f}  generator {run.generator_us:.1f}  "
            f"(box busy {100 * run.busy:.0f}%, noise {100 * run.noise:.0f}%"
            f"{', profiled' if profile else ''}){memory}"
        )
        for failure in run.failures:
            note(f"    ANOMALY: {failure}")
        if run.noise > 0.05:
            busiest = ", ".join(f"{name} {cpu:.1f}s" for name, cpu in run.other_top if cpu >= 0.05)
            note(f"    other load: {run.other_cpu_s:.1f} cpu-s: {busiest or 'no live process'}")
        return run

    def measured(self, path: str, shape: Shape) -> Run:
        """``run_once``, retried while other processes load the box more than --max-noise."""
        best, discarded = quietest(
            lambda: self.run_once(path, shape), self.args.max_noise, self.args.retries
        )
        self.discarded += discarded
        return best

    def start_profiler(self, pid: int, path: Path) -> subprocess.Popen[bytes]:
        return start_profiler(
            pid,
            path,
            self.stack,
            rate=self.args.profile_rate,
            subprocesses=self.args.workers > 1,
        )

    def kill_generators(self) -> None:
        for proc in list(self.generators):
            kill_if_running(proc)


# --- reporting -------------------------------------------------------------------------------


def fmt_rate(value: float) -> str:
    return f"{value / 1000:.1f}k"


def _opt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[Row]) -> None:
    header = (
        "shape",
        "path",
        "calls/s",
        "p50 ms",
        "p99 ms",
        "x direct",
        "agent µs/call",
        "service µs/call",
        "generator µs/call",
        "box busy",
        "noise",
        "exceptions",
    )
    lines = [
        (
            row.shape,
            row.path,
            fmt_rate(row.rate),
            f"{row.p50_ms:.2f}",
            f"{row.p99_ms:.2f}",
            "-" if row.path == DIRECT or row.ratio is None else f"{row.ratio:.2f}x",
            _opt(row.agent_us),
            f"{row.service_us:.1f}",
            f"{row.generator_us:.1f}",
            f"{100 * row.busy:.0f}%",
            f"{100 * row.max_noise:.0f}%",
            str(row.exceptions),
        )
        for row in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for line in lines:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))
    print()
    low_us, high_us = MOTAN_GO_US
    low_ratio, high_ratio = MOTAN_GO_RATIO
    print(
        f"reference, the motan-go agent on this machine: {low_us:.0f}-{high_us:.0f} µs of agent "
        f"CPU per call, {low_ratio:.2f}-{high_ratio:.2f}x direct"
    )
    for row in rows:
        if row.path == DIRECT or row.agent_us is None or row.ratio is None:
            continue
        print(
            f"  {row.shape:>6} {row.path:8} {row.agent_us:5.1f} µs/call "
            f"({row.agent_us / high_us:.2f}-{row.agent_us / low_us:.2f}x motan-go's), "
            f"{row.ratio:.2f}x direct (motan-go {low_ratio:.2f}-{high_ratio:.2f}x)"
        )


# --- main ------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    if args.repeat < 1 or args.seconds <= 0 or args.warmup < 0 or args.workers < 1:
        raise BenchError("--repeat and --workers must be at least 1, --seconds above 0")
    args.out.mkdir(parents=True, exist_ok=True)
    gitignore = args.out / ".gitignore"
    if args.out == DEFAULT_OUT and not gitignore.exists():
        gitignore.write_text("*\n")
    paths = [DIRECT, AGENT, *((TWO_HOPS,) if args.two_hops else ())]

    rows: list[Row] = []
    runs: list[Run] = []
    failures: list[str] = []
    revision = git_revision()
    with ExitStack() as stack:
        bench = Bench(args, stack)
        stack.callback(bench.kill_generators)
        bench.start_service()
        for path in paths[1:]:
            bench.start_gateway(path)
        note(
            f"resmesh {revision}; echo service on :{bench.service_port}, "
            + ", ".join(f"{p} gateway on :{bench.ports[p]}" for p in paths[1:])
            + f" (workers={args.workers}); {os.cpu_count()} CPUs; "
            f"{args.warmup:g} s warm-up + {args.seconds:g} s measured per run"
        )
        for shape in args.shapes:
            by_path: dict[str, list[Run]] = {path: [] for path in paths}
            for _ in range(args.repeat):
                for path in paths:
                    by_path[path].append(bench.measured(path, shape))
            direct_rate = median([r.rate for r in by_path[DIRECT]])
            for path in paths:
                runs += by_path[path]
                rows.append(summarize(str(shape), path, by_path[path], direct_rate))
                failures += [
                    f"{shape} {path}: {failure}" for r in by_path[path] for failure in r.failures
                ]
            if args.profile:
                for path in paths[1:]:
                    target = args.out / f"motan2-profile-{bench.ports[path]}-{path}-{shape}.txt"
                    profiled = bench.run_once(path, shape, profile=target)
                    runs.append(profiled)
                    row = next(r for r in rows if r.shape == str(shape) and r.path == path)
                    row.profile = {"rate": profiled.rate, "file": str(target)}
        for path in paths[1:]:
            bench.stop_gateway(path)

    print()
    print_table(rows)
    exceptions = sum(r.exceptions for r in runs)
    print(f"exception responses: {exceptions}")
    if failures:
        print("anomalies:")
        for failure in dict.fromkeys(failures):
            print(f"  {failure}")
    if args.profile:
        for row in rows:
            if row.profile is not None:
                print()
                label = f"{row.path} {row.shape} ({fmt_rate(row.profile['rate'])} calls/s)"
                row.profile.update(print_profile(label, Path(row.profile["file"])))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "git": revision,
            "cpus": os.cpu_count(),
            "args": {
                k: (str(v) if isinstance(v, Path) else [str(s) for s in v] if k == "shapes" else v)
                for k, v in vars(args).items()
            },
            "gateway_exit": bench.exits,
            "rows": [asdict(row) for row in rows],
            "runs": [
                {**asdict(run), "agent_us": run.agent_us, "noise": run.noise}
                for run in [*runs, *bench.discarded]
            ],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        note(f"results saved to {args.json}")
    clean_exit = all(code == 0 for code in bench.exits.values())
    return 0 if clean_exit and not failures else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--generate"]:
        return generate(argv[1:])
    args = build_parser().parse_args(argv)
    interrupt_on_signals()
    try:
        return run(args)
    except BenchError as error:
        note(f"bench/motan2.py: {error}")
        return 1
    except KeyboardInterrupt:
        note("interrupted: stopped the gateways and the echo service")
        return 130


if __name__ == "__main__":
    sys.exit(main())
