"""Counting the scheduler's work, for benchmarks: task steps per proxied command.

At ``-P 1`` a proxied command's CPU is mostly per wakeup, so the number of task steps (times
Trio resumes a task) per command is the figure to drive down, next to syscalls per command.
With ``RESMESH_TASK_STEPS=FILE`` in its environment, a gateway process counts its task steps
(a Trio instrument: it costs a Python call per step, so it is off otherwise) and, on each
``SIGUSR2``, appends ``PID STEPS`` to ``FILE``; ``bench/redis.py --counters`` reads it before
and after a run.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Final

import trio

__all__ = ["ENV", "StepCounter", "report_steps"]

#: The environment variable that turns counting on and names the file.
ENV: Final = "RESMESH_TASK_STEPS"


class StepCounter(trio.abc.Instrument):
    """Counts task steps."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1


async def report_steps(path: Path) -> None:
    """Count this run's task steps and append them to ``path`` on every ``SIGUSR2``, until
    cancelled."""
    counter = StepCounter()
    trio.lowlevel.add_instrument(counter)
    try:
        with trio.open_signal_receiver(signal.SIGUSR2) as signals:
            async for _ in signals:
                with path.open("a") as out:
                    out.write(f"{os.getpid()} {counter.steps}\n")
    finally:
        trio.lowlevel.remove_instrument(counter)
