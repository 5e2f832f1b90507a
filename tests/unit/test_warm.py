"""The warm start (flows.warm): a command runs in a child of the warm process, with its own terminal, folder,
environment and exit code; its signals reach the child; none runs warm with another environment."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows import warm

ROOT = Path(__file__).resolve().parents[2]


def warm_env(home: Path, **extra: str) -> dict[str, str]:
    """The tests' environment with the warm start on; without pytest's PYTEST_CURRENT_TEST, which names each
    test, so that the commands of several tests share one key."""
    environ = {name: value for name, value in os.environ.items() if name != "PYTEST_CURRENT_TEST"}
    return {**environ, "ASTFT_HOME": str(home), "PYTHONPATH": str(ROOT), warm.ENABLE_VARIABLE: "1", **extra}


def astft(*args: str, env: dict[str, str], **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, **options)


def served_commands(home: Path) -> list[str]:
    """The warm process log's lines for the commands it ran."""
    return [line for log in (home / "warm").glob("*.log") for line in log.read_text().splitlines()
            if ": " in line and " (in " in line]


def wait_until_ready(home: Path, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = list((home / "warm").glob("*.ready"))
        if ready:
            return ready[0].with_suffix(".sock")
        time.sleep(0.1)
    raise AssertionError(f"no warm process became ready under {home}")


def start_blocked_command(dataset_dirs, ssl_checkpoint, tmp_path: Path, env: dict[str, str],
                          ignore: tuple[int, ...] = ()) -> subprocess.Popen:
    """astft finetune --wait on a work dir whose lock is held: it waits in its plan (no flow, no server) until
    signalled."""
    train, validation = dataset_dirs
    command = [sys.executable, "-m", "flows", "finetune", "--train-dir", str(train), "--validation-dir",
               str(validation), "--ssl-checkpoint", str(ssl_checkpoint), "--name", "blocked", "--output-dir",
               str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--wait",
               "--set", "features.max_frames=null", "--set", "features.clip_seconds=0.6"]

    def signals() -> None:
        # SIGINT as a terminal's Ctrl-C delivers it (a shell running the tests may ignore it, and children inherit
        # that); the ignored ones as nohup leaves them
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        for number in ignore:
            signal.signal(number, signal.SIG_IGN)

    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=signals)


def child_pid(home: Path, before: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = served_commands(home)
        if len(lines) > before:
            return int(lines[-1].split("pid ", 1)[1].split(":", 1)[0])
        time.sleep(0.05)
    raise AssertionError("the warm process ran no new command")


def gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_the_key_follows_the_environment_and_install_folders_not_the_working_folder(tmp_path):
    packages = tmp_path / "site-packages"
    packages.mkdir()
    path = [str(tmp_path / "repo"), str(packages)]
    environ = {"HOME": "/home/someone", "PWD": "/a"}
    key = warm.warm_key(environ, path)
    assert warm.warm_key({**environ, "PWD": "/b", "OLDPWD": "/a"}, path) == key
    assert warm.warm_key({**environ, "HF_HUB_OFFLINE": "1"}, path) != key
    assert warm.warm_key({**environ, "ASTFT_WARM": "1", "ASTFT_WARM_IDLE_S": "3"}, path) == key
    (tmp_path / "repo").mkdir()  # a run's outputs in the working folder
    assert warm.warm_key(environ, path) == key
    time.sleep(0.01)
    (packages / "newly_installed").mkdir()
    assert warm.warm_key(environ, path) != key


def test_a_socket_path_too_long_for_unix_turns_the_warm_start_off_and_status_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("ASTFT_HOME", str(tmp_path / ("x" * 120)))
    assert warm.socket_path("k" * 24) is None
    assert "ASTFT_HOME's path is too long" in warm.status()
    monkeypatch.setenv("ASTFT_HOME", str(tmp_path))
    assert warm.socket_path("k" * 24) == tmp_path / "warm" / f"{'k' * 24}.sock"


def test_only_the_heavy_commands_run_warm_and_astft_warm_0_turns_it_off(monkeypatch):
    monkeypatch.setenv(warm.ENABLE_VARIABLE, "1")
    assert warm.enabled(["astft", "finetune", "--help"]) is sys.platform.startswith("linux")
    assert not warm.enabled(["astft", "server", "status"])
    assert not warm.enabled(["astft"])
    monkeypatch.setenv(warm.ENABLE_VARIABLE, "0")
    assert not warm.enabled(["astft", "finetune"])


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the warm start is Linux-only")



@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """An ASTFT_HOME with a warm process ready for the tests' environment."""
    home = tmp_path_factory.mktemp("warm-home")
    started = subprocess.run([sys.executable, "-m", "flows.warm", "start"], cwd=ROOT, env=warm_env(home),
                             capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stderr
    yield home
    stop_servers(home)


def stop_servers(home: Path) -> None:
    """The warm processes and the local Prefect server a blocked command started (it blocks inside its flow)."""
    astft("server", "stop", "--force", env=warm_env(home))


@linux_only
def test_without_a_warm_process_a_command_runs_in_its_own_and_then_starts_one(tmp_path):
    done = astft("finetune", "--name", "x", env=warm_env(tmp_path))
    assert done.returncode == 2 and "astft: " in done.stderr  # the plan refused it, in this process
    assert served_commands(tmp_path) == []
    socket_file = wait_until_ready(tmp_path)
    assert socket_file.is_socket() and oct(socket_file.stat().st_mode & 0o777) == "0o700"
    warm.stop_all(tmp_path)


@linux_only
def test_a_command_runs_in_the_warm_process_with_its_output_and_exit_code(home, tmp_path):
    wait_until_ready(home)
    refused = astft("finetune", "--name", "x", env=warm_env(home))
    assert refused.returncode == 2 and "astft: invalid configuration" in refused.stderr
    assert refused.stdout == ""
    helped = astft("predict", "--help", env=warm_env(home))
    assert helped.returncode == 0 and helped.stdout.startswith("usage: ")
    served = served_commands(home)
    assert [line.split(": ", 1)[1].split(" (in ")[0] for line in served[-2:]] == ["finetune --name x",
                                                                                   "predict --help"]


@linux_only
def test_the_warm_process_outlives_the_commands_it_runs(home):
    socket_file = wait_until_ready(home)
    pid = int(socket_file.with_suffix(".pid").read_text())
    before = len(served_commands(home))
    for _ in range(5):  # each command closes its socket as its child exits: the child must never clean up
        assert astft("predict", "--help", env=warm_env(home)).returncode == 0
    assert len(served_commands(home)) == before + 5
    assert socket_file.is_socket() and socket_file.with_suffix(".pid").read_text() == str(pid)
    os.kill(pid, 0)


@linux_only
def test_another_environment_is_not_served_by_this_warm_process(home):
    wait_until_ready(home)
    before = len(served_commands(home))
    done = astft("predict", "--help", env=warm_env(home, SOME_SETTING="changed"))
    assert done.returncode == 0
    assert len(served_commands(home)) == before  # ran in its own process (and started a second warm one)


@pytest.fixture
def blocked_command(dataset_dirs, ssl_checkpoint):
    """start(home, tmp_path, ignore=()): a command running in home's warm process, waiting for a work dir this test
    holds; returns it and its child's pid."""
    from lib.core.locks import folder_lock

    with contextlib.ExitStack() as held:
        def start(home: Path, tmp_path: Path, ignore: tuple[int, ...] = ()) -> tuple[subprocess.Popen, int]:
            held.enter_context(folder_lock(tmp_path / "out" / "runs" / "blocked", "the test's own run"))
            wait_until_ready(home)
            before = len(served_commands(home))
            command = start_blocked_command(dataset_dirs, ssl_checkpoint, tmp_path, warm_env(home), ignore)
            child = child_pid(home, before)
            time.sleep(1)  # into its plan, waiting for the lock
            return command, child

        yield start


@linux_only
def test_ctrl_c_reaches_the_warm_child(home, blocked_command, tmp_path):
    command, child = blocked_command(home, tmp_path)
    # ps and pkill -f see the command, not the warm process (pkill -f flows.warm must not end a run)
    assert Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"astft finetune --train-dir ")
    assert Path(f"/proc/{child}/comm").read_text().strip() == "astft"
    command.send_signal(signal.SIGINT)
    _, stderr = command.communicate(timeout=60)
    assert command.returncode == 130 and "interrupted" in stderr
    assert gone(child)


@linux_only
def test_a_command_killed_outright_interrupts_its_warm_child(home, blocked_command, tmp_path):
    command, child = blocked_command(home, tmp_path)
    command.kill()
    command.communicate(timeout=60)
    assert gone(child)


def process_state(pid: int) -> str:
    """R, S, T (stopped) ...: the state letter in /proc/PID/stat."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@linux_only
def test_term_sent_to_the_command_ends_its_warm_child_and_the_command_as_term(home, blocked_command, tmp_path):
    command, child = blocked_command(home, tmp_path)
    command.terminate()
    command.communicate(timeout=60)
    assert command.returncode == -signal.SIGTERM and gone(child)


@linux_only
def test_a_hangup_the_command_ignores_nohup_style_does_not_reach_its_warm_child(home, blocked_command, tmp_path):
    command, child = blocked_command(home, tmp_path, ignore=(signal.SIGHUP,))
    command.send_signal(signal.SIGHUP)
    time.sleep(1)
    assert command.poll() is None and not gone(child, timeout=0)
    command.send_signal(signal.SIGINT)
    command.communicate(timeout=60)
    assert command.returncode == 130 and gone(child)


@linux_only
def test_ctrl_z_stops_the_warm_child_with_the_command_and_fg_continues_both(home, blocked_command, tmp_path):
    command, child = blocked_command(home, tmp_path)
    command.send_signal(signal.SIGTSTP)
    time.sleep(1)
    assert process_state(child) == "T" and process_state(command.pid) == "T"
    command.send_signal(signal.SIGCONT)
    time.sleep(1)
    assert process_state(child) != "T" and process_state(command.pid) != "T"
    command.send_signal(signal.SIGINT)
    command.communicate(timeout=60)
    assert command.returncode == 130 and gone(child)


@linux_only
def test_a_command_outliving_its_warm_process_does_not_keep_a_new_one_from_starting(blocked_command, tmp_path,
                                                                                      tmp_path_factory):
    home = tmp_path_factory.mktemp("home")  # a short path: a socket's is at most 108 bytes
    started = subprocess.run([sys.executable, "-m", "flows.warm", "start"], cwd=ROOT, env=warm_env(home),
                             capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stderr
    command, child = blocked_command(home, tmp_path)
    stopped = warm.stop_all(home)
    assert stopped and all(gone(pid) for pid in stopped) and not gone(child, timeout=0)
    again = subprocess.run([sys.executable, "-m", "flows.warm", "start"], cwd=ROOT, env=warm_env(home),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr  # the key's lock went with the warm process, not its child
    command.send_signal(signal.SIGINT)
    command.communicate(timeout=60)
    assert command.returncode == 130 and gone(child)
    stop_servers(home)


@linux_only
def test_astft_server_shows_and_stops_the_warm_processes(tmp_path):
    home = tmp_path
    assert subprocess.run([sys.executable, "-m", "flows.warm", "start"], cwd=ROOT, env=warm_env(home),
                          timeout=300).returncode == 0
    socket_file = wait_until_ready(home)
    pid = int(socket_file.with_suffix(".pid").read_text())
    status = astft("server", "status", env=warm_env(home, ASTFT_WARM_IDLE_S="5"))  # not this process's setting
    assert status.returncode == 0 and f"pid {pid} (ends after 900 s unused)" in status.stdout
    stopped = astft("server", "stop", "--force", env=warm_env(home))
    assert stopped.returncode == 0 and "stopped the warm process(es): pid " in stopped.stdout
    assert gone(pid) and not socket_file.exists()
    after = astft("server", "status", env=warm_env(home))
    assert "no warm process is running" in after.stdout


def test_a_warm_process_unused_for_its_idle_time_ends_and_removes_its_socket(tmp_path):
    where = tmp_path / "warm" / "k.sock"
    process = warm.start(where, {**os.environ, warm.IDLE_VARIABLE: "1"}, [str(ROOT), *sys.path])
    process.wait(timeout=120)
    assert not where.exists() and "idle for 1 s: exiting" in where.with_suffix(".log").read_text()


@linux_only
def test_a_command_runs_in_its_own_process_when_the_warm_one_does_not_answer(monkeypatch, tmp_path):
    import socket

    monkeypatch.setenv("ASTFT_HOME", str(tmp_path))
    monkeypatch.setattr(warm, "COMMAND_WAIT_SECONDS", 0.5)
    where = warm.socket_path("k" * 24)
    where.parent.mkdir(mode=0o700)
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # listening, never answering: stuck in its imports
    stuck.bind(str(where))
    stuck.listen(1)
    try:
        started = time.monotonic()
        assert warm.run_warm(["astft", "predict", "--help"], "k" * 24) is None
        assert time.monotonic() - started < 5
    finally:
        stuck.close()
