"""Fuzz the gateway's two Motan2 listeners over real sockets: the client-side agent (apps'
calls, routed by ``M_p``/``M_g``) and the server-side agent (calls for the exported echo
service, heartbeats), with one real ``resmesh run`` process and the example echo service.

Run standalone (starts its own echo service and gateway)::

    python fuzz/fuzz_motan2_listener.py --examples 4000 [--seed N] [--slow 2] [--shrink]
        [--no-bomb-floods] [--progress 500] [--workdir DIR]

Every run prints its seed (``--seed N`` reproduces it), a progress line with the gateway's memory
every ``--progress`` examples, and a summary per side. ``fuzz/test_motan2_fuzz_smoke.py`` runs
100 derandomized examples (``pytest fuzz/test_motan2_fuzz_smoke.py``: ``tests/`` is the only
test path, so a bare ``pytest`` does not collect it).

**What is thrown.** Each hypothesis example opens one to three connections at once, each to a
port drawn from both sides, and sends a stream of Motan2 pieces back to back: well-formed calls
(``hello``/``echo`` with Simple and msgpack values, known and unknown services, groups and
methods, missing ``M_p``/``M_m``, odd and unknown serialization numbers, the gzip flag with
gzip'd bodies, with bodies that expand past the frame limit and with bodies that are not gzip,
oneway and proxy flags, status bits on requests, request ids up to 2**64 - 1, attachments, meta
and bodies at the frame limit), heartbeats with odd flags, meta and bodies, response and
exception frames sent as requests, malformed frames (bad magic, Motan1 and unknown versions,
meta and body sizes over the limit or lying about what follows, an odd meta item count, an
empty key, meta that is not UTF-8), well-formed frames mutated byte-wise
(:func:`tests.support.mutation.mutated`), random bytes, floods of hundreds of small frames, and
floods of 1 KiB gzip'd calls whose replies are 1 MiB each (``--no-bomb-floods`` leaves those
out). The stream is cut short at the end (a connection closed mid-frame) or not, split at random
points and written chunk by chunk (sometimes with pauses, so the gateway reads the pieces
apart), while the replies are read; the connection then waits for its replies (reading at once,
or only after a quarter second), half-closes, or is closed (or reset) at once with its calls in
flight.

**The oracle.** The harness reads the stream it sends as the gateway must (a
:class:`FrameDecoder` with the agent's limit) and models the agent and the echo service
(:func:`expected_outcome`): every request before the first frame that breaks the connection is
owed exactly one reply, with the bytes the service would encode (``hello``, ``echo``), or an
exception response with the errcode the agent (400, 404) or the service (500) gives; every
heartbeat is owed a heartbeat reply; a response frame or a malformed frame closes the
connection, after an exception reply carrying the frame's id when its header was readable.

**The invariants**, checked for every connection and after every example:

1. whatever comes back is a run of well-formed Motan2 responses (decoded with
   :class:`FrameDecoder`): normal replies, heartbeat replies, or exception responses whose
   ``M_e`` holds an int ``errcode``, a str ``errmsg`` and an int ``errtype``; never garbage,
   never a hang (every wait has a deadline), and the connection is closed exactly when a frame
   called for it; the replies owed come (with the expected bytes or errcode) unless it closed;
2. every reply's request id is one the client sent and was still owed (0 only for an agent
   error when no id was readable): no reply to a frame after a protocol error, none twice;
3. after the example, a fresh well-behaved client (:func:`resmesh.net.motan2.open_client`)
   still gets ``hello("x") == "hello x"`` through the client side (group ``resmesh-demo``) and
   through the server side directly;
4. the gateway and the echo service are alive, and the gateway's resident memory (``VmRSS``)
   and its peak during the example (``VmHWM``, reset after each example where the kernel
   allows) stay within ``RSS_SLACK_KIB`` (200 MiB) of where the run started;
5. no ``unexpected error`` or ``Traceback`` line in the gateway's log (or the echo service's).

An example that takes longer than ``--slow`` seconds twice in a row fails the run (the slow path
is reported with its input; hypothesis' own per-run deadline is off, as in
``fuzz_motan2_codec.py``). A failure dumps the example's streams to ``failure-*.bin`` files in the
run's directory, for a repro, and is reported as found; ``--shrink`` lets hypothesis shrink it,
which misleads when the failure left the shared gateway degraded (an open breaker fails every
later example too), so it is off by default. Hypothesis replays the failing example once more
at the end: a failure that depends on timing or on what came before is then reported as a
``FlakyFailure`` holding the original error. The gateway must exit 0 on SIGTERM at the
end. Exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import random
import selectors
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from fuzz.fuzz_motan2_codec import FRAME_BYTES, SlowExamples, SlowLog, motan_garbage, split
from fuzz.listener_harness import (
    InvariantBroken,
    LogTail,
    ProbeFailure,
    exchange_all,
    vm_hwm_kib,
)
from resmesh.net.motan2.client import Motan2Error, open_client
from resmesh.protocols._errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from resmesh.protocols.motan2 import bodies
from resmesh.protocols.motan2.agent import with_request_id
from resmesh.protocols.motan2.frames import (
    DEFAULT_MAX_BODY,
    FLAG_HEARTBEAT,
    META_EXCEPTION,
    META_GROUP,
    META_METHOD,
    META_PATH,
    META_REQUEST_ID,
    META_SOURCE,
    Frame,
    FrameDecoder,
    FrameError,
    encode_frame,
    encode_meta,
    exception_response,
    gzip_compress,
    heartbeat_request,
    heartbeat_response,
    request,
    response,
)
from resmesh.protocols.motan2.simple import Int32
from tests.protocols.motan2.motan2_support import mutated as simple_mutated
from tests.protocols.motan2.motan2_support import values as simple_values
from tests.support import mutation
from tests.support.servers import Gateway, free_port, port_open, vm_rss_kib, wait_for

# -- the rig -----------------------------------------------------------------------------------

SERVICE: Final = "resmesh.demo.EchoService"
GROUP: Final = "resmesh-demo"
#: The gateway's ``gateway.app``: the ``M_s`` the client side adds to calls without one.
APP: Final = "fuzz"
#: ``motan2.max_frame``: the largest meta and the largest body either side accepts.
MAX_FRAME: Final = 1 << 20
#: The echo service's own frame limits (its defaults): what it gunzips a body to at most.
SERVICE_MAX_BODY: Final = DEFAULT_MAX_BODY
#: What the agent allows a call (``backend.command_timeout``, ``motan2.export_timeout``).
CALL_TIMEOUT: Final = 5.0
#: A connection that gets nothing for this long, while a reply or a close is owed, hangs.
HANG_SECONDS: Final = 10.0
#: An example that takes longer than this (seconds), twice in a row, fails the run.
SLOW_SECONDS: Final = 2.0
#: Growth of the gateway's resident memory (now, and its peak) allowed over a run.
RSS_SLACK_KIB: Final = 200 * 1024
#: Lines of a log that break invariant 5.
SIDES: Final = ("client", "server")
ECHO_SCRIPT: Final = Path(__file__).resolve().parents[1] / "examples" / "motan2_echo.py"

#: How long a ``slow-read`` connection leaves its replies unread.
SLOW_READ_SECONDS: Final = 0.25

_U32_MAX: Final = 2**32 - 1
_U64_MAX: Final = 2**64 - 1


@dataclass
class Knobs:
    """What a run throws, beyond the strategies' defaults (set from the command line)."""

    #: Floods of small gzip'd echo calls whose replies are near the frame limit, often read
    #: slowly: they check that the replies a client has not read yet are held, and freed.
    bomb_floods: bool = True
    #: Print a progress line (examples, memory) every this many examples (0: never).
    progress_every: int = 0


KNOBS = Knobs()


def agent_config(client_port: int, server_port: int, echo_port: int) -> dict[str, Any]:
    """The brief's gateway: both sides of the agent, the echo service exported on the server
    side, and one cluster that sends the client side's echo calls to the server side."""
    return {
        "gateway": {"app": APP, "drain_timeout": "1s"},
        "motan2": {
            "client": f"127.0.0.1:{client_port}",
            "server": f"127.0.0.1:{server_port}",
            "export": {SERVICE: f"127.0.0.1:{echo_port}"},
            "max_frame": "1MiB",
            "export_timeout": f"{CALL_TIMEOUT:g}s",
        },
        "clusters": {
            "echo": {
                "protocol": "motan2",
                "groups": {"dc-a": [f"127.0.0.1:{server_port}"]},
                "motan2": {"service": SERVICE, "group": GROUP},
                # Breaker and ejection off: the fuzzer's unknown methods and undecodable
                # arguments come back as service exceptions, which count against the node
                # (motan-go's rule: a node missing a method is misdeployed), and would take
                # the one node out for every later example.
                "governance": {
                    "operations": {"echo": {"idempotent": True}},
                    "breaker": {"enabled": False},
                    "outlier": {"enabled": False},
                },
                "backend": {"connect_timeout": "1s", "command_timeout": f"{CALL_TIMEOUT:g}s"},
            }
        },
    }


class Rig:
    """The echo service and the gateway (``resmesh run``), started once for a whole run."""

    def __init__(self, workdir: Path | None = None) -> None:
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="resmesh-motan2-fuzz-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        echo_port = free_port()
        self.echo_log_path = self.workdir / "echo.log"
        self._echo_log_file = self.echo_log_path.open("wb")
        self.echo = subprocess.Popen(
            [sys.executable, str(ECHO_SCRIPT), "--port", str(echo_port)],
            stdout=self._echo_log_file,
            stderr=subprocess.STDOUT,
        )
        self.gateway: Gateway | None = None
        try:
            wait_for(
                lambda: self.echo.poll() is None and port_open(echo_port), 15, "the echo service"
            )
            self.ports = {side: free_port() for side in SIDES}
            config = agent_config(self.ports["client"], self.ports["server"], echo_port)
            self.gateway = Gateway(config, self.workdir)
            self.pid = self.gateway.proc.pid
            self.health()  # also opens the agent's node connections
            self.rss_start = vm_rss_kib(self.pid)
            #: The highest peak seen over the run.
            self.peak = self.rss_start
            self._reset_peak()
        except BaseException:
            self.stop()
            raise
        self.gateway_log = LogTail(self.gateway.log_path)
        self.echo_log = LogTail(self.echo_log_path)
        self.failures = 0

    def health(self) -> None:
        """Invariant 3: a fresh well-behaved client gets ``hello x`` on both sides.

        Raises:
            InvariantBroken: it does not.
        """
        trio.run(self._health)

    async def _health(self) -> None:
        for side in SIDES:
            try:
                async with open_client("127.0.0.1", self.ports[side], timeout=HANG_SECONDS) as c:
                    got = await c.call(SERVICE, "hello", "x", group=GROUP)
            except (Motan2Error, ProtocolError, OSError) as exc:
                raise InvariantBroken(
                    f"a well-behaved client's hello('x') failed on the {side} side: {exc!r}"
                ) from None
            if got != "hello x":
                raise InvariantBroken(f"hello('x') on the {side} side returned {got!r}")

    def rss(self) -> tuple[int, int]:
        """The gateway's resident memory now and at its peak (since the last example's
        check), in KiB."""
        return vm_rss_kib(self.pid), vm_hwm_kib(self.pid)

    def _reset_peak(self) -> None:
        """Start the gateway's ``VmHWM`` afresh (``clear_refs`` 5), so that each example's
        peak is its own: a failure found by one example does not fail every later one (which
        would defeat shrinking). Where the kernel refuses, the peak stays the run's."""
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def check(self) -> None:
        """Invariants 3 to 5, after an example.

        Raises:
            InvariantBroken: one does not hold.
        """
        assert self.gateway is not None
        if self.gateway.proc.poll() is not None:
            raise InvariantBroken(f"the gateway exited with {self.gateway.proc.returncode}")
        if self.echo.poll() is not None:
            raise InvariantBroken(f"the echo service exited with {self.echo.returncode}")
        self.health()
        now, peak = self.rss()
        self.peak = max(self.peak, peak)
        self._reset_peak()
        if max(now, peak) - self.rss_start > RSS_SLACK_KIB:
            raise InvariantBroken(
                f"the gateway's memory grew from {self.rss_start} KiB to {now} KiB "
                f"(peak {peak} KiB during the example), over the {RSS_SLACK_KIB} KiB allowed"
            )
        for name, log in (("gateway", self.gateway_log), ("echo service", self.echo_log)):
            bad = log.new_bad_lines()
            if bad:
                shown = "\n  ".join(bad[:10])
                raise InvariantBroken(f"the {name}'s log ({log.path}) says:\n  {shown}")

    def dump(self, plans: list[Plan]) -> list[Path]:
        """Write each plan's stream to a file of the run's directory (for a repro)."""
        self.failures += 1
        paths = []
        for index, plan in enumerate(plans):
            path = self.workdir / f"failure-{self.failures}-{index}-{plan.side}.bin"
            path.write_bytes(plan.stream)
            paths.append(path)
        return paths

    def stop(self) -> int | None:
        """Stop both processes; the gateway's exit code on SIGTERM (``None``: not started)."""
        code = None
        if self.gateway is not None:
            try:
                code = self.gateway.terminate()
            except subprocess.TimeoutExpired:
                self.gateway.proc.kill()
                code = -9
        if self.echo.poll() is None:
            self.echo.terminate()
            try:
                self.echo.wait(10)
            except subprocess.TimeoutExpired:
                self.echo.kill()
        self._echo_log_file.close()
        return code


# -- the oracle: what the agent and the echo service do with a frame ---------------------------


@dataclass(frozen=True)
class Outcome:
    """The reply a request is owed.

    Attributes:
        heartbeat: a heartbeat reply.
        body: the normal reply's exact body (``None``: an exception is owed instead).
        errcode: the exception's errcode (``None``: any).
        errtype: the exception's errtype (``None``: any).
        what: the call, for messages.
    """

    heartbeat: bool = False
    body: bytes | None = None
    errcode: int | None = None
    errtype: int | None = None
    what: str = ""


def _first_upper(name: str) -> str:
    return name[:1].upper() + name[1:]


def _service_call(frame: Frame) -> Outcome:
    """What the echo service (``resmesh.net.motan2.service`` serving ``examples/motan2_echo``)
    answers, as the reply reaches the client through the agent: the service's errors are 500,
    a reply over the agent's frame limit is the agent's 400."""
    method = frame.meta.get(META_METHOD, "")
    what = f"{method[:40]!r}"
    key = _first_upper(method)
    if key not in ("Hello", "Echo"):
        # The errmsg names the method: a name near the frame limit makes the reply too big for
        # the agent, which answers with its own error.
        code = 500 if len(method) < MAX_FRAME - 256 else None
        return Outcome(errcode=code, errtype=1 if code else None, what=what)
    serialization = frame.serialization
    try:
        args = bodies.decode_arguments(serialization, frame.gunzip_body(SERVICE_MAX_BODY))
    except (RemoteProtocolError, bodies.SerializationNotFound):
        return Outcome(errcode=500, errtype=1, what=what)
    what = f"{key.lower()}({len(args)} args, serialization {serialization})"
    if len(args) != 1:
        return Outcome(errcode=500, errtype=1, what=what)
    (value,) = args
    if key == "Hello":
        if not isinstance(value, str):
            return Outcome(errcode=500, errtype=2, what=what)  # the handler raises TypeError
        value = "hello " + value
    try:
        body = bodies.encode_result(serialization, value)
    except LocalProtocolError:
        return Outcome(errcode=500, errtype=1, what=what)
    if len(body) > MAX_FRAME:
        return Outcome(errcode=400, errtype=1, what=what + ", reply over the frame limit")
    return Outcome(body=body, what=what)


def expected_outcome(frame: Frame, side: str) -> Outcome:
    """The reply a request frame (decoded, not a response) is owed on ``side``."""
    if frame.heartbeat:
        return Outcome(heartbeat=True, what="heartbeat")
    service = frame.meta.get(META_PATH, "")
    group = frame.meta.get(META_GROUP, "")
    if side == "client":
        if service != SERVICE or group not in ("", GROUP):
            return Outcome(errcode=400, errtype=1, what=f"no cluster for {service[:40]!r}")
    elif service != SERVICE:
        return Outcome(errcode=404, errtype=1, what=f"not exported: {service[:40]!r}")
    # Either side adds M_rid (and the client side M_s) when missing or empty before
    # forwarding, and refuses what that takes over the next hop's meta limit.
    meta = dict(frame.meta)
    rid = frame.request_id
    if not meta.get(META_REQUEST_ID):
        meta[META_REQUEST_ID] = str(rid - (1 << 64) if rid >= 1 << 63 else rid)
    if side == "client" and not meta.get(META_SOURCE):
        meta[META_SOURCE] = APP
    if len(encode_meta(meta)) > MAX_FRAME:
        return Outcome(errcode=400, errtype=1, what="forwarded meta over the frame limit")
    return _service_call(frame)


@dataclass
class Expected:
    """What the gateway owes one connection for the stream it is sent.

    Attributes:
        owed: request id -> the replies owed to the requests with that id, in order.
        closes: the stream holds a frame that makes the gateway close the connection.
        error_id: the request id an exception reply may carry before that close (a malformed
            request whose header was readable).
        why: the reason for the close.
    """

    owed: dict[int, list[Outcome]] = field(default_factory=dict)
    closes: bool = False
    error_id: int | None = None
    why: str = ""

    @property
    def count(self) -> int:
        return sum(map(len, self.owed.values()))


def expect(stream: bytes, side: str) -> Expected:
    """Read ``stream`` as the gateway's session does, and say what it owes."""
    decoder = FrameDecoder(MAX_FRAME, MAX_FRAME, max_buffer=len(stream) + 1)
    expected = Expected()
    try:
        decoder.feed(stream)
        for frame in decoder:
            if frame.response:
                expected.closes = True
                expected.why = "a response frame sent as a request"
                return expected
            expected.owed.setdefault(frame.request_id, []).append(expected_outcome(frame, side))
    except FrameError as exc:
        expected.closes = True
        expected.why = exc.reply_hint
        if exc.request_id is not None and exc.is_request:
            expected.error_id = exc.request_id
    return expected


# -- what is sent ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """One connection of an example.

    Attributes:
        side: the port, ``client`` or ``server``.
        stream: every byte sent.
        cuts: where the stream is split into writes (see :func:`split`).
        pause: sleep a millisecond between writes (so the gateway reads the pieces apart).
        ending: once all is sent, ``read`` (wait for the replies owed, or the close),
            ``slow-read`` (the same, but reading nothing for the first
            ``SLOW_READ_SECONDS``), ``half-close`` (shut down writing, then read until the
            gateway closes), ``close`` or ``reset`` (leave at once, calls in flight).
    """

    side: str
    stream: bytes
    cuts: tuple[int, ...]
    pause: bool
    ending: str

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """Hypothesis prints falsifying examples with this (not the dataclass fields: a
        stream may be megabytes); the streams themselves are dumped to files."""
        printer.text(repr(self))

    def __repr__(self) -> str:
        head = self.stream[:48].hex()
        more = f"...(+{len(self.stream) - 48} bytes)" if len(self.stream) > 48 else ""
        return (
            f"Plan(side={self.side!r}, stream={len(self.stream)} bytes {head}{more}, "
            f"cuts={list(self.cuts)[:8]}, pause={self.pause}, ending={self.ending!r})"
        )


def raw_frame(
    flags: int,
    version_status: int,
    serialize: int,
    request_id: int,
    meta: bytes,
    body: bytes,
    *,
    meta_size: int | None = None,
    body_size: int | None = None,
) -> bytes:
    """A frame written byte by byte (for what :func:`encode_frame` refuses to write), with
    size fields that may lie."""
    return b"".join(
        (
            b"\xf1\xf1",
            bytes((flags & 0xFF, version_status & 0xFF, serialize & 0xFF)),
            request_id.to_bytes(8, "big"),
            (len(meta) if meta_size is None else meta_size).to_bytes(4, "big"),
            meta,
            (len(body) if body_size is None else body_size).to_bytes(4, "big"),
            body,
        )
    )


request_ids = st.one_of(
    st.integers(0, 1000),
    st.integers(0, _U64_MAX),
    st.sampled_from([0, 1, 2**31, 2**32, 2**63 - 1, 2**63, _U64_MAX - 1, _U64_MAX]),
)
meta_texts = st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=16)
attachments = st.dictionaries(
    st.sampled_from(
        [
            META_REQUEST_ID,
            META_SOURCE,
            "M_v",
            "M_g",
            "M_tmo",
            "M_pp",
            "M_md",
            "x-forwarded-for",
            "k",
            "ключ",
            "\u2028",
        ]
    ),
    meta_texts,
    max_size=4,
)
#: Builtin values only: what msgpack carries (Simple's marker types would be rewritten).
msgpack_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(),
        st.text(max_size=12),
        st.binary(max_size=12),
    ),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=6) | st.integers(), children, max_size=3)
    ),
    max_leaves=10,
)
#: Body sizes around the frame limit (a reply is a few bytes bigger than its request).
near_limit = st.integers(-40, 40).map(lambda delta: MAX_FRAME - 8 + delta)


def _body_of(serialization: int, args: list[Any]) -> bytes:
    try:
        return bodies.encode_arguments(serialization if serialization in (3, 6) else 6, args)
    except (LocalProtocolError, ValueError, OverflowError):
        return b""


@st.composite
def calls(draw: st.DrawFn) -> bytes:
    """A request frame: mostly a well-formed call of the echo service, with the knobs of the
    brief turned (service, group, method, serialization, flags, ids, meta, gzip, sizes)."""
    service = draw(
        st.sampled_from(
            [SERVICE] * 10
            + ["", "resmesh.demo.Other", SERVICE.lower(), SERVICE + " ", "é" * 3, "a\u2028b"]
        )
    )
    method = draw(
        st.sampled_from(["hello"] * 5 + ["echo"] * 5 + ["Hello", "ECHO", "nosuch", "", "hello\t"])
    )
    group = draw(st.sampled_from([GROUP] * 8 + ["", "other", GROUP.upper()]))
    serialization = draw(st.sampled_from([6] * 10 + [3] * 4 + [0, 1, 2, 5, 7, 8, 31]))
    size = draw(st.sampled_from(["small"] * 12 + ["big", "meta", "bomb"]))
    gzip_flag = False
    if size == "big":
        # A value at the frame limit: the reply is over it for hello (and for a Simple string).
        length = draw(near_limit)
        filler = draw(st.sampled_from([b"\0", b"a", b"\xe2\x82\xac"]))
        data = (filler * (length // len(filler) + 1))[:length]
        value: Any = data if draw(st.booleans()) else data.decode("utf-8", "ignore")
        args = [value]
    elif size == "bomb":
        # A few KiB of gzip that expands to a value near or past the frame limit.
        args = [bytes(draw(st.sampled_from([MAX_FRAME - 64, MAX_FRAME, 2 * MAX_FRAME])))]
        gzip_flag = True
    elif method.lower() == "hello":
        args = draw(
            st.one_of(
                st.text(max_size=30).map(lambda s: [s]),
                st.just([]),
                st.lists(simple_values, min_size=1, max_size=3),
            )
        )
    else:
        values = msgpack_values if serialization == 3 else simple_values
        args = draw(st.one_of(values.map(lambda v: [v]), st.just([]), st.lists(values, max_size=3)))
    body = _body_of(serialization, args)
    shape = draw(st.sampled_from(["plain"] * 8 + ["gzip", "fake-gzip", "mutated", "garbage"]))
    if shape == "gzip" or gzip_flag:
        body, gzip_flag = gzip_compress(body, draw(st.integers(1, 9))), True
    elif shape == "fake-gzip":
        gzip_flag = True
    elif shape == "mutated" and body:
        body = draw(simple_mutated(body))
    elif shape == "garbage":
        body = draw(st.binary(max_size=64))
    meta = draw(attachments)
    if size == "meta":
        # Meta at the frame limit: within it here, over it once the client side adds M_rid.
        meta["x-big"] = "m" * draw(st.integers(MAX_FRAME - 180, MAX_FRAME - 60))
    frame = request(
        draw(request_ids),
        service,
        method,
        body,
        group=group,
        meta=meta,
        serialization=serialization,
        oneway=draw(st.integers(0, 9)) == 0,
        proxy=draw(st.booleans()),
    )
    status = draw(st.sampled_from([0] * 12 + [1, 2, 7]))
    return encode_frame(dataclasses.replace(frame, gzip=gzip_flag, status=status))


@st.composite
def heartbeats(draw: st.DrawFn) -> bytes:
    """A heartbeat request (flag 0x10, response bit clear) with odd other flags, status,
    serialization byte, meta and body."""
    if draw(st.booleans()):
        return encode_frame(heartbeat_request(draw(request_ids)))
    flags = FLAG_HEARTBEAT | draw(st.sampled_from([0x00, 0x02, 0x04, 0x08, 0x0E, 0xE2, 0xEE]))
    meta = draw(st.sampled_from([b"", b"M_p\n" + SERVICE.encode(), b"k\nv\n", b"M_e\n{}"]))
    body = draw(st.sampled_from([b"", b"\x00", b"not gzip", gzip_compress(b"x" * 100)]))
    return raw_frame(
        flags,
        0x08 | draw(st.integers(0, 7)),
        draw(st.sampled_from([0x30, 0x08, 0x00, 0x18, 0xFF])),
        draw(request_ids),
        meta,
        body,
    )


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    """A response frame sent as if it were a request: the agent closes the connection."""
    request_id = draw(request_ids)
    kind = draw(st.sampled_from(["normal", "exception", "heartbeat", "raw"]))
    if kind == "normal":
        return encode_frame(response(request_id, draw(st.binary(max_size=32))))
    if kind == "exception":
        return encode_frame(exception_response(request_id, 500, draw(st.text(max_size=20))))
    if kind == "heartbeat":
        return encode_frame(heartbeat_response(request_id))
    flags = 0x01 | draw(st.integers(0, 0xFF))
    return raw_frame(flags, 0x08 | draw(st.integers(0, 7)), 0x30, request_id, b"", b"")


_GOOD_META = encode_meta({META_PATH: SERVICE, META_METHOD: "hello", META_GROUP: GROUP})
_GOOD_BODY = bodies.encode_arguments(6, ["x"])


@st.composite
def malformed(draw: st.DrawFn) -> bytes:
    """A frame the agent's decoder refuses (or, for a trailing newline, accepts), with a
    readable header so the refusal can carry its request id."""
    flags = draw(st.sampled_from([0x00, 0x00, 0x02, 0x01, 0x10]))
    request_id = draw(request_ids)
    kind = draw(
        st.sampled_from(
            [
                "magic",
                "version",
                "meta-size",
                "body-size",
                "odd-meta",
                "empty-key",
                "not-utf8",
                "trailing-newline",
                "lying-sizes",
            ]
        )
    )
    if kind == "magic":
        frame = bytearray(raw_frame(flags, 0x08, 0x30, request_id, _GOOD_META, _GOOD_BODY))
        at = draw(st.integers(0, 1))
        frame[at] = draw(st.integers(0, 0xFF).filter(lambda b: b != 0xF1))
        return bytes(frame)
    if kind == "version":
        version = draw(st.sampled_from([0, 2, 3, 31]))
        return raw_frame(flags, version << 3, 0x30, request_id, _GOOD_META, _GOOD_BODY)
    if kind == "meta-size":
        size = draw(st.sampled_from([MAX_FRAME + 1, 2**31, _U32_MAX]))
        return raw_frame(flags, 0x08, 0x30, request_id, b"", b"", meta_size=size)[:17]
    if kind == "body-size":
        size = draw(st.sampled_from([MAX_FRAME + 1, 2**31, _U32_MAX]))
        return raw_frame(flags, 0x08, 0x30, request_id, _GOOD_META, b"", body_size=size)
    if kind == "lying-sizes":
        meta_size = len(_GOOD_META) + draw(st.integers(-5, 5))
        body_size = len(_GOOD_BODY) + draw(st.integers(-5, 64))
        return raw_frame(
            flags,
            0x08,
            0x30,
            request_id,
            _GOOD_META,
            _GOOD_BODY,
            meta_size=max(meta_size, 0),
            body_size=max(body_size, 0),
        )
    meta = {
        "odd-meta": _GOOD_META + b"\nM_x",
        "empty-key": b"\nv\n" + _GOOD_META,
        "not-utf8": _GOOD_META + b"\nk\n\xff\xfe\xc3",
        "trailing-newline": _GOOD_META + b"\n",
    }[kind]
    return raw_frame(flags, 0x08, 0x30, request_id, meta, _GOOD_BODY)


#: A 1 KiB gzip'd echo call whose reply is 1 MiB (64 bytes under the frame limit).
_BOMB: Final = encode_frame(
    dataclasses.replace(
        request(
            0,
            SERVICE,
            "echo",
            gzip_compress(bodies.encode_arguments(6, [bytes(MAX_FRAME - 64)]), 9),
            group=GROUP,
        ),
        gzip=True,
    )
)


@st.composite
def floods(draw: st.DrawFn) -> bytes:
    """Hundreds of small frames back to back, each with its own request id."""
    one = draw(
        st.sampled_from(
            [
                encode_frame(heartbeat_request(0)),
                encode_frame(request(0, SERVICE, "hello", _GOOD_BODY, group=GROUP)),
                encode_frame(request(0, SERVICE, "echo", bodies.encode_arguments(6, [Int32(7)]))),
                encode_frame(request(0, "no.such.Service", "hello", _GOOD_BODY)),
            ]
        )
    )
    first = draw(st.integers(0, _U64_MAX - 3000))
    return b"".join(with_request_id(one, first + i) for i in range(draw(st.integers(50, 2000))))


@st.composite
def bomb_floods(draw: st.DrawFn) -> bytes:
    """8 to 14 gzip'd echo calls of 1 KiB whose replies are 1 MiB each: up to 14 MiB of
    replies a slow reader leaves unread, within what the agent holds per client (16 MiB and
    one largest reply; past it the client is closed, as redis-server's output buffer limit
    closes one, which the unit tests check)."""
    first = draw(st.integers(0, _U64_MAX - 3000))
    return b"".join(with_request_id(_BOMB, first + i) for i in range(draw(st.integers(8, 14))))


pieces = st.one_of(
    calls(),
    calls(),
    calls(),
    heartbeats(),
    responses(),
    malformed(),
    calls().flatmap(lambda data: mutation.mutated(data, FRAME_BYTES, sizes=True)),
    heartbeats().flatmap(lambda data: mutation.mutated(data, FRAME_BYTES, sizes=True)),
    st.binary(max_size=256),
    motan_garbage,
    st.sampled_from([b"GET / HTTP/1.1\r\n\r\n", b"\xf1\xf1\x00\x00", b"*1\r\n$4\r\nPING\r\n"]),
)


@st.composite
def plans(draw: st.DrawFn, *, bombs: bool = False) -> Plan:
    """One connection's plan; with ``bombs``, sometimes a flood of calls with 1 MiB replies
    (at most one such flood per example, so that an example's size stays under the time
    bound: two take a couple of seconds to relay)."""
    side = draw(st.sampled_from(SIDES))
    kind = draw(st.integers(0, 39))
    endings = ["read"] * 12 + ["slow-read", "half-close", "close", "reset"] * 2
    if kind < 2:
        parts = [draw(floods())]
    elif kind == 2 and bombs and KNOBS.bomb_floods:
        parts = [draw(bomb_floods())]
        endings = ["read", "slow-read"]
    else:
        # Mostly frames that keep the connection, so the ones after them are read too.
        parts = draw(
            st.lists(
                st.one_of(calls(), calls(), heartbeats(), pieces),
                min_size=1,
                max_size=8,
            )
        )
    stream = b"".join(parts)
    if stream and draw(st.integers(0, 4)) == 0:
        stream = stream[: len(stream) - draw(st.integers(1, min(len(stream), 64)))]
    cuts = draw(st.lists(st.integers(0, 1 << 21), max_size=12))
    return Plan(
        side=side,
        stream=stream,
        cuts=tuple(cuts),
        pause=draw(st.integers(0, 4)) == 0,
        ending=draw(st.sampled_from(endings)),
    )


@st.composite
def examples(draw: st.DrawFn) -> list[Plan]:
    """One to three connections run at once."""
    first = draw(plans(bombs=True))
    return [first, *draw(st.lists(plans(), max_size=2))]


# -- the exchange and its checks ---------------------------------------------------------------


def _exception_info(frame: Frame) -> tuple[int, str, int]:
    """``M_e``'s errcode, errmsg and errtype, all present and of the right types.

    Raises:
        ValueError: they are not.
    """
    text = frame.meta.get(META_EXCEPTION)
    if text is None:
        raise ValueError("no M_e")
    info = json.loads(text)
    if not isinstance(info, dict):
        raise ValueError(f"M_e is not a JSON object: {text[:200]!r}")
    errcode, errmsg, errtype = info.get("errcode"), info.get("errmsg"), info.get("errtype")
    if type(errcode) is not int or type(errmsg) is not str or type(errtype) is not int:
        raise ValueError(f"M_e lacks an int errcode, str errmsg or int errtype: {text[:200]!r}")
    return errcode, errmsg, errtype


def _describe(frame: Frame) -> str:
    body = frame.body[:40]
    return (
        f"reply id={frame.request_id} flags={frame.flags:#04x} status={frame.status} "
        f"meta={str(frame.meta)[:300]} body={len(frame.body)} bytes {body!r}"
    )


class Checker:
    """Checks one connection's replies against what its stream is owed (invariants 1, 2)."""

    def __init__(self, plan: Plan, expected: Expected) -> None:
        self.plan = plan
        self.expected = expected
        self.owed = {rid: list(outcomes) for rid, outcomes in expected.owed.items()}
        self.left = expected.count
        self.error_id_answered = False
        self.replies: Counter[str] = Counter()

    def fail(self, reason: str) -> ProbeFailure:
        return ProbeFailure(
            f"{self.plan.side} side: {reason}\n  plan: {self.plan!r}\n  owed: "
            f"{self.expected.count} replies, closes: {self.expected.closes} "
            f"({self.expected.why[:120]})"
        )

    @property
    def satisfied(self) -> bool:
        """Every reply owed came (and the connection is not to be closed by the gateway)."""
        return not self.left and not self.expected.closes

    def on_bytes_refused(self, error: FrameError, received: bytes) -> ProbeFailure:
        return self.fail(f"the gateway sent bytes that are not Motan2 ({error}): {received!r}")

    def on_reply(self, frame: Frame) -> None:
        """One frame from the gateway.

        Raises:
            ProbeFailure: it is not a well-formed reply to an owed request.
        """
        if not frame.response:
            raise self.fail(f"the gateway sent a request: {_describe(frame)}")
        if frame.status not in (0, 1):
            raise self.fail(f"a reply with status {frame.status}: {_describe(frame)}")
        info: tuple[int, str, int] | None = None
        if frame.status == 1:
            try:
                info = _exception_info(frame)
            except ValueError as exc:
                raise self.fail(f"a malformed exception ({exc}): {_describe(frame)}") from None
            if frame.body:
                raise self.fail(f"an exception with a body: {_describe(frame)}")
        if len(frame.body) > MAX_FRAME:
            raise self.fail(f"a reply body over the frame limit: {_describe(frame)}")
        rid = frame.request_id
        outcomes = self.owed.get(rid, [])
        for index, outcome in enumerate(outcomes):
            if self._matches(outcome, frame, info):
                del outcomes[index]
                self.left -= 1
                self.replies[self._kind(frame, info)] += 1
                return
        # The refusal of a malformed request (errcode 400, its id), once, before the close.
        refusal = rid == self.expected.error_id and not self.error_id_answered
        if refusal and info is not None and info[0] == 400 and not frame.heartbeat:
            self.error_id_answered = True
            self.replies["refusal"] += 1
            return
        if rid == 0 and info is not None and 0 not in self.expected.owed and not refusal:
            self.replies["id-0 error"] += 1  # an agent error when no id was readable
            return
        if not outcomes and not refusal:
            raise self.fail(f"a reply to no request owed one: {_describe(frame)}")
        wanted = [self._show(outcome) for outcome in outcomes]
        if refusal:
            wanted.append("the refusal of a malformed frame (errcode 400)")
        raise self.fail(f"{_describe(frame)}\n  but id {rid} is owed: {'; '.join(wanted)}")

    @staticmethod
    def _kind(frame: Frame, info: tuple[int, str, int] | None) -> str:
        if frame.heartbeat:
            return "heartbeat"
        return "value" if info is None else f"error {info[0]}"

    @staticmethod
    def _matches(outcome: Outcome, frame: Frame, info: tuple[int, str, int] | None) -> bool:
        if outcome.heartbeat:
            return bool(frame.heartbeat) and info is None and not frame.body
        if frame.heartbeat:
            return False
        if outcome.body is not None:
            return info is None and not frame.gzip and frame.body == outcome.body
        if info is None:
            return False
        errcode, _errmsg, errtype = info
        return (outcome.errcode is None or errcode == outcome.errcode) and (
            outcome.errtype is None or errtype == outcome.errtype
        )

    @staticmethod
    def _show(outcome: Outcome) -> str:
        if outcome.heartbeat:
            return "a heartbeat reply"
        if outcome.body is not None:
            return f"{outcome.what} -> body {outcome.body[:60]!r} ({len(outcome.body)} bytes)"
        return f"{outcome.what} -> exception errcode={outcome.errcode} errtype={outcome.errtype}"

    def finish(self, closed: bool) -> None:
        """The exchange ended: ``closed`` by the gateway, or by the harness once satisfied.

        Raises:
            ProbeFailure: the gateway closed a connection it had to keep (with replies owed).
        """
        if closed and not self.expected.closes and self.plan.ending in ("read", "slow-read"):
            raise self.fail(
                f"the gateway closed the connection with {self.left} replies owed and no "
                f"frame calling for a close (got {dict(self.replies)})"
            )


@dataclass
class Transcript:
    """How one connection went."""

    side: str
    sent: int = 0
    received: int = 0
    closed: bool = False
    replies: Counter[str] = field(default_factory=Counter)


def exchange(port: int, plan: Plan, *, hang: float = HANG_SECONDS) -> Transcript:
    """Run ``plan`` on a fresh connection to ``port``: write its chunks while reading the
    replies, then end as it says. Every wait has a deadline.

    Raises:
        ProbeFailure: an invariant broke (garbage, a wrong or unowed reply, a hang, a close
            with replies owed).
    """
    checker = Checker(plan, expect(plan.stream, plan.side))
    transcript = Transcript(plan.side)
    chunks = [chunk for chunk in split(plan.stream, list(plan.cuts)) if chunk]
    chunks.reverse()
    decoder = FrameDecoder(DEFAULT_MAX_BODY, DEFAULT_MAX_BODY)
    received = bytearray()  # the first bytes only, for messages
    sock = socket.create_connection(("127.0.0.1", port), timeout=hang)
    slow_read = plan.ending == "slow-read"
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_WRITE)
    out = memoryview(b"")
    writing = True
    shut = False
    next_write = 0.0
    started = time.monotonic()
    read_from = started + SLOW_READ_SECONDS if slow_read else started
    last_news = read_from
    try:
        while True:
            now = time.monotonic()
            if not out and not chunks and writing:
                writing = False
                last_news = max(now, read_from)
            if not writing:
                if plan.ending in ("close", "reset"):
                    break
                if plan.ending == "half-close" and not shut:
                    shut = True
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_WR)
                if plan.ending in ("read", "slow-read") and checker.satisfied:
                    break
            if now - last_news > hang or now - started > 6 * hang:
                owed = f"{checker.left} replies owed" if checker.left else "no reply owed"
                raise checker.fail(
                    f"hang: nothing for {hang}s with {owed}, waiting for "
                    f"{'the close' if checker.expected.closes else 'the replies'} "
                    f"(got {dict(checker.replies)})"
                )
            want_write = writing and now >= next_write
            want_read = now >= read_from
            if not want_read and not want_write:
                time.sleep(max(min(read_from, next_write if writing else read_from) - now, 0))
                continue
            selector.modify(
                sock,
                (selectors.EVENT_READ if want_read else 0)
                | (selectors.EVENT_WRITE if want_write else 0),
            )
            timeout = 0.05 if not writing or want_write else max(next_write - now, 0.0)
            if not want_read:
                timeout = min(timeout, read_from - now)
            for _key, events in selector.select(timeout):
                if events & selectors.EVENT_READ:
                    try:
                        data = sock.recv(1 << 18)
                    except BlockingIOError:
                        data = None
                    except OSError:  # reset
                        data = b""
                    if data == b"":
                        transcript.closed = True
                        break
                    if data:
                        last_news = time.monotonic()
                        transcript.received += len(data)
                        if len(received) < 4096:
                            received += data[:4096]
                        try:
                            decoder.feed(data)
                            for frame in decoder:
                                checker.on_reply(frame)
                        except FrameError as exc:
                            raise checker.on_bytes_refused(exc, bytes(received[:600])) from None
                if events & selectors.EVENT_WRITE and writing:
                    if not out:
                        out = memoryview(chunks.pop())
                    try:
                        sent = sock.send(out)
                    except BlockingIOError:
                        sent = 0
                    except OSError:  # the gateway closed on us: read what it said
                        sent, out, chunks, writing = 0, memoryview(b""), [], False
                        shut = True
                    out = out[sent:]
                    transcript.sent += sent
                    if sent:
                        last_news = time.monotonic()
                    if not out and plan.pause:
                        next_write = time.monotonic() + 0.001
            if transcript.closed:
                break
    finally:
        selector.close()
        if plan.ending == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    if decoder.buffered and transcript.closed and not checker.expected.closes:
        raise checker.fail(f"the gateway closed mid-reply ({decoder.buffered} bytes buffered)")
    checker.finish(transcript.closed)
    transcript.replies = checker.replies
    return transcript


# -- running -----------------------------------------------------------------------------------


@dataclass
class Stats:
    """Totals of a run, per side."""

    examples: int = 0
    connections: Counter[str] = field(default_factory=Counter)
    bytes_sent: Counter[str] = field(default_factory=Counter)
    closed_by_gateway: Counter[str] = field(default_factory=Counter)
    replies: Counter[str] = field(default_factory=Counter)
    slowest: float = 0.0
    slowest_plans: list[Plan] = field(default_factory=list)

    def summary(self) -> str:
        sides = ", ".join(
            f"{side}: {self.connections[side]} connections, {self.bytes_sent[side]} bytes, "
            f"{self.closed_by_gateway[side]} closed by the gateway"
            for side in SIDES
        )
        replies = ", ".join(f"{kind} {count}" for kind, count in sorted(self.replies.items()))
        return (
            f"{self.examples} examples ({sides}); replies: {replies}; "
            f"slowest example {self.slowest:.2f} s"
        )


def run_example(rig: Rig, plans_: list[Plan], stats: Stats) -> None:
    """One example: its connections at once, then the rig's invariants.

    Raises:
        ProbeFailure, InvariantBroken: an invariant broke (the streams are dumped first).
    """
    started = time.monotonic()
    try:
        results = exchange_all(
            [functools.partial(exchange, rig.ports[plan.side], plan) for plan in plans_],
            10 * HANG_SECONDS,
        )
        rig.check()
    except AssertionError as exc:
        paths = rig.dump(plans_)
        exc.args = (f"{exc.args[0] if exc.args else exc}\n  streams: {[str(p) for p in paths]}",)
        raise
    stats.examples += 1
    for result in results:
        assert isinstance(result, Transcript)
        stats.connections[result.side] += 1
        stats.bytes_sent[result.side] += result.sent
        stats.closed_by_gateway[result.side] += result.closed
        stats.replies.update(result.replies)
    elapsed = time.monotonic() - started
    every = KNOBS.progress_every
    if every and stats.examples % every == 0:
        now, _ = rig.rss()
        print(
            f"  {stats.examples} examples, rss {now} KiB (highest peak {rig.peak} KiB)",
            flush=True,
        )
    if elapsed > stats.slowest:
        stats.slowest, stats.slowest_plans = elapsed, list(plans_)


Target = Callable[[], None]


def build(
    rig: Rig,
    examples_: int,
    *,
    seed: int | None = None,
    derandomize: bool = False,
    shrink: bool = True,
    slow: SlowLog | None = None,
    stats: Stats | None = None,
) -> Target:
    """The property over ``examples_`` examples against ``rig``: a function that raises on the
    first failure (after hypothesis has shrunk it, with ``shrink``) or when examples were
    too slow (:class:`SlowExamples`)."""
    log = slow if slow is not None else SlowLog(SLOW_SECONDS)
    totals = stats if stats is not None else Stats()
    phases = [Phase.explicit, Phase.reuse, Phase.generate]
    if shrink:
        phases.append(Phase.shrink)
    config = settings(
        max_examples=examples_,
        deadline=None,  # the time bound is the SlowLog's (twice in a row), not one run's
        database=None,
        derandomize=derandomize,
        phases=phases,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )

    @config
    @given(examples())
    def fuzz_motan2_listener(plans_: list[Plan]) -> None:
        log.run("fuzz_motan2_listener", run_example, rig, plans_, totals)

    test = hypothesis_seed(seed)(fuzz_motan2_listener) if seed is not None else fuzz_motan2_listener

    def target() -> None:
        log.found.pop("fuzz_motan2_listener", None)
        test()
        if found := log.found.get("fuzz_motan2_listener"):
            slowest = sorted(found, reverse=True)[:5]
            shown = "\n  ".join(f"{seconds:.2f} s: {args[:600]}" for seconds, args in slowest)
            raise SlowExamples(
                f"{len(found)} example(s) over {log.limit} s (the slowest five):\n  {shown}"
            )

    target.__name__ = target.__qualname__ = "fuzz_motan2_listener"
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="hypothesis examples")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed, to reproduce")
    parser.add_argument(
        "--slow", type=float, default=SLOW_SECONDS, help="seconds one example may take"
    )
    parser.add_argument(
        "--shrink",
        action="store_true",
        help="let hypothesis shrink a failing example (off by default: the gateway is shared "
        "by every example, so a failure that left it degraded, an open breaker say, fails "
        "the shrunk examples too and the minimal one misleads)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="logs and failure dumps")
    parser.add_argument(
        "--no-bomb-floods",
        action="store_true",
        help="skip the floods of gzip'd calls with 1 MiB replies (they find the unbounded "
        "reply buffer each time; skip them to look for other bugs)",
    )
    parser.add_argument(
        "--progress", type=int, default=500, help="a progress line every N examples (0: none)"
    )
    options = parser.parse_args(argv)
    KNOBS.bomb_floods = not options.no_bomb_floods
    KNOBS.progress_every = options.progress
    chosen = options.seed if options.seed is not None else random.randrange(2**32)
    print(f"seed {chosen} (reproduce with --seed {chosen})", flush=True)
    rig = Rig(options.workdir)
    stats = Stats()
    failed = False
    started = time.monotonic()
    try:
        print(
            f"gateway pid {rig.pid} (log {rig.gateway_log.path}), client side "
            f"{rig.ports['client']}, server side {rig.ports['server']}, "
            f"rss {rig.rss_start} KiB",
            flush=True,
        )
        target = build(
            rig,
            options.examples,
            seed=chosen,
            shrink=options.shrink,
            slow=SlowLog(options.slow),
            stats=stats,
        )
        try:
            target()
        except Exception as exc:
            failed = True
            sys.stdout.flush()
            traceback.print_exception(exc, limit=-3)
            sys.stderr.write(f"FAIL: {type(exc).__name__}: {exc}\n")
            sys.stderr.flush()
        now, _peak = rig.rss()
        print(
            f"{stats.summary()}\nrss {rig.rss_start} -> {now} KiB (peak {rig.peak} KiB); "
            f"{time.monotonic() - started:.1f} s",
            flush=True,
        )
        if stats.slowest_plans:
            print(f"slowest example: {stats.slowest_plans}", flush=True)
    finally:
        code = rig.stop()
    if code != 0:
        print(f"FAIL: the gateway's exit code on SIGTERM was {code}", flush=True)
        failed = True
    print(f"{'FAIL' if failed else 'ok'} seed {chosen}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
