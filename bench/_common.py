"""Helpers shared by the benchmarks: child processes, readiness polls, CPU accounting, py-spy.

Everything that waits polls a condition against a deadline; nothing sleeps blindly. Child
processes run in their own session (so a Ctrl-C in the terminal reaches only the benchmark,
which then stops them in order) and get a parent-death signal, so they do not outlive a
benchmark that is killed outright.
"""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import hiredis
import yaml

#: The repository's top folder.
ROOT = Path(__file__).resolve().parent.parent

CLK_TCK = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1


class BenchError(Exception):
    """A failure to report in one line (missing tool, server that did not start...)."""


def exit_code(main: Callable[[], int]) -> int:
    """Run a benchmark's ``main``; a :class:`BenchError` is printed in one line, exit 2."""
    try:
        return main()
    except BenchError as exc:
        print(f"bench: {exc}")
        return 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 10 ms until it is true; raise BenchError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)


def _deathsig(sig: int) -> Callable[[], None]:
    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return preexec


def spawn(
    argv: Sequence[str],
    *,
    stdout: IO[Any] | int | None = subprocess.DEVNULL,
    stderr: IO[Any] | int | None = subprocess.STDOUT,
    death_signal: int = signal.SIGTERM,
    **kwargs: Any,
) -> subprocess.Popen[bytes]:
    """Start a long-lived child in its own session that gets ``death_signal`` if we die."""
    return subprocess.Popen(
        list(argv),
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        preexec_fn=_deathsig(death_signal),
        **kwargs,
    )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10) -> int:
    """Send ``sig`` and wait up to ``timeout`` s; SIGKILL after that. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise BenchError(
            f"pid {proc.pid} ({proc.args!r}) ignored signal {sig} for {timeout:g}s"
        ) from None


class Gateway:
    """One ``resmesh run`` process of a benchmark, from its config file to a checked stop.

    :meth:`start` writes ``config`` to ``config_path``, runs the gateway with unbuffered output
    into ``<config_path minus suffix>.log`` and polls ``ready(port)`` until it is true; a
    gateway that exits meanwhile raises :class:`BenchError` with its log's tail. :meth:`stop`
    (registered on ``stack``, so it also runs on the way out of a failure) sends SIGTERM and
    expects exit 0: another code is noted as an ERROR with the log's tail. ``exit`` holds the
    code once stopped. ``name`` labels the messages ("the NAME gateway"); empty, "the gateway".
    """

    def __init__(
        self,
        stack: ExitStack,
        config_path: Path,
        port: int,
        *,
        name: str = "",
        tail_lines: int = 30,
        stop_timeout: float = 20,
    ) -> None:
        self.stack = stack
        self.config_path = config_path
        self.log = config_path.with_suffix(".log")
        self.port = port
        self.title = f"{name} gateway" if name else "gateway"
        self.tail_lines = tail_lines
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit: int | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"the {self.title} is not running"
        return self.proc.pid

    def start(
        self,
        config: dict[str, Any],
        ready: Callable[[int], bool],
        what: str,
        *,
        timeout: float = 30,
        env: dict[str, str] | None = None,
        wrapper: Sequence[str] = (),
    ) -> Gateway:
        """Start the gateway (under ``wrapper``, valgrind for example) and wait up to
        ``timeout`` s for ``ready(port)``; ``what`` ends "the gateway to WHAT on port N"."""
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        log = self.stack.enter_context(self.log.open("wb"))
        argv = [*wrapper, sys.executable, "-m", "resmesh", "run", "-c", str(self.config_path)]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = self.proc = spawn(argv, stdout=log, cwd=ROOT, env=full_env)
        self.stack.callback(self.stop)

        def started() -> bool:
            if proc.poll() is not None:
                raise BenchError(
                    f"the {self.title} exited with code {proc.returncode} during startup; "
                    f"its log:\n{self.log_tail()}"
                )
            return ready(self.port)

        wait_until(started, timeout, f"the {self.title} to {what} on port {self.port}")
        return self

    def stop(self) -> int | None:
        """SIGTERM, then the exit code (noted as an ERROR unless 0); None if not running."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        code = self.exit = stop(proc, signal.SIGTERM, timeout=self.stop_timeout)
        if code != 0:
            note(f"ERROR: the {self.title} exited with code {code} after SIGTERM (expected 0)")
            note(self.log_tail())
        else:
            note(f"{self.title} stopped cleanly (exit 0); log: {self.log}")
        return code

    def log_tail(self, lines: int | None = None) -> str:
        if not self.log.exists():
            return ""
        text = self.log.read_text(errors="replace")
        return "\n".join(text.splitlines()[-(lines or self.tail_lines) :])


def cluster_config(source: Path, port: int, backends: Sequence[int]) -> dict[str, Any]:
    """The config in ``source`` with its ``bench`` cluster listening on ``port`` in front of
    the Redis ``backends`` (the first takes the writes when there are several)."""
    config = yaml.safe_load(source.read_text())
    cluster = config["clusters"]["bench"]
    cluster["listen"] = f"127.0.0.1:{port}"
    nodes: list[object] = [f"127.0.0.1:{backend}" for backend in backends]
    if len(nodes) > 1:
        nodes[0] = {"address": nodes[0], "role": "primary"}  # replicated: the first takes writes
    cluster["groups"] = {"dc-a": nodes}
    return dict(config)


def start_redis(stack: ExitStack) -> int:
    """A redis-server of the benchmark's own, so the shared one on 6379 is left alone."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server not found (apt-get install redis-server)")
    port = free_port()
    workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="resmesh-bench-"))
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    proc = spawn([*argv, "--appendonly", "no", "--dir", workdir], death_signal=signal.SIGKILL)
    stack.callback(stop, proc, signal.SIGKILL)
    wait_until(lambda: ping(port), 10, f"redis-server on port {port}")
    return port


# --- CPU accounting --------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children[int(fields[1])].append(int(entry.name))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (gateway worker processes, for example)."""
    children = _children_map()
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def cpu_seconds(pid: int, *, tree: bool = False) -> float:
    """user+sys CPU seconds of ``pid`` (plus its reaped children's), or of its whole tree.

    Fields after the command name: state(0) ppid(1) ... utime(11) stime(12) cutime(13)
    cstime(14), in clock ticks.
    """
    pids = process_tree(pid) if tree else [pid]
    ticks = 0
    for index, current in enumerate(pids):
        fields = _stat_fields(current)
        if fields is None:
            continue
        ticks += int(fields[11]) + int(fields[12])
        if index == 0:  # children the root reaped already (a worker that exited)
            ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def process_cpu_snapshot() -> dict[int, tuple[str, int]]:
    """pid -> (command name, user+sys ticks) for every live process."""
    snapshot = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        snapshot[int(entry.name)] = (
            raw[raw.index("(") + 1 : raw.rindex(")")],
            int(fields[11]) + int(fields[12]),
        )
    return snapshot


def busiest_others(
    before: dict[int, tuple[str, int]],
    after: dict[int, tuple[str, int]],
    exclude: set[int],
    limit: int = 3,
) -> tuple[list[tuple[str, float]], float]:
    """The processes outside ``exclude`` that used the most CPU between two snapshots.

    Returns the ``limit`` busiest as (``name[pid]``, CPU seconds) and the CPU seconds of all
    of them; processes that started and exited in between appear in neither.
    """
    used = []
    for pid, (name, ticks) in after.items():
        if pid in exclude:
            continue
        delta = ticks - before.get(pid, (name, 0))[1]
        if delta > 0:
            used.append((f"{name}[{pid}]", delta / CLK_TCK))
    used.sort(key=lambda item: item[1], reverse=True)
    return used[:limit], sum(cpu for _, cpu in used)


def system_cpu_seconds() -> tuple[float, float]:
    """Busy CPU seconds on the whole machine so far (all CPUs; /proc/stat): (busy, irq).

    ``busy`` counts everything but idle and iowait; ``irq`` is the part spent in hard and soft
    interrupts (loopback TCP is processed in softirq).
    """
    with open("/proc/stat") as file:
        values = [int(v) for v in file.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest is in user already.
    busy = sum(values[:8]) - values[3] - values[4]
    return busy / CLK_TCK, (values[5] + values[6]) / CLK_TCK


def children_cpu_seconds() -> float:
    """user+sys CPU of every child this process has reaped (waited for) so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


# --- a tiny synchronous RESP client (setup and checks only, never on the measured path) ------


class RespClient:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.reader = hiredis.Reader()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RespClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pipeline(self, commands: Sequence[Sequence[str | bytes | int]]) -> list[Any]:
        # hiredis's stub types the argument as a 1-tuple; any tuple of args is accepted.
        packed = (hiredis.pack_command(tuple(c)) for c in commands)  # type: ignore[arg-type]
        self.sock.sendall(b"".join(packed))
        replies: list[Any] = []
        while len(replies) < len(commands):
            reply = self.reader.gets()
            if reply is False:
                data = self.sock.recv(65536)
                if not data:
                    raise BenchError("connection closed while waiting for replies")
                self.reader.feed(data)
                continue
            replies.append(reply)
        return replies

    def call(self, *command: str | bytes | int) -> Any:
        reply = self.pipeline([command])[0]
        if isinstance(reply, hiredis.ReplyError):
            raise BenchError(f"{command[0]!r} failed: {reply}")
        return reply


def ping(port: int) -> bool:
    """True when something on ``port`` answers PING with PONG."""
    try:
        with RespClient(port, timeout=0.5) as client:
            return bool(client.call("PING") in (b"PONG", "PONG"))
    except (OSError, BenchError):
        return False


def info(port: int, section: str) -> dict[str, str]:
    with RespClient(port) as client:
        text = client.call("INFO", section).decode()
    out = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            out[key] = value
    return out


# --- py-spy raw (collapsed stack) profiles ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class FunctionCost:
    name: str
    self_pct: float
    total_pct: float


def _frame_key(frame: str) -> str:
    """'send_all (trio/_highlevel_socket.py:123)' -> 'send_all (trio/_highlevel_socket.py)'."""
    name, sep, location = frame.partition(" (")
    if not sep:
        return frame
    location = location.rstrip(")")
    path, _, line = location.rpartition(":")
    if line.isdigit():
        location = path
    for marker in ("site-packages/", "/resmesh/", "lib/python3"):
        index = location.find(marker)
        if index >= 0:
            location = location[index + len(marker) :].lstrip("/")
            if marker == "/resmesh/":
                location = "resmesh/" + location
            elif marker == "lib/python3":
                location = "stdlib:" + location.partition("/")[2]
            break
    return f"{name} ({location})"


def top_functions(raw_profile: Path, limit: int = 15) -> tuple[int, list[FunctionCost]]:
    """Parse py-spy ``--format raw`` output; the ``limit`` functions with most self time.

    Each line is ``frame;frame;...;leaf COUNT`` (root first). Self time goes to the leaf;
    inclusive time to every distinct function on the stack once.
    """
    self_counts: dict[str, int] = defaultdict(int)
    total_counts: dict[str, int] = defaultdict(int)
    samples = 0
    for line in raw_profile.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [
            _frame_key(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))
        ]
        if not frames:
            continue
        samples += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            total_counts[frame] += count
    ranked = sorted(self_counts.items(), key=lambda item: item[1], reverse=True)[:limit]
    return samples, [
        FunctionCost(name, 100 * n / samples, 100 * total_counts[name] / samples)
        for name, n in ranked
    ]


def print_profile(label: str, path: Path) -> dict[str, Any]:
    samples, top = top_functions(path, 15)
    lines = [f"py-spy {label}: {samples} samples (on-CPU), top functions by self time"]
    lines.append(f"  {'self%':>6} {'total%':>6}  function")
    lines += [f"  {f.self_pct:6.1f} {f.total_pct:6.1f}  {f.name}" for f in top]
    text = "\n".join(lines)
    print(text)
    path.with_name(path.stem + "-top.txt").write_text(text + "\n")
    return {
        "file": str(path),
        "samples": samples,
        "top": [
            {"function": f.name, "self_pct": f.self_pct, "total_pct": f.total_pct} for f in top
        ],
    }


def git_revision() -> str:
    """The checkout's commit, with ``+dirty`` when resmesh/ has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "resmesh"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "?"
    return (head or "?") + ("+dirty" if dirty else "")


#: A run's other-process CPU below this is no noise, whatever its share of a short window.
NOISE_FLOOR_S = 0.25
INSTALL_PYSPY = "py-spy not found: pip install py-spy (it is in resmesh's [dev] extras)"


def note(text: str) -> None:
    """Progress and diagnostics go to stderr; stdout carries the results."""
    print(text, file=sys.stderr, flush=True)


def kill_if_running(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def start_profiler(
    pid: int,
    path: Path,
    stack: ExitStack,
    *,
    rate: int,
    subprocesses: bool,
    fmt: str = "raw",
    extra: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """``py-spy record`` on ``pid`` into ``path``, attached (it is killed when ``stack``
    closes; stop it with SIGINT to have it write its output)."""
    pyspy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if pyspy is None:
        raise BenchError(INSTALL_PYSPY)
    log_path = path.with_name(path.name + ".log")
    argv = [pyspy, "record", "--pid", str(pid), "--rate", str(rate), "--format", fmt]
    argv += ["-o", str(path), *extra, *(["--subprocesses"] if subprocesses else [])]
    with log_path.open("wb") as log:
        proc = spawn(argv, stdout=log, death_signal=signal.SIGINT)

    def sampling() -> bool:
        if proc.poll() is not None:
            raise BenchError(f"py-spy exited with code {proc.returncode}: {log_path.read_text()}")
        return "Sampling process" in log_path.read_text(errors="replace")

    wait_until(sampling, 15, "py-spy to attach to the gateway")
    stack.callback(kill_if_running, proc)
    return proc


class Noisy(Protocol):
    """A measured run that says how much other processes loaded the box during it."""

    other_cpu_s: float
    discarded: bool

    @property
    def noise(self) -> float: ...


_R = TypeVar("_R", bound=Noisy)


def quietest(run_once: Callable[[], _R], max_noise: float, retries: int) -> tuple[_R, list[_R]]:
    """``run_once`` again while other processes load the box more than ``max_noise`` (a
    negative one never retries), at most ``retries`` times: the quietest run and the ones
    discarded (marked so)."""
    attempts: list[_R] = []
    while True:
        run = run_once()
        attempts.append(run)
        if max_noise < 0 or run.noise <= max_noise or run.other_cpu_s <= NOISE_FLOOR_S:
            break
        if len(attempts) > retries:
            note(f"    still noisy after {retries} retries: keeping the quietest run")
            break
        note(f"    noise {100 * run.noise:.0f}% > {100 * max_noise:.0f}%: retrying")
    best = min(attempts, key=lambda r: r.noise)
    for attempt in attempts:
        attempt.discarded = attempt is not best
    return best, [a for a in attempts if a.discarded]


def _raise_interrupt(signum: int, frame: object) -> None:
    # Once: a second Ctrl-C must not cut the cleanup (stopping what the bench started) short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def interrupt_on_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt, so the bench cleans up (SIGINT
    explicitly too: a shell may start background jobs with SIGINT ignored)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
