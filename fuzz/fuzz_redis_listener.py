"""Fuzz the gateway's Redis listener over real sockets, against a real redis-server.

Every probe opens a fresh connection, sends random bytes or a mutated pipeline of valid
commands, half-closes, and reads until the gateway closes. The invariants (malformed
bytes on every port get a protocol error or a close, the gateway keeps serving others, memory
stays bounded):

* the gateway answers or closes within a deadline: never a hang;
* whatever it sends is well-formed RESP (an incomplete last frame is allowed: the peer closed);
* a well-behaved redis-py client keeps working, during and after;
* the gateway's resident memory stays bounded.

Run standalone (starts its own redis-server and gateway)::

    python fuzz/fuzz_redis_listener.py --seconds 60 [--seed N] [--workers 4] [--governed]

``--governed`` puts every policy in the way (two nodes, hedges, limits).

``tests/integration/test_redis_fuzz_smoke.py`` runs the same probes for a few seconds in the
test suite.
"""

from __future__ import annotations

import argparse
import random
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.servers import (
    Gateway,
    RedisServer,
    encode_command,
    redis_cluster_config,
    resp_frame_end,
    start_replica,
    vm_rss_kib,
)

#: A probe must be answered or closed within this long after the client's half-close.
PROBE_TIMEOUT = 10.0
#: Resident-memory growth allowed over a run (the gateway buffers up to its request limits).
RSS_SLACK_KIB = 96 * 1024

#: Well-formed commands the mutator starts from: every session mode the gateway tracks.
TEMPLATES: list[tuple[bytes, ...]] = [
    (b"PING",),
    (b"PING", b"hello"),
    (b"ECHO", b"e\r\n\x00"),
    (b"SET", b"fz:k", b"value"),
    (b"GET", b"fz:k"),
    (b"INCR", b"fz:n"),
    (b"APPEND", b"fz:k", b"more"),
    (b"DEL", b"fz:k", b"fz:n"),
    (b"LPUSH", b"fz:l", b"a", b"b"),
    (b"LRANGE", b"fz:l", b"0", b"-1"),
    (b"HSET", b"fz:h", b"f", b"v"),
    (b"HGETALL", b"fz:h"),
    (b"ZADD", b"fz:z", b"1.5", b"m"),
    (b"ZRANGE", b"fz:z", b"0", b"-1", b"WITHSCORES"),
    (b"SADD", b"fz:s", b"x"),
    (b"SMEMBERS", b"fz:s"),
    (b"XADD", b"fz:x", b"*", b"f", b"v"),
    (b"XRANGE", b"fz:x", b"-", b"+"),
    (b"EXPIRE", b"fz:k", b"100"),
    (b"SCAN", b"0", b"COUNT", b"10"),
    (b"EVAL", b"return {1, 'two', {3}}", b"0"),
    (b"MULTI",),
    (b"EXEC",),
    (b"DISCARD",),
    (b"WATCH", b"fz:k"),
    (b"UNWATCH",),
    (b"SUBSCRIBE", b"fz:ch"),
    (b"PSUBSCRIBE", b"fz:*"),
    (b"UNSUBSCRIBE",),
    (b"PUBLISH", b"fz:ch", b"msg"),
    (b"HELLO", b"3"),
    (b"HELLO", b"2"),
    (b"HELLO", b"3", b"SETNAME", b"fz"),
    (b"SELECT", b"1"),
    (b"SELECT", b"0"),
    (b"CLIENT", b"SETNAME", b"fuzzer"),
    (b"CLIENT", b"GETNAME"),
    (b"CLIENT", b"ID"),
    (b"CLIENT", b"INFO"),
    (b"AUTH", b"nobody", b"nothing"),
    (b"RESET",),
    (b"QUIT",),
    (b"BLPOP", b"fz:empty", b"0.05"),
    (b"BLPOP", b"fz:empty", b"0"),
    (b"XREAD", b"BLOCK", b"0", b"STREAMS", b"fz:x", b"$"),
    (b"WAIT", b"0", b"0"),
    (b"MONITOR",),
    (b"CONFIG", b"SET", b"maxmemory", b"1"),
    (b"CONFIG", b"GET", b"maxmemory"),
    (b"DEBUG", b"SLEEP", b"0"),
    (b"SHUTDOWN",),
    (b"CLIENT", b"KILL", b"ID", b"1"),
    (b"NOSUCHCOMMAND", b"x"),
]

#: Hand-picked edge cases of the framing itself.
NASTY: list[bytes] = [
    b"",
    b"\r\n",
    b"\r\n" * 1000,
    b"\x00" * 100,
    b"*-1\r\n",
    b"*0\r\n",
    b"*1\r\n$-1\r\n",
    b"*1\r\n$0\r\n\r\n",
    b"*2147483648\r\n",
    b"*1\r\n$9999999999999999999\r\n",
    b"*1\r\n$536870912\r\n",
    b"*1048577\r\n",
    b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nab",
    b"*1\r\n*1\r\n$4\r\nPING\r\n",
    b"*1\r\n>2147483648\r\n",  # hiredis would allocate the push's 16 GB up front
    b"*2\r\n$3\r\nGET\r\n%2147483648\r\n",
    b"*1\r\n:1\r\n",
    b"*1\r\n$4\r\nPINGxx",
    b"*1x\r\n",
    b"$4\r\nPING\r\n",
    b"*1\n$4\nPING\n",
    b"PING\n",
    b"PING",
    b'SET "unbalanced\r\n',
    b"SET 'a' \"b\\x41\"\r\nGET a\r\n",
    b"x" * 70_000,
    b"*1\r\n$" + b"9" * 64 + b"\r\n",
    b"*" + b"9" * 30 + b"\r\n",
    b"+OK\r\n-ERR\r\n:1\r\n",
]


def valid_pipeline(rnd: random.Random) -> bytes:
    return b"".join(encode_command(*rnd.choice(TEMPLATES)) for _ in range(rnd.randint(1, 12)))


def mutate(rnd: random.Random, data: bytes) -> bytes:
    """Apply a few byte-level mutations (AFL-style havoc, lightly)."""
    buf = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        kind = rnd.randrange(9)
        pos = rnd.randrange(len(buf) + 1)
        if kind == 0 and buf:  # flip a bit
            pos = min(pos, len(buf) - 1)
            buf[pos] ^= 1 << rnd.randrange(8)
        elif kind == 1:  # insert random bytes
            buf[pos:pos] = rnd.randbytes(rnd.randint(1, 16))
        elif kind == 2:  # delete a range
            del buf[pos : pos + rnd.randint(1, 16)]
        elif kind == 3:  # duplicate a range
            buf[pos:pos] = buf[pos : pos + rnd.randint(1, 64)]
        elif kind == 4:  # truncate
            del buf[pos:]
        elif kind == 5:  # an interesting number where a digit was
            digits = [i for i, b in enumerate(buf) if 0x30 <= b <= 0x39]
            if digits:
                i = rnd.choice(digits)
                buf[i : i + 1] = rnd.choice(
                    [b"-1", b"0", b"2147483648", b"99999999999", b"-2", b"x", b"", b"1e3"]
                )
        elif kind == 6:  # drop or change a line ending
            crlf = buf.find(b"\r\n", pos)
            if crlf >= 0:
                buf[crlf : crlf + 2] = rnd.choice([b"\n", b"\r", b"", b"\r\r\n", b"\n\r"])
        elif kind == 7:  # swap a type byte
            marks = [i for i, b in enumerate(buf) if b in b"*$"]
            if marks:
                buf[rnd.choice(marks)] = rnd.choice(b"*$+-:_,#%~>!=(|x")
        else:  # random bytes in place
            for i in range(pos, min(pos + rnd.randint(1, 8), len(buf))):
                buf[i] = rnd.randrange(256)
    return bytes(buf)


def random_payload(rnd: random.Random) -> bytes:
    """One probe's bytes: mostly mutated pipelines, some pure noise, some edge cases."""
    roll = rnd.random()
    if roll < 0.1:
        return rnd.choice(NASTY)
    if roll < 0.25:
        return rnd.randbytes(rnd.randint(0, 2048))
    if roll < 0.35:
        return valid_pipeline(rnd)
    return mutate(rnd, valid_pipeline(rnd))


class ProbeFailure(AssertionError):
    """The gateway broke an invariant on this payload."""

    def __init__(self, reason: str, payload: bytes) -> None:
        super().__init__(f"{reason}; payload ({len(payload)} bytes): {payload[:300]!r}")
        self.payload = payload


def probe(port: int, payload: bytes, timeout: float = PROBE_TIMEOUT) -> bytes:
    """Send ``payload`` on a fresh connection, half-close, read until the gateway closes.

    Returns:
        Everything the gateway sent.

    Raises:
        ProbeFailure: no close within ``timeout``, or bytes that are not RESP.
    """
    deadline = time.monotonic() + timeout
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # closed on us mid-send (a protocol error): still read what it said
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProbeFailure(
                    f"no close within {timeout}s (got {bytes(received[:200])!r})", payload
                )
            sock.settimeout(remaining)
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                break  # reset: a close
            if not data:
                break
            received += data
    check_resp(bytes(received), payload)
    return bytes(received)


def check_resp(output: bytes, payload: bytes) -> None:
    """``output`` is a run of complete RESP frames, except perhaps a cut-off last one."""
    pos = 0
    while pos < len(output):
        try:
            end = resp_frame_end(output, pos)
        except ValueError as exc:
            raise ProbeFailure(
                f"invalid RESP at offset {pos}: {exc}; output {output[:300]!r}", payload
            ) from None
        if end < 0:
            return
        pos = end


def healthy(port: int) -> None:
    """A well-behaved client must get right answers."""
    import redis

    client = redis.Redis(port=port, socket_timeout=5, socket_connect_timeout=5, protocol=3)
    try:
        token = random.randbytes(16)
        pipe = client.pipeline(transaction=False)  # reads its own write on any node
        pipe.set("fz:health", token)
        pipe.get("fz:health")
        assert pipe.execute() == [True, token]
        assert client.ping()
    finally:
        client.close()


@dataclass
class Stats:
    probes: int = 0
    bytes_sent: int = 0
    closed_silently: int = 0
    failures: list[str] = field(default_factory=list)


def fuzz(port: int, seconds: float, seed: int, workers: int) -> Stats:
    """Run probes from ``workers`` threads for ``seconds``; a failure stops everything."""
    stats = Stats()
    lock = threading.Lock()
    stop = threading.Event()
    end = time.monotonic() + seconds

    def worker(index: int) -> None:
        rnd = random.Random(seed * 1000 + index)
        while not stop.is_set() and time.monotonic() < end:
            payload = random_payload(rnd)
            try:
                output = probe(port, payload)
            except (ProbeFailure, OSError) as exc:
                with lock:
                    stats.failures.append(f"{type(exc).__name__}: {exc}")
                stop.set()
                return
            with lock:
                stats.probes += 1
                stats.bytes_sent += len(payload)
                stats.closed_silently += not output

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(workers)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        try:
            healthy(port)
        except Exception as exc:
            stats.failures.append(f"well-behaved client failed during fuzzing: {exc!r}")
            stop.set()
        for thread in threads:
            thread.join(0.5)
    for thread in threads:
        thread.join(PROBE_TIMEOUT + 5)
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--governed",
        action="store_true",
        help="a primary and a replica in two groups with every policy on (hedged reads with "
        "a 1 ms floor, failover, breakers, rate and concurrency limits)",
    )
    args = parser.parse_args(argv)

    node = RedisServer()
    servers = [node]
    gateway = None
    try:
        if args.governed:
            replica = start_replica(node)
            servers.append(replica)
            config = redis_cluster_config(
                "fuzz",
                {"dc-a": [node.port], "dc-b": [replica.port]},
                route={"dc-a": 50, "dc-b": 50},
                policy="cache",
                governance={
                    "hedge": {"floor": "1ms"},
                    "limit": {"rate": 1_000_000, "concurrency": 512},
                    "operations": {"GET": {"limit": {"rate": 100_000, "concurrency": 128}}},
                },
            )
        else:
            config = redis_cluster_config("fuzz", {"dc-a": [node.port]})
        gateway = Gateway(config, Path(tempfile.mkdtemp(prefix="resmesh-fuzz-")))
        healthy(gateway.port)
        rss_before = vm_rss_kib(gateway.proc.pid)
        print(f"seed={args.seed} gateway pid={gateway.proc.pid} rss={rss_before} KiB", flush=True)
        stats = fuzz(gateway.port, args.seconds, args.seed, args.workers)
        if gateway.proc.poll() is not None:
            stats.failures.append(f"the gateway exited with {gateway.proc.returncode}")
        else:
            try:
                healthy(gateway.port)
            except Exception as exc:
                stats.failures.append(f"well-behaved client failed after fuzzing: {exc!r}")
            rss_after = vm_rss_kib(gateway.proc.pid)
            print(f"rss after={rss_after} KiB (+{rss_after - rss_before})", flush=True)
            if rss_after - rss_before > RSS_SLACK_KIB:
                stats.failures.append(f"RSS grew by {rss_after - rss_before} KiB")
        print(
            f"probes={stats.probes} bytes={stats.bytes_sent} "
            f"closed-without-reply={stats.closed_silently}",
            flush=True,
        )
        code = gateway.terminate()
        gateway = None
        if code != 0:
            stats.failures.append(f"gateway exit code {code} on SIGTERM")
        for failure in stats.failures:
            print("FAILURE:", failure, flush=True)
        return 1 if stats.failures else 0
    finally:
        if gateway is not None:
            gateway.proc.kill()
        for server in servers:
            server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
