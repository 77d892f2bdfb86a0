"""What every listener fuzzer (``fuzz_*_listener.py``) checks the gateway process with: the
invariants it breaks, its peak memory, and its log's bad lines."""

from __future__ import annotations

from pathlib import Path
from typing import Final

__all__ = ["BAD_LOG_WORDS", "InvariantBroken", "LogTail", "ProbeFailure", "vm_hwm_kib"]

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
