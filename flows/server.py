"""The Prefect server the CLI's flows report to: the user's own, or a local one astft starts and keeps.

Where PREFECT_API_URL is set (a user's server, Prefect Cloud, the test harness), flows report there and
nothing is started. Otherwise the CLI uses a local server that outlives the run: started on first use in
the background, while the run imports and plans (start_local_server_early; its own session, so a Ctrl-C in
the terminal does not reach it), bound to 127.0.0.1, its
database under ASTFT_HOME (default ~/.astft/server/), and reused by every later run, so runs, logs and
artifacts stay in its UI after the run ends and no run pays the server's start-up (about 11 s) again.
`astft server status|stop` shows or stops it. `--ephemeral` keeps Prefect's old behaviour instead: a
server of the run's own, with a temporary database, stopped when the run ends and killed with it on Linux
(a `kill -9` of the run leaves no server behind).

Hand-written because Prefect's own temporary server (prefect.server.api.server.SubprocessASGIServer) runs
in the terminal's process group (Ctrl-C killed it first, and the client then retried a dead API for 141 s),
outlives a killed run, and keeps nothing; `prefect server start` is a foreground command for a user to run.
The server itself is Prefect's app (uvicorn on prefect.server.api.server:create_app), as both of those run it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

# why 120 s: docs/decisions.md, "A 120 s start timeout for Prefect's temporary server"
STARTUP_TIMEOUT_SECONDS = 120
STATE_FILE = "server.json"  # pid, port, url, start time and Prefect version of the running local server
LOG_FILE = "server.log"
# 0: start the local server only when a flow is about to run, not while the CLI imports and plans (the tests' runs
# that stop at their plan need no server).
EARLY_START_VARIABLE = "ASTFT_EARLY_SERVER_START"


class ServerStartTimeout(RuntimeError):
    """The Prefect API server did not start in time; the message says what to set."""


def astft_home() -> Path:
    """Where astft keeps what outlives a run (the local server's database): ASTFT_HOME, else ~/.astft."""
    return Path(os.environ.get("ASTFT_HOME") or Path.home() / ".astft")


def server_folder() -> Path:
    return astft_home() / "server"


def startup_timeout() -> float:
    """Prefect's own setting where the user set it, else ours (Prefect's 20 s default is too short here)."""
    return float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS") or STARTUP_TIMEOUT_SECONDS)


def configured_api_url() -> str | None:
    """PREFECT_API_URL as Prefect sees it now (environment, profile, or a test harness's temporary setting)."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


@contextlib.contextmanager
def flow_server(ephemeral: bool = False) -> Iterator[str | None]:
    """Run the block's flows against a Prefect API; yields the URL of the server astft started or reuses (None
    where PREFECT_API_URL already names one)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if configured_api_url():
        yield None
        return
    from lib.core.timing import phase

    with contextlib.ExitStack() as stack:
        with phase("prefect server"):  # about 10 s where it starts; next to nothing where it is reused or started early
            url = stack.enter_context(temporary_server()) if ephemeral else _started_early() or local_server()
        stack.enter_context(temporary_settings(updates={PREFECT_API_URL: f"{url}/api", **quiet_heartbeats()}))
        yield url


def quiet_heartbeats() -> dict:
    """No flow-run heartbeats on astft's own server, unless the user set PREFECT_FLOWS_HEARTBEAT_FREQUENCY: they
    drive an automation that marks a silent run Crashed, which that server does not have (Prefect's docs: "Detect
    zombie flows"), and each flow run's end waits up to a second for the heartbeat thread's sleep."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    if any(name in os.environ for name in ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")):
        return {}
    return {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}


class _EarlyStart(threading.Thread):
    """local_server() on a thread of its own: the server's start-up (about 10 s, in a process of its own) overlaps
    the CLI's imports and planning instead of following them."""

    def __init__(self) -> None:
        super().__init__(name="astft-server-start", daemon=True)
        self.url: str | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.url = local_server()
        except BaseException as error:  # noqa: BLE001 - raised again in the main thread, where it is awaited
            self.error = error


_EARLY: list[_EarlyStart] = []


def start_local_server_early() -> None:
    """Begin finding or starting the local server now, in the background, where the flows will need it (no
    PREFECT_API_URL); flow_server() then waits for it. Only the persistent server: an --ephemeral one is killed
    with the thread that started it (Linux's parent-death signal follows the thread), so it starts in flow_server.
    A run that then fails its plan leaves the server running for the next one, as every run does."""
    if _EARLY or os.environ.get(EARLY_START_VARIABLE, "1") == "0" or configured_api_url():
        return
    _EARLY.append(_EarlyStart())
    _EARLY[0].start()


def _started_early() -> str | None:
    """The URL of the server start_local_server_early began (waiting for it), or None if none was begun."""
    if not _EARLY:
        return None
    early = _EARLY.pop()
    early.join()
    if early.error is not None:
        raise early.error
    return early.url


def local_server() -> str:
    """The URL of the local server, started now if none is running (one at a time: a second CLI starting at the
    same moment waits for the first's start and reuses its server)."""
    from lib.core.locks import file_lock

    folder = server_folder()
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / ".start.lock", "astft starting the local Prefect server", wait=True):
        state = running_state(folder)
        if state is not None:
            return state["url"]
        process, url = start_server(folder, persistent=True)
        try:
            _write_state(folder, process.pid, url)
        except BaseException:  # a server that server.json does not record could never be found or stopped
            stop_process(process.pid)
            raise
        return url


@contextlib.contextmanager
def temporary_server() -> Iterator[str]:
    """A server of this run's own, with a temporary database, stopped when the process exits (--ephemeral)."""
    folder = Path(tempfile.mkdtemp(prefix="astft-prefect-"))
    process, url = start_server(folder, persistent=False)

    def stop() -> None:
        stop_process(process.pid)
        shutil.rmtree(folder, ignore_errors=True)

    # At exit, not when the block ends: atexit runs last what was registered first, so Prefect's log and event
    # workers (started later) flush their last lines to the server before it stops, as Prefect's own does.
    atexit.register(stop)
    yield url


def running_state(folder: Path) -> dict | None:
    """server.json's record if its server is running and answers; else None (a stale record is removed, a server
    that no longer answers is stopped)."""
    try:
        state = json.loads((folder / STATE_FILE).read_text())
        pid, url = int(state["pid"]), str(state["url"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        state = None
    if state is None or not _is_our_server(pid, state.get("started")):
        found = _find_server_process(folder)  # server.json lost or garbled while its server runs
        if found is None:
            with contextlib.suppress(OSError):
                (folder / STATE_FILE).unlink(missing_ok=True)
            return None
        pid, url = found
        _write_state(folder, pid, url)
        state = json.loads((folder / STATE_FILE).read_text())
    if state.get("prefect") != _prefect_version() or not (healthy(url, timeout=5) or _booted(pid, url)):
        stop_process(pid)  # another Prefect version's, or hung: a fresh one is started in its place
        (folder / STATE_FILE).unlink(missing_ok=True)
        return None
    return state


def _booted(pid: int, url: str) -> bool:
    """Whether a server still within its start-up time (one that a run which then stopped at its plan began early)
    comes to answer before that time is up; one older than that is hung."""
    import psutil

    try:
        deadline = psutil.Process(pid).create_time() + startup_timeout()
    except psutil.Error:
        return False
    while time.time() < deadline:
        if healthy(url, timeout=1):
            return True
        time.sleep(0.2)
    return False


def start_server(folder: Path, persistent: bool) -> tuple[subprocess.Popen, str]:
    """Start Prefect's API and UI on a free port of 127.0.0.1, its database in folder; wait until it answers."""
    import prefect

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=str(folder), PREFECT_UI_ENABLED="true", PREFECT_UI_API_URL=f"{url}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
    )
    command = [
        sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
        "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port), "--log-level", "error",
        "--lifespan", "on",
    ]
    with open(folder / LOG_FILE, "ab") as log:
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=folder,
            start_new_session=True,  # not in the terminal's process group: Ctrl-C is the run's, not the server's
            preexec_fn=None if persistent else _die_with_parent,
        )
    try:
        _wait_until_healthy(process, url, folder)
    except BaseException:  # timed out, or Ctrl-C while it started: no server is left that nothing records
        stop_process(process.pid)
        raise
    return process, url


def _wait_until_healthy(process: subprocess.Popen, url: str, folder: Path) -> None:
    deadline = time.monotonic() + startup_timeout()
    while not healthy(url, timeout=1):
        if process.poll() is not None or time.monotonic() > deadline:
            why = f"exited with code {process.returncode}" if process.returncode is not None else (
                f"did not start within {startup_timeout():g} s (a busy machine?)")
            raise ServerStartTimeout(
                f"the Prefect server {why}; its log: {folder / LOG_FILE}. Set "
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=300, or start a server once (prefect server start) "
                "and export PREFECT_API_URL=http://127.0.0.1:4200/api"
            )
        time.sleep(0.2)


def healthy(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def stop_process(pid: int, grace_seconds: float = 5) -> None:
    """SIGTERM, then SIGKILL after the grace period; a process already gone is fine."""
    import psutil

    try:
        process = psutil.Process(pid)
        process.terminate()
        process.wait(grace_seconds)
    except psutil.TimeoutExpired:
        process.kill()
    except psutil.NoSuchProcess:
        pass


def stop_local_server(force: bool = False) -> str:
    """astft server stop: what was stopped, as a line to print. Refused (ConfigError) while flow runs are
    running on it, unless force: a run whose server goes away stalls instead of ending."""
    folder = server_folder()
    state = running_state(folder)
    if state is None:
        return f"no local Prefect server is running (state: {folder})"
    running = [] if force else running_flow_runs(state["url"])
    if running:
        from lib.core.errors import ConfigError

        raise ConfigError(
            f"{len(running)} flow run(s) are running on the local server ({', '.join(running[:5])}): stopping it "
            "now would stall them. Let them end, or pass --force (runs killed outright also stay 'running')"
        )
    stop_process(int(state["pid"]))
    (folder / STATE_FILE).unlink(missing_ok=True)
    return f"stopped the local Prefect server at {state['url']} (pid {state['pid']}); its runs stay in {folder}"


def running_flow_runs(url: str) -> list[str]:
    """The names of the flow runs the server has as RUNNING."""
    body = json.dumps({"flow_runs": {"state": {"type": {"any_": ["RUNNING"]}}}}).encode()
    request = urllib.request.Request(f"{url}/api/flow_runs/filter", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return [run["name"] for run in json.load(response)]
    except (OSError, ValueError):
        return []


def server_status() -> str:
    """astft server status: a few lines to print."""
    folder = server_folder()
    if url := configured_api_url():
        return f"PREFECT_API_URL is set: flows report to {url} (astft starts no server of its own)"
    state = running_state(folder)
    if state is None:
        return f"no local Prefect server is running; the next astft run starts one (database: {folder})"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state["started"]))
    return (
        f"local Prefect server: {state['url']} (UI and API), pid {state['pid']}, started {started}, "
        f"Prefect {state['prefect']}\ndatabase and log: {folder}\nstop it with: astft server stop"
    )


def _find_server_process(folder: Path) -> tuple[int, str] | None:
    """(pid, url) of a server this folder's astft started (it runs in the folder), whatever server.json says."""
    import psutil

    for process in psutil.process_iter(["cmdline", "cwd"]):
        command = process.info["cmdline"] or []
        if "prefect.server.api.server:create_app" in command and process.info["cwd"] == str(folder.resolve()):
            with contextlib.suppress(ValueError, IndexError):
                return process.pid, f"http://127.0.0.1:{int(command[command.index('--port') + 1])}"
    return None


def _write_state(folder: Path, pid: int, url: str) -> None:
    import psutil

    state = {"pid": pid, "url": url, "started": psutil.Process(pid).create_time(), "prefect": _prefect_version()}
    temporary = folder / f".{STATE_FILE}.{os.getpid()}"
    temporary.write_text(json.dumps(state))
    os.replace(temporary, folder / STATE_FILE)


def _is_our_server(pid: int, started: float | None) -> bool:
    """Whether pid is still the process server.json recorded (not a later process given the same pid)."""
    import psutil

    try:
        process = psutil.Process(pid)
        return started is not None and abs(process.create_time() - started) < 2 and (
            process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _prefect_version() -> str:
    from importlib.metadata import version

    return version("prefect")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: end (SIGTERM) when the run that started it ends, however it ends (Linux)."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
