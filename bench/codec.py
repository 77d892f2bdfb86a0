"""Micro-benchmarks of the RESP codecs: µs per operation, in-process, no sockets.

Run: ``python bench/codec.py`` (``--quick`` for a shorter run).

What it answers:

- ``RequestParser`` (the compiled framer) and the pure parser on a 16-command GET pipeline
  and on one GET: the frontend's cost per command;
- ``scan_reply`` / ``ReplyFramer`` on GET/SET replies: the backend's cost to frame a reply it
  forwards unchanged (the gateway's hot path);
- pure ``ReplyParser`` against ``HiredisReplyParser`` on typical replies, and ``encode``: where
  hiredis wins (large arrays) and where it does not (single small replies, which it must still
  frame in Python to enforce the limits).

Each figure is the best of several ``timeit`` repeats (the least disturbed run), divided by the
number of operations per run.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resmesh.protocols.resp import writer
from resmesh.protocols.resp.framing import NEED_DATA, ReplyFramer, scan_reply
from resmesh.protocols.resp.parser import HiredisReplyParser, ReplyParser
from resmesh.protocols.resp.requests import RequestParser, _PureRequestParser, encode_command
from resmesh.protocols.resp.values import Array, BulkString, SimpleString

VALUE_16 = b"0123456789abcdef"
GET_REPLY = writer.bulk(VALUE_16)
GET_REPLY_1K = writer.bulk(b"x" * 1024)
SET_REPLY = writer.OK
NIL_REPLY = writer.NULL_BULK_REPLY
INT_REPLY = writer.integer(1)
ERR_REPLY = writer.error("ERR unknown command 'FOO', with args beginning with: ")
MGET_10 = writer.array([writer.bulk(VALUE_16)] * 10)
LRANGE_100 = writer.array([writer.bulk(VALUE_16)] * 100)
LRANGE_1000 = writer.array([writer.bulk(VALUE_16)] * 1000)
HGETALL_RESP3 = writer.map_(
    [(writer.bulk(b"field%d" % i), writer.bulk(VALUE_16)) for i in range(10)], resp3=True
)


def per_op(func: Callable[[], object], ops: int, quick: bool) -> float:
    """Best-of-N µs per operation for ``func`` doing ``ops`` operations per call."""
    timer = timeit.Timer(func)
    number, _ = timer.autorange()
    number = max(1, number // (4 if quick else 1))
    best = min(timer.repeat(repeat=3 if quick else 7, number=number))
    return best / number / ops * 1e6


def bench_requests(quick: bool) -> list[tuple[str, float]]:
    pipeline = b"".join(encode_command([b"GET", b"key:%d" % i]) for i in range(16))
    single = encode_command([b"GET", b"key:1"])
    rows = []
    for engine, make in (("RequestParser", RequestParser), ("pure parser", _PureRequestParser)):
        parser = make()

        def parse(parser: RequestParser | _PureRequestParser = parser) -> None:
            parser.feed(pipeline)
            assert len(parser.commands()) == 16

        def parse_one(parser: RequestParser | _PureRequestParser = parser) -> None:
            parser.feed(single)
            parser.commands()

        rows += [
            (f"{engine}, 16 x GET pipeline (per command)", per_op(parse, 16, quick)),
            (f"{engine}, one GET", per_op(parse_one, 1, quick)),
        ]
    return rows


def bench_scan(quick: bool) -> list[tuple[str, float]]:
    rows = []
    for name, reply in [
        ("GET 16 B  $16", GET_REPLY),
        ("GET 1 KiB $1024", GET_REPLY_1K),
        ("SET       +OK", SET_REPLY),
        ("GET miss  $-1", NIL_REPLY),
        ("INCR      :1", INT_REPLY),
        ("error     -ERR", ERR_REPLY),
        ("MGET x10  *10", MGET_10),
    ]:

        def scan(buf: bytes = reply) -> int:
            return scan_reply(buf, 0)

        rows.append((f"scan_reply, {name}", per_op(scan, 1, quick)))
    pipeline = GET_REPLY * 16

    def scan_pipeline() -> None:
        pos = 0
        for _ in range(16):
            pos = scan_reply(pipeline, pos)

    rows.append(
        ("scan_reply, 16 x GET 16 B in one buffer (per reply)", per_op(scan_pipeline, 16, quick))
    )

    def framer_one() -> None:
        framer = ReplyFramer()
        framer.feed(GET_REPLY)
        framer.next_reply()

    def framer_pipeline() -> None:
        framer = ReplyFramer()
        framer.feed(pipeline)
        while framer.next_reply() is not NEED_DATA:
            pass

    rows.append(("ReplyFramer, one GET reply (feed + next_reply)", per_op(framer_one, 1, quick)))
    rows.append(("ReplyFramer, 16 x GET pipeline (per reply)", per_op(framer_pipeline, 16, quick)))
    return rows


def bench_parsers(quick: bool) -> list[tuple[str, float, float]]:
    rows = []
    for name, reply in [
        ("+OK", SET_REPLY),
        ("$16 GET", GET_REPLY),
        ("$-1 miss", NIL_REPLY),
        (":1", INT_REPLY),
        ("*10 MGET", MGET_10),
        ("*100 LRANGE", LRANGE_100),
        ("*1000 LRANGE", LRANGE_1000),
    ]:
        times = []
        for cls in (ReplyParser, HiredisReplyParser):

            def run(cls: type = cls, data: bytes = reply) -> None:
                parser = cls()
                parser.feed(data)
                parser.next_value()

            times.append(per_op(run, 1, quick))
        rows.append((name, times[0], times[1]))
    pipeline = GET_REPLY * 16
    times = []
    for cls in (ReplyParser, HiredisReplyParser):

        def run_pipeline(cls: type = cls) -> None:
            parser = cls()
            parser.feed(pipeline)
            parser.values()

        times.append(per_op(run_pipeline, 16, quick))
    rows.append(("16 x $16 pipeline (per reply)", times[0], times[1]))
    return rows


def bench_encode(quick: bool) -> list[tuple[str, float]]:
    ok = SimpleString(b"OK")
    get = BulkString(VALUE_16)
    mget = Array(tuple([get] * 10))
    return [
        ("encode(SimpleString OK)", per_op(lambda: writer.encode(ok), 1, quick)),
        ("encode(BulkString 16 B)", per_op(lambda: writer.encode(get), 1, quick)),
        ("encode(Array of 10 bulks)", per_op(lambda: writer.encode(mget), 1, quick)),
        ("writer.bulk(16 B)", per_op(lambda: writer.bulk(VALUE_16), 1, quick)),
        ("writer.error(...)", per_op(lambda: writer.error("ERR limited"), 1, quick)),
    ]


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--quick", action="store_true", help="fewer repeats")
    quick = options.parse_args().quick
    out = sys.stdout.write
    out(f"Python {sys.version.split()[0]}; µs per operation, best of repeats\n\n")
    out("-- requests (frontend) --\n")
    for name, micros in bench_requests(quick):
        out(f"  {name:58s} {micros:8.3f} µs\n")
    out("\n-- framing (backend hot path) --\n")
    for name, micros in bench_scan(quick):
        out(f"  {name:58s} {micros:8.3f} µs\n")
    out("\n-- reply parsers: pure vs hiredis (incl. parser creation) --\n")
    out(f"  {'reply':30s} {'pure':>10s} {'hiredis':>10s} {'pure/hiredis':>14s}\n")
    for name, pure, fast in bench_parsers(quick):
        out(f"  {name:30s} {pure:8.3f}µs {fast:8.3f}µs {pure / fast:13.2f}x\n")
    out("\n-- writer --\n")
    for name, micros in bench_encode(quick):
        out(f"  {name:58s} {micros:8.3f} µs\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
