"""Phases: each one's own time (an inner phase is taken out of the outer), so they add up to the wall time."""

import lib.core.timing
from lib.core.timing import format_phases, phase, record, recorded


def test_an_inner_phase_is_taken_out_of_the_outer_one_and_a_repeated_phase_replaces_its_time(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(lib.core.timing.time, "perf_counter", lambda: now[0])
    with phase("outer"):
        now[0] += 1.0
        with phase("inner"):
            now[0] += 2.0
        now[0] += 0.5
    assert recorded()["outer"] == 1.5 and recorded()["inner"] == 2.0
    record("outer", 4.0)
    assert recorded()["outer"] == 4.0 and list(recorded())[-1] == "outer"  # in the order they last ended
    assert format_phases({"a": 1.0, "b": 0.25}) == "a 1.00 s, b 0.25 s (total 1.2 s)"


def test_the_start_up_is_timed_from_the_process_s_real_start():
    import subprocess
    import sys
    import time

    started = time.perf_counter()
    script = "from lib.core.timing import since_process_start as age; print(age())"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    # the kernel counts the start in 10 ms ticks; psutil's create_time read up to a second too much (whole seconds)
    assert 0 < float(done.stdout) < wall + 0.02


def test_a_warm_child_counts_its_start_up_from_the_command_s_start():
    import time

    from lib.core.timing import _process_started, set_process_start, since_process_start

    try:
        set_process_start(time.time() - 5)
        assert 5 <= since_process_start() < 6
    finally:
        _process_started.clear()
