"""Where a run's time goes: named phases, in seconds, as member.json's "phases" and the run log show them.

A phase's time is its own: a phase inside another (calibration inside evaluation) is taken out of the outer
one, so the phases add up to the run's wall time. Phases are recorded per process, in the order they first
end; a phase run again (the next member of an ensemble) replaces its time. Training on torchrun ranks is
timed inside the Trainer run and handed back with its outcome (lib.train.engine.TrainerRun.phases).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

_recorded: dict[str, float] = {}
_process_started: list[float] = []  # set_process_start's: a warm child's command started in another process
_local = threading.local()  # the stack of open phases of this thread: [name, started, time of inner phases]


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Time the block as `name` (its own time: phases opened inside it are not counted here)."""
    stack = _stack()
    stack.append([name, time.perf_counter(), 0.0])
    try:
        yield
    finally:
        _, started, inner = stack.pop()
        elapsed = time.perf_counter() - started
        if stack:
            stack[-1][2] += elapsed
        record(name, elapsed - inner)


def record(name: str, seconds: float) -> None:
    """Record a phase timed elsewhere (the process's start-up; a Trainer run's parts)."""
    _recorded.pop(name, None)  # a phase run again goes to the end, in the order it last ended
    _recorded[name] = round(max(seconds, 0.0), 3)


def recorded() -> dict[str, float]:
    """The phases so far, in seconds."""
    return dict(_recorded)


def since_process_start() -> float:
    """Seconds since this process started (what its imports and set-up took, read at the start of main).

    On Linux from the kernel's own clock: psutil's create_time adds the start's clock ticks to the boot time, which
    /proc/stat gives in whole seconds, so its figure was up to a second too long (0.57 s measured: a 0.2 s start-up
    shown as 0.75 s).
    """
    if _process_started:
        return time.time() - _process_started[-1]
    if sys.platform.startswith("linux"):
        with open("/proc/self/stat", "rb") as stat:  # the fields after the command's closing parenthesis
            started_ticks = int(stat.read().rsplit(b")", 1)[1].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started_ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - psutil.Process().create_time()


def set_process_start(epoch_seconds: float) -> None:
    """Count this process's start-up from another process's start (flows.warm: the astft command that handed
    its run to this forked child), as time.time() gives it."""
    _process_started[:] = [epoch_seconds]


def format_phases(phases: dict[str, float]) -> str:
    """One line: "plan 0.12 s, scan 0.40 s, ... (total 12.3 s)"."""
    parts = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in phases.items())
    return f"{parts} (total {sum(phases.values()):.1f} s)"


def _stack() -> list[list]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack
