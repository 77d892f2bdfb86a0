"""What every listener fuzzer (``fuzz_*_listener.py``) checks the gateway process with: the
invariants it breaks, its peak memory, and its log's bad lines."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, TypeVar

__all__ = [
    "BAD_LOG_WORDS",
    "InvariantBroken",
    "LogTail",
    "ProbeFailure",
    "exchange_all",
    "vm_hwm_kib",
]

_T = TypeVar("_T")

#: Words that must never appear in the gateway's log while it is fuzzed.
BAD_LOG_WORDS: Final = ("unexpected error", "Traceback")


class InvariantBroken(AssertionError):
    """The gateway broke an invariant of the run (health, liveness, memory, log)."""


class ProbeFailure(AssertionError):
    """The gateway broke an invariant on one connection's stream."""


def vm_hwm_kib(pid: int) -> int:
    """Peak resident memory of process ``pid`` in KiB (``VmHWM``: catches a spike that is
    freed again before ``VmRSS`` is read)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise InvariantBroken(f"no VmHWM for pid {pid}")


class LogTail:
    """A log file read a new part at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def new_bad_lines(self) -> list[str]:
        with self.path.open("rb") as file:
            file.seek(self._offset)
            data = file.read()
        end = data.rfind(b"\n") + 1  # a line being written is read next time
        self._offset += end
        lines = data[:end].decode("utf-8", "replace").splitlines()
        return [line for line in lines if any(word in line for word in BAD_LOG_WORDS)]


def exchange_all(calls: Sequence[Callable[[], _T]], join_timeout: float) -> list[_T]:
    """Run ``calls`` at once (the first in this thread, each other one in a thread of its
    own, so an example's connections overlap) and return their results in order.

    Raises:
        BaseException: the first exception a call raised.
        ProbeFailure: a call's thread did not finish within ``join_timeout``.
    """
    results: list[_T | BaseException | None] = [None] * len(calls)

    def one(index: int) -> None:
        try:
            results[index] = calls[index]()
        except BaseException as exc:
            results[index] = exc

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(calls))]
    for thread in threads[1:]:
        thread.start()
    if calls:
        one(0)
    for thread in threads[1:]:
        thread.join(join_timeout)
    done: list[_T] = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        if result is None:
            raise ProbeFailure("a connection's thread did not finish")
        done.append(result)
    return done
