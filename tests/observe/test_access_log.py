"""The access log: one line per call, sampled, bounded, and never in the way of a call.

Fast tier: no servers. Every wait has a deadline; nothing sleeps to synchronize.
"""

from __future__ import annotations

import collections
import io
import json
import random
import re
import threading
from pathlib import Path

import pytest
import trio

from resmesh.call import Call, Operation, Outcome
from resmesh.config.metrics import AccessLogConfig
from resmesh.observe.access_log import AccessLog, AccessLogError
from resmesh.observe.metrics import OUTCOME_NAMES

KEYS = [
    "time",
    "cluster",
    "operation",
    "node",
    "outcome",
    "latency_ms",
    "bytes_out",
    "bytes_in",
    "request_id",
]
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
DEADLINE = 10.0

_OPS: dict[str, Operation] = {}


def calls(*names: str) -> list[Call]:
    made = []
    for name in names:
        op = _OPS.get(name)
        if op is None:
            op = _OPS[name] = Operation(name, write=False, idempotent=True)
        call = Call()
        call.op = op
        call.batch = 0
        made.append(call)
    return made


def read_lines(path: Path) -> list[dict[str, object]]:
    text = path.read_text(encoding="ascii")
    assert text == "" or text.endswith("\n")
    documents = [json.loads(line) for line in text.splitlines()]
    for document in documents:
        assert list(document) == KEYS
    return documents


def never() -> float:
    raise AssertionError("no random draw expected")


class GatedSink:
    """A sink whose ``write`` waits until released (the writer thread is stuck in it)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()
        self.text: list[str] = []

    def write(self, text: str) -> int:
        self.entered.set()
        assert self.released.wait(DEADLINE), "the test never released the sink"
        self.text.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def lines(self) -> list[str]:
        return "".join(self.text).splitlines()


# ----------------------------------------------------------------------------------------


async def test_exactly_one_line_per_call_from_many_tasks(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(AccessLogConfig(path=path, buffer=1_000_000))
    log.start()
    listeners = {name: log.listener(name) for name in ("feed-cache", "orders-db")}
    expected: collections.Counter[tuple[str, str, str, str, str]] = collections.Counter()
    runs: list[tuple[str, list[str], int, int]] = []  # request id, ops, sent, received

    async def client(task: int) -> None:
        cluster = "feed-cache" if task % 2 else "orders-db"
        node = f"10.0.0.{task % 7}:6379"
        for run in range(40):
            size = 1 + (task * 7 + run) % 16
            names = [f"OP{(task + run + i) % 5}" for i in range(size)]
            rid = f"t{task}-r{run}" if run % 3 else None
            sent, received = 100 * size + run, 10 * size + task
            listeners[cluster](
                calls(*names),
                node,
                Outcome(run % 5),
                0.000_250 * size,
                sent,
                received,
                request_id=rid,
            )
            runs.append((rid or "-", names, sent, received))
            for name in names:
                expected[(cluster, name, node, rid or "-", OUTCOME_NAMES[run % 5])] += 1
            await trio.sleep(0)  # a checkpoint: let the other tasks interleave

    async with trio.open_nursery() as nursery:
        for task in range(64):
            nursery.start_soon(client, task)

    assert await trio.to_thread.run_sync(log.close, DEADLINE)
    lines = read_lines(path)
    total = sum(expected.values())
    assert len(lines) == total == log.written
    assert log.dropped == 0
    seen = collections.Counter(
        (d["cluster"], d["operation"], d["node"], d["request_id"], d["outcome"]) for d in lines
    )
    assert seen == expected
    for document in lines:
        assert isinstance(document["time"], str) and TIME.match(document["time"])
        assert isinstance(document["latency_ms"], float) and document["latency_ms"] > 0
    # A run's lines carry its bytes split evenly, adding up to the run's bytes.
    by_rid: dict[object, list[dict[str, object]]] = collections.defaultdict(list)
    for document in lines:
        by_rid[document["request_id"]].append(document)
    for rid, names, sent, received in runs:
        if rid == "-":
            continue
        mine = by_rid[rid]
        assert [d["operation"] for d in mine] == names
        assert sum(d["bytes_out"] for d in mine) == sent  # type: ignore[misc]
        assert sum(d["bytes_in"] for d in mine) == received  # type: ignore[misc]


def test_line_format() -> None:
    sink = io.StringIO()
    log = AccessLog(AccessLogConfig(), sink=sink, clock=lambda: 1_700_000_000.123456)
    log.listener("feed-cache")(
        calls("GET", "SET", "GET"), "10.0.0.5:6379", Outcome.OK, 0.000_412_7, 10, 5
    )
    log.listener('we"ird')(calls("user.get"), "", Outcome.REJECTED, 0.0, 0, 0, request_id="ü\n1")
    log.start()
    assert log.close(DEADLINE)
    head = '{"time":"2023-11-14T22:13:20.123Z","cluster":"feed-cache","operation":'
    middle = ',"node":"10.0.0.5:6379","outcome":"ok","latency_ms":0.413,"bytes_out":'
    assert sink.getvalue().splitlines() == [
        f'{head}"GET"{middle}4,"bytes_in":2,"request_id":"-"}}',
        f'{head}"SET"{middle}3,"bytes_in":2,"request_id":"-"}}',
        f'{head}"GET"{middle}3,"bytes_in":1,"request_id":"-"}}',
        '{"time":"2023-11-14T22:13:20.123Z","cluster":"we\\"ird","operation":"user.get",'
        '"node":"-","outcome":"rejected","latency_ms":0.000,"bytes_out":0,"bytes_in":0,'
        '"request_id":"\\u00fc\\n1"}',
    ]
    assert json.loads(sink.getvalue().splitlines()[3])["request_id"] == "ü\n1"
    assert log.written == 4


def test_stdout_is_the_default_sink(capsys: pytest.CaptureFixture[str]) -> None:
    log = AccessLog(AccessLogConfig(path=None))
    log.start()
    log.listener("c")(calls("PING"), "h:1", Outcome.OK, 0.001, 14, 7, request_id="abc")
    assert log.close(DEADLINE)
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["request_id"] == "abc"


# ----------------------------------------------------------------------------------------
# Sampling


def test_sample_zero_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(AccessLogConfig(path=path, sample=0.0), rng=never)
    log.start()
    listener = log.listener("c")
    for _ in range(1000):
        listener(calls("GET", "GET"), "h:1", Outcome.OK, 0.001, 1, 1, request_id=None)
    assert log.close(DEADLINE)
    assert path.read_text() == ""
    assert log.written == 0 and log.dropped == 0


def test_sample_one_draws_no_random_number() -> None:
    sink = io.StringIO()
    log = AccessLog(AccessLogConfig(sample=1.0), sink=sink, rng=never)
    listener = log.listener("c")
    for _ in range(100):
        listener(calls("GET"), "h:1", Outcome.OK, 0.001, 1, 1)
    log.start()
    assert log.close(DEADLINE)
    assert len(sink.getvalue().splitlines()) == 100


def test_sample_a_quarter() -> None:
    sink = io.StringIO()
    log = AccessLog(AccessLogConfig(sample=0.25), sink=sink, rng=random.Random(1234).random)
    log.start()
    listener = log.listener("c")
    for _ in range(4000):
        listener(calls("GET"), "h:1", Outcome.OK, 0.001, 1, 1, request_id=None)
    assert log.close(DEADLINE)
    written = len(sink.getvalue().splitlines())
    assert written == log.written
    assert 800 <= written <= 1200  # expected 1000; sd ~27


def test_a_sampled_run_is_logged_whole() -> None:
    sink = io.StringIO()
    log = AccessLog(AccessLogConfig(sample=0.5), sink=sink, rng=random.Random(7).random)
    listener = log.listener("c")
    for run in range(200):
        listener(calls(*["GET"] * 16), "h:1", Outcome.OK, 0.001, 16, 16, request_id=f"r{run}")
    log.start()
    assert log.close(DEADLINE)
    per_run = collections.Counter(
        json.loads(line)["request_id"] for line in sink.getvalue().splitlines()
    )
    assert per_run and set(per_run.values()) == {16}


# ----------------------------------------------------------------------------------------
# A slow sink costs lines, never calls


def test_stalled_sink_never_blocks_the_listener() -> None:
    sink = GatedSink()
    log = AccessLog(AccessLogConfig(buffer=1000), sink=sink)
    log.start()
    listener = log.listener("c")
    try:
        listener(calls("FIRST"), "h:1", Outcome.OK, 0.001, 1, 1, request_id="first")
        assert sink.entered.wait(DEADLINE), "the writer never wrote"
        # The writer thread is now stuck in write(): every call still returns.
        for index in range(100_000):
            listener(calls("GET"), "h:1", Outcome.OK, 0.001, 1, 1, request_id=str(index))
        assert log.pending == 1000
        assert log.dropped == 99_000
        assert log.written == 0
    finally:
        sink.released.set()
    assert log.close(DEADLINE)
    lines = sink.lines()
    assert log.written == len(lines) == 1001
    assert [json.loads(line)["request_id"] for line in lines] == [
        "first",
        *map(str, range(1000)),
    ]


def test_a_run_larger_than_the_room_left_keeps_its_first_calls() -> None:
    sink = io.StringIO()
    log = AccessLog(AccessLogConfig(buffer=10), sink=sink)
    listener = log.listener("c")
    listener(calls(*[f"OP{i}" for i in range(16)]), "h:1", Outcome.OK, 0.001, 160, 16)
    listener(calls("LATE"), "h:1", Outcome.OK, 0.001, 1, 1)
    assert log.pending == 10 and log.dropped == 7
    log.start()
    assert log.close(DEADLINE)
    lines = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert [d["operation"] for d in lines] == [f"OP{i}" for i in range(10)]
    assert {d["bytes_out"] for d in lines} == {10}  # split over the run's 16 calls


def test_close_gives_up_on_a_stalled_sink() -> None:
    sink = GatedSink()
    log = AccessLog(AccessLogConfig(), sink=sink)
    log.start()
    listener = log.listener("c")
    listener(calls("GET"), "h:1", Outcome.OK, 0.001, 1, 1)
    assert sink.entered.wait(DEADLINE)
    try:
        assert log.close(timeout=0.05) is False
        listener(calls("AFTER"), "h:1", Outcome.OK, 0.001, 1, 1)  # closed: dropped
        assert log.dropped == 1
    finally:
        sink.released.set()
    assert log.close(DEADLINE)
    assert log.written == 1


def test_a_failing_sink_counts_its_lines_as_dropped() -> None:
    class Broken:
        def write(self, text: str) -> int:
            raise OSError(28, "No space left on device")

        def flush(self) -> None:
            pass

    log = AccessLog(AccessLogConfig(), sink=Broken())
    listener = log.listener("c")
    listener(calls("GET", "SET"), "h:1", Outcome.OK, 0.001, 1, 1)
    log.start()
    assert log.close(DEADLINE)
    assert log.dropped == 2 and log.written == 0


# ----------------------------------------------------------------------------------------
# Opening the sink


def test_missing_directory_fails_at_start_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "access.log"
    log = AccessLog(AccessLogConfig(path=path))
    with pytest.raises(AccessLogError, match=re.escape(str(path))) as caught:
        log.start()
    assert "No such file or directory" in str(caught.value)
    assert log.close(DEADLINE)


def test_unwritable_path_fails_at_start_naming_the_path(tmp_path: Path) -> None:
    log = AccessLog(AccessLogConfig(path=tmp_path))  # a directory cannot be appended to
    with pytest.raises(AccessLogError, match=re.escape(str(tmp_path))):
        log.start()


def test_a_file_is_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text("earlier\n")
    log = AccessLog(AccessLogConfig(path=path))
    log.start()
    log.listener("c")(calls("GET"), "h:1", Outcome.OK, 0.001, 1, 1)
    assert log.close(DEADLINE)
    first, second = path.read_text().splitlines()
    assert first == "earlier" and json.loads(second)["operation"] == "GET"
