"""Long-running hypothesis fuzz target for the RESP codecs (replies, framing, requests).

Run: ``python fuzz/fuzz_resp_codec.py --examples 20000`` (add ``--seed N`` to reproduce a run).

Each property is the suite's, with many more examples and bigger inputs:

- replies: random and *mutated* valid streams (bytes flipped, inserted, deleted, type bytes
  swapped), cut at random points, through the pure and the hiredis parser and the framer. Only
  values or :class:`RemoteProtocolError` may come out, buffers stay under their caps, every value
  re-encodes, where the pure parser reads a value the framer ends it at the same byte, and the
  compiled reply scanner takes only what the Python framer takes, with the same ends;
- valid streams: round trip, split-invariance, framing == parser boundaries;
- requests: random and mutated pipelines (multibulk and inline) through ``RequestParser``
  (the compiled framer) and the pure parser: the same commands and errors from both.

The seed corpus is ``protocols/resp-vectors.json``: every golden vector is mutated too.
Exit status 1 on the first failure, with hypothesis' minimal example printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from resmesh.protocols._errors import RemoteProtocolError  # noqa: E402
from resmesh.protocols.resp import writer  # noqa: E402
from resmesh.protocols.resp.framing import (  # noqa: E402
    NEED_DATA,
    ReplyFramer,
    ReplyLimits,
    scan_reply,
)
from resmesh.protocols.resp.parser import HiredisReplyParser, ReplyParser  # noqa: E402
from resmesh.protocols.resp.requests import (  # noqa: E402
    RequestLimits,
    RequestParser,
    _PureRequestParser,
    encode_command,
)
from tests.protocols.resp.resp_support import (  # noqa: E402
    VECTORS,
    check_compiled_agrees,
    collapse_top,
    cut_lists,
    mutated,
    resp2_values,
    resp3_values,
    resp_alphabet_garbage,
    split,
    wire,
)

LIMITS = ReplyLimits(
    max_bulk_len=512, max_aggregate_len=64, max_depth=12, max_line_len=256, max_buffer=4096
)
REQUEST_LIMITS = RequestLimits(max_bulk_len=512, max_multibulk_len=64, max_buffer=4096)

SEEDS = [wire(v["wire"]) for v in VECTORS["replies"]] + [
    wire(v["wire"]) for v in VECTORS["reply_errors"]
]
REQUEST_SEEDS = [wire(v["wire"]) for v in VECTORS["requests"]]


def drain_replies(parser: Any, chunks: list[bytes]) -> list[Any]:
    out: list[Any] = []
    for chunk in chunks:
        parser.feed(chunk)
        out.extend(parser.values())
        assert parser.buffered <= LIMITS.max_buffer
    return out


def check_reply_garbage(stream: bytes, cuts: list[int]) -> None:
    chunks = split(stream, cuts)
    for parser in (ReplyParser(LIMITS), HiredisReplyParser(LIMITS)):
        try:
            for value in drain_replies(parser, chunks):
                writer.encode(value)
        except RemoteProtocolError as exc:
            assert exc.reply_hint.startswith("ERR Protocol error")
    framer = ReplyFramer(LIMITS)
    try:
        for chunk in chunks:
            framer.feed(chunk)
            while framer.next_reply() is not NEED_DATA:
                pass
            assert framer.buffer.pending <= LIMITS.max_buffer
    except RemoteProtocolError as exc:
        assert exc.reply_hint.startswith("ERR Protocol error")
    # The compiled scanner takes only what the Python framer takes, ending each reply there.
    check_compiled_agrees(stream, LIMITS, resp3=True)
    check_compiled_agrees(stream, LIMITS, resp3=False)
    # Where the parser reads the first value, framing ends it at the same byte.
    parser = ReplyParser(LIMITS)
    try:
        parser.feed(stream)
        first = parser.next_value()
    except RemoteProtocolError:
        return
    if first is not NEED_DATA:
        end = scan_reply(
            stream,
            0,
            LIMITS.max_depth,
            max_bulk_len=LIMITS.max_bulk_len,
            max_aggregate_len=LIMITS.max_aggregate_len,
            max_line_len=LIMITS.max_line_len,
        )
        assert end == len(stream) - parser.buffered, (stream, end)


def request_outcome(parser: Any, chunks: list[bytes]) -> tuple[list[list[bytes]], str | None]:
    got: list[list[bytes]] = []
    try:
        for chunk in chunks:
            parser.feed(chunk)
            for command in parser.commands():
                assert command.args
                assert len(command.args) <= REQUEST_LIMITS.max_multibulk_len
                raw = RequestParser()
                raw.feed(command.raw)
                assert [c.args for c in raw.commands()] == [command.args]
                got.append(command.args)
            assert parser.buffered <= REQUEST_LIMITS.max_buffer
        got.extend(c.args for c in parser.commands())
    except RemoteProtocolError as exc:
        assert exc.reply_hint.startswith("ERR Protocol error: ")
        return got, exc.reply_hint
    return got, None


def check_requests(stream: bytes, cuts: list[int], authenticated: bool) -> None:
    chunks = split(stream, cuts)
    # The compiled framer (authenticated connections) and the pure parser agree exactly: the
    # framer stops where it is unsure and the pure parser reads on (see test_requests.py).
    fast = request_outcome(RequestParser(REQUEST_LIMITS, authenticated=authenticated), chunks)
    pure = request_outcome(_PureRequestParser(REQUEST_LIMITS, authenticated=authenticated), chunks)
    assert fast == pure, (stream, cuts)


@st.composite
def reply_streams(draw: st.DrawFn) -> bytes:
    source = draw(st.sampled_from(["values", "seed", "alphabet"]))
    if source == "values":
        base = writer.encode_many(draw(st.lists(resp3_values, min_size=1, max_size=6)))
    elif source == "seed":
        base = b"".join(draw(st.lists(st.sampled_from(SEEDS), min_size=1, max_size=4)))
    else:
        return draw(resp_alphabet_garbage)
    return draw(mutated(base)) if draw(st.booleans()) else base


@st.composite
def request_streams(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        commands = draw(st.lists(st.lists(st.binary(max_size=20), min_size=1, max_size=6)))
        base = b"".join(encode_command(c) for c in commands)
    else:
        base = b"".join(draw(st.lists(st.sampled_from(REQUEST_SEEDS), min_size=1, max_size=4)))
    return draw(mutated(base)) if base and draw(st.booleans()) else base


def build(examples: int) -> list[Any]:
    config = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )

    @config
    @given(reply_streams(), cut_lists)
    def fuzz_replies(stream: bytes, cuts: list[int]) -> None:
        check_reply_garbage(stream, cuts)

    @config
    @given(st.lists(resp3_values, min_size=1, max_size=8), cut_lists)
    def fuzz_valid_replies(values: list[Any], cuts: list[int]) -> None:
        encoded = [writer.encode(v) for v in values]
        stream = b"".join(encoded)
        assert drain_replies(ReplyParser(), split(stream, cuts)) == values
        framer = ReplyFramer()
        framed: list[bytes] = []
        for chunk in split(stream, cuts):
            framer.feed(chunk)
            while (reply := framer.next_reply()) is not NEED_DATA:
                framed.append(reply)
        assert framed == encoded

    @config
    @given(st.lists(resp2_values, min_size=1, max_size=8), cut_lists)
    def fuzz_hiredis_agrees(values: list[Any], cuts: list[int]) -> None:
        stream = writer.encode_many(values)
        got = drain_replies(HiredisReplyParser(), split(stream, cuts))
        assert got == [collapse_top(v) for v in values]

    @config
    @given(request_streams(), cut_lists, st.booleans())
    def fuzz_requests(stream: bytes, cuts: list[int], authenticated: bool) -> None:
        check_requests(stream, cuts, authenticated)

    @config
    @given(
        st.lists(st.lists(st.binary(max_size=20), min_size=1, max_size=6), min_size=1),
        cut_lists,
    )
    def fuzz_request_split_invariance(commands: list[list[bytes]], cuts: list[int]) -> None:
        stream = b"".join(encode_command(c) for c in commands)
        for chunks in ([stream], split(stream, cuts)):
            parser = RequestParser()
            got: list[list[bytes]] = []
            for chunk in chunks:
                parser.feed(chunk)
                got.extend(c.args for c in parser.commands())
            assert got == commands

    return [
        fuzz_replies,
        fuzz_valid_replies,
        fuzz_hiredis_agrees,
        fuzz_requests,
        fuzz_request_split_invariance,
    ]


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--examples", type=int, default=2000, help="examples per property")
    args.add_argument("--seed", type=int, default=None, help="hypothesis seed, to reproduce")
    options = args.parse_args()
    failed = False
    for target in build(options.examples):
        if options.seed is not None:
            target = seed(options.seed)(target)
        started = time.perf_counter()
        try:
            target()
        except Exception as exc:  # report every target, then fail
            failed = True
            sys.stderr.write(f"FAIL {target.__name__}: {type(exc).__name__}: {exc}\n")
            continue
        elapsed = time.perf_counter() - started
        sys.stdout.write(f"ok   {target.__name__}: {options.examples} examples, {elapsed:.1f} s\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
