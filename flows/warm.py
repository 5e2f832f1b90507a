"""The warm start: a background process that has imported torch, transformers, datasets and the rest once, and
forks a fresh child to run each astft command, so a command starts in about a second instead of five.

Why by hand: the cost it removes is the interpreter's own (about 4.5 s of third-party imports before any work,
on 2 cores), which no library here caches; Mercurial's chg does the same for hg. Prefect's workers and
`flow.serve` start a fresh process per run, which imports everything again.

How a command runs warm (Linux; ASTFT_WARM=0 turns it off):
- `entry` (the astft command) connects to the warm process's socket, ASTFT_HOME/warm/<key>.sock, and hands it
  the command line, working folder, environment, umask, ignored signals and its own stdin, stdout and stderr (their
  file descriptors, over the socket). The child runs `flows.cli.main` with them, so it writes to the same terminal,
  and sends back its exit code. Ctrl-C, TERM, HUP and Ctrl-Z sent to the command reach the child's process group
  (its torchrun, feature workers); a command killed outright interrupts its child as a Ctrl-C would (the same
  command then resumes).
- The key hashes what the preloaded modules saw when they were imported: the Python executable and flags,
  sys.path, the environment (less the variables a terminal or login sets, SESSION_VARIABLES), the process's CPU
  affinity, niceness and limits, the install folders' times (a pip install changes them) and this package's own
  files. Any change means another key, so another warm process; an unused one exits after ASTFT_WARM_IDLE_S
  (default 900 s).
- Only third-party modules are preloaded (PRELOAD). Prefect, which reads its settings and profile when imported,
  and astft's own flows/, lib/ and tasks/ are imported by each child, so an edit to them or to Prefect's settings
  takes effect at the next command.
- Where no warm process serves the key, the command runs in its own process as before, and then starts one in
  the background for the next command (after its own work, so the two never compete for the cores).
- Only the user who owns ASTFT_HOME/warm (mode 0700) talks to it: both sides check the other's uid.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

ENABLE_VARIABLE = "ASTFT_WARM"  # "0": every command runs in its own process and no warm process is started
IDLE_VARIABLE = "ASTFT_WARM_IDLE_S"
IDLE_SECONDS = 900.0
# the commands that import the heavy modules (not `server`, which must stay light)
COMMANDS = frozenset({"finetune", "ensemble", "crossval", "pretrain", "demo", "predict", "export"})
# what a shell, terminal or login sets per session, which no preloaded module reads, and the warm start's own
# settings: not part of the key, so that two terminals share a warm process (the child gets the command's values)
SESSION_VARIABLES = frozenset({
    "PWD", "OLDPWD", "_", "SHLVL", "WINDOWID", "STY", "GPG_TTY", "TERM_SESSION_ID", "ITERM_SESSION_ID",
    "KITTY_WINDOW_ID", "WEZTERM_PANE", "XDG_SESSION_ID", "XDG_VTNR", "COLUMNS", "LINES",
})
SESSION_PREFIXES = ("SSH_", "TMUX", "VSCODE_")
PRELOAD = (
    "torch", "torchaudio", "torchaudio.compliance.kaldi", "numpy", "pyarrow", "soundfile", "safetensors.torch",
    "datasets", "accelerate", "transformers", "transformers.trainer", "transformers.modeling_utils",
    "transformers.models.audio_spectrogram_transformer.modeling_audio_spectrogram_transformer",
    "transformers.models.audio_spectrogram_transformer.feature_extraction_audio_spectrogram_transformer",
    "sklearn.metrics", "matplotlib.pyplot",
    # Prefect's own dependencies (Prefect itself is imported by each child: see the module's docstring)
    "pydantic", "pydantic_settings", "httpx", "anyio", "rich", "fastapi.encoders", "griffe", "coolname",
    "jsonschema", "websockets", "opentelemetry.trace", "prometheus_client", "pendulum",
)
MAX_SOCKET_PATH = 100  # sockaddr_un holds 108 bytes
HEADER = struct.Struct("!6sQ")  # magic, request length
MAGIC = b"ASTFT2"
GO = b"g"  # the command's go-ahead once it has the child's pid: a command that gave up waiting never runs twice
REQUEST_TIMEOUT_SECONDS = 10.0  # a client that connects and sends nothing does not hold the warm process up
READY_TIMEOUT_SECONDS = 120.0  # how long `start(wait=True)` waits for a warm process's imports
# how long a command waits for a warm process still importing (about 5 s on 2 cores) before it runs in its own
# process: a warm process stuck in its imports costs each command this, not READY_TIMEOUT_SECONDS
COMMAND_WAIT_SECONDS = 30.0
EXIT_TIMEOUT_SECONDS = 30.0  # after its exit code, how long the command waits for its child to be gone
ORPHAN_GRACE_SECONDS = 30.0  # a child whose command was killed outright: its Ctrl-C's time, then a kill
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGWINCH)


# ---- the command's side ---------------------------------------------------------------------------------------


def enabled(argv: list[str]) -> bool:
    """Whether this command may run warm: astft's heavy commands, on Linux, not turned off, not under -X."""
    return (
        sys.platform.startswith("linux") and os.environ.get(ENABLE_VARIABLE, "1") != "0" and len(argv) > 1
        and argv[1] in COMMANDS and not sys._xoptions and not sys.flags.dev_mode
    )


def warm_key(environ: dict[str, str] | None = None, path: list[str] | None = None) -> str:
    """What the preloaded modules saw when they were imported, hashed: equal keys, interchangeable processes."""
    environ = dict(os.environ if environ is None else environ)
    path = [os.path.abspath(entry) for entry in (sys.path if path is None else path)]
    parts = {
        "python": [sys.executable, sys.version, repr(sys.flags), sys.warnoptions],
        "path": path,
        "environment": sorted((name, value) for name, value in environ.items() if not _session_variable(name)),
        "process": _process_settings(),
        # a pip install or uninstall changes an install folder's time (not the working folder's, which a run's
        # outputs change); an edit to this package, its files'
        "times": [_mtime(entry) for entry in path if "-packages" in entry] + [_mtime(file) for file in _own_files()],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8", "surrogateescape")).hexdigest()[:24]


def socket_path(key: str) -> Path | None:
    """Where the warm process for this key listens; None where the path is too long for a Unix socket."""
    path = _folder().absolute() / f"{key}.sock"
    return path if len(os.fsencode(path)) <= MAX_SOCKET_PATH else None


def run_warm(argv: list[str], key: str) -> int | None:
    """Run this command in the warm process for key and return its exit code; None: it did not start there (no
    warm process for the key, or it did not answer), so the caller runs it in this process."""
    path = socket_path(key)
    if path is None or not _private(path.parent):
        return None
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(str(path))
        if _peer_uid(client) != os.getuid():
            raise PermissionError(f"{path} is another user's")
    except OSError:  # none listening (never started, idled out, or killed: its socket file is stale)
        client.close()
        return None
    forwarded: list[int] = []
    with client:
        ignored = [int(number) for number in (*FORWARDED_SIGNALS, signal.SIGTSTP)
                   if signal.getsignal(number) == signal.SIG_IGN]  # nohup's HUP stays ignored in the child
        request = {
            "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "path": sys.path, "umask": _umask(),
            "started": time.time() - _age(), "ignored": ignored,
        }
        try:
            _send_request(client, request)
            client.settimeout(COMMAND_WAIT_SECONDS)
            replies = client.makefile("rb")
            first = replies.readline()  # {"pid": ...} once the child has started
            if not first:
                return None
            child = json.loads(first)["pid"]
            client.sendall(GO)
        except OSError:
            return None  # the warm process went away, or did not answer in time: nothing ran
        client.settimeout(None)
        handlers = {number: _forward_to(child, forwarded) for number in FORWARDED_SIGNALS if number not in ignored}
        if signal.SIGTSTP not in ignored:
            handlers[signal.SIGTSTP] = _suspend_with(child)
        previous = {number: signal.signal(number, handler) for number, handler in handlers.items()}
        try:
            last = replies.readline()
            client.settimeout(EXIT_TIMEOUT_SECONDS)  # then its end (its memory, a GPU's included, given back)
            with contextlib.suppress(OSError):
                while replies.read(1024):
                    pass
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
    if last:
        return int(json.loads(last)["exit"])
    if forwarded and forwarded[-1] != signal.SIGINT:  # a TERM or HUP ended it: end the same way
        signal.signal(forwarded[-1], signal.SIG_DFL)
        os.kill(os.getpid(), forwarded[-1])
    print(f"astft: the warm process's child running this command (pid {child}) ended without an exit status "
          f"(killed?); run the command again, or set {ENABLE_VARIABLE}=0 to run each command in its own process",
          file=sys.stderr)
    return 1


def start_in_background(key: str, environ: dict[str, str], path: list[str]) -> None:
    """Start a warm process for key, for the next command (none if one already serves it). environ and path: this
    command's environment and sys.path as they were at its start, which the key hashes."""
    where = socket_path(key)
    if where is None or _listening(where):
        return
    with contextlib.suppress(OSError):  # a warm process is an optimisation: never fail a finished command on it
        start(where, environ, path, wait=False)


def start(
    where: Path, environ: dict[str, str] | None = None, path: list[str] | None = None, wait: bool = True,
    timeout: float = READY_TIMEOUT_SECONDS,
) -> subprocess.Popen:
    """Start the warm process listening at `where`, importing with environ and path (this process's by default);
    wait: until it has imported everything and takes commands (raises TimeoutError after timeout)."""
    where.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if where.parent.stat().st_uid == os.getuid():
        where.parent.chmod(0o700)  # an older folder made with a looser umask
    if not _private(where.parent):
        raise PermissionError(f"{where.parent} must be this user's own folder, with mode 0700")
    boot = "import json, sys; sys.path[:] = json.loads(sys.argv[1]); from flows.warm import serve; serve(sys.argv[2])"
    flags = subprocess._args_from_interpreter_flags()  # -u, -O, -W ...: the commands' own (multiprocessing's way)
    process = subprocess.Popen(
        [sys.executable, *flags, "-c", boot, json.dumps(sys.path if path is None else path), str(where)], cwd="/",
        env=os.environ if environ is None else environ, start_new_session=True, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
    )
    if wait:
        deadline = time.monotonic() + timeout
        while not _ready(where):
            if process.poll() is not None and not _listening(where):
                raise RuntimeError(f"the warm process ended at its start (code {process.returncode}); see "
                                   f"{where.with_suffix('.log')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the warm process for {where} was not ready after {timeout:.0f} s")
            time.sleep(0.05)
    return process


def status(home: Path | None = None) -> str:
    """A line for `astft server status`: the warm processes running under ASTFT_HOME."""
    if socket_path("0" * 24) is None:
        return (f"no warm start: ASTFT_HOME's path is too long for its Unix socket (at most {MAX_SOCKET_PATH} bytes "
                f"with warm/<key>.sock); set a shorter ASTFT_HOME")
    running = _running(home)
    if not running:
        return f"no warm process is running; the next heavy command starts one ({ENABLE_VARIABLE}=0: none)"
    listed = ", ".join(f"pid {pid} (ends after {idle} s unused)" for pid, idle in running.items())
    return (f"warm process(es), torch, transformers and datasets imported for the next command: {listed}; "
            f"{ENABLE_VARIABLE}=0: none")


def stop_all(home: Path | None = None) -> list[int]:
    """Stop every warm process under ASTFT_HOME (a child running a command finishes it); their pids."""
    stopped = []
    for pid in _running(home):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            stopped.append(pid)
    return stopped


def _running(home: Path | None = None) -> dict[int, str]:
    """The warm processes under ASTFT_HOME, pid -> their idle time ("?" while starting): a .pid file whose process
    is a warm process serving its socket (read from /proc, not by taking its lock, which would make one that is
    starting give up)."""
    running = {}
    for pid_file in sorted(_folder(home).glob("*.pid")):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text())
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if any(b"from flows.warm import serve" in part for part in command) and os.fsdecode(command[-2]) == str(
                    pid_file.with_suffix(".sock")):
                ready = pid_file.with_suffix(".ready")
                running[pid] = ready.read_text().strip() if ready.exists() else "?"
    return running


def _folder(home: Path | None = None) -> Path:
    from flows.server import astft_home  # the standard library only: cheap for the command's side

    return Path(home or astft_home()) / "warm"


def _private(folder: Path) -> bool:
    """A folder only this user can enter or write: no other user can plant a socket there."""
    try:
        state = folder.stat()
    except OSError:
        return False
    return state.st_uid == os.getuid() and not state.st_mode & 0o077


def _peer_uid(connection: socket.socket) -> int:
    return struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]


def _send_request(client: socket.socket, request: dict) -> None:
    payload = json.dumps(request).encode("utf-8", "surrogateescape")
    socket.send_fds(client, [HEADER.pack(MAGIC, len(payload))], [0, 1, 2])
    client.sendall(payload)


def _forward_to(child: int, forwarded: list[int]):
    """A handler passing the signal on to the child's process group (its torchrun, workers), as a terminal would."""
    def forward(number, frame) -> None:
        forwarded.append(number)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child, number)
    return forward


def _suspend_with(child: int):
    """Ctrl-Z: stop the child's process group, then this process; continue both on SIGCONT (fg, bg)."""
    def suspend(number, frame) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child, signal.SIGSTOP)
        previous = signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)  # stops here until the shell continues it
        signal.signal(signal.SIGTSTP, previous)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child, signal.SIGCONT)
    return suspend


def _listening(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _ready(path: Path) -> bool:
    return path.with_suffix(".ready").exists() and _listening(path)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _age() -> float:
    from lib.core.timing import since_process_start

    return since_process_start()


def _session_variable(name: str) -> bool:
    return name in SESSION_VARIABLES or name.startswith(SESSION_PREFIXES) or name in (ENABLE_VARIABLE, IDLE_VARIABLE)


def _process_settings() -> list:
    """What a command's process inherits beyond its environment and a warm child would not: CPU affinity
    (taskset), niceness, resource limits."""
    limits = [resource.getrlimit(getattr(resource, name)) for name in sorted(dir(resource))
              if name.startswith("RLIMIT_")]
    return [sorted(os.sched_getaffinity(0)), os.getpriority(os.PRIO_PROCESS, 0), limits]


def _mtime(path: str | Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def _own_files() -> list[Path]:
    """The files the warm process runs itself: this module and the package's __init__ (its environment defaults)."""
    here = Path(__file__).resolve().parent
    return [here / "__init__.py", here / "warm.py"]


def _idle_seconds() -> float:
    return float(os.environ.get(IDLE_VARIABLE) or IDLE_SECONDS)


# ---- the warm process's side ----------------------------------------------------------------------------------


def serve(path_text: str) -> None:
    """The warm process: hold the key's lock, listen, preload, then fork a child per command until idle."""
    path = Path(path_text)
    lock = open(path.with_suffix(".lock"), "a")  # noqa: SIM115 - held until this process ends
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another warm process serves this key (two commands ended at once)
    log = open(path.with_suffix(".log"), "a", buffering=1)  # noqa: SIM115 - held until this process ends
    path.with_suffix(".ready").unlink(missing_ok=True)
    path.unlink(missing_ok=True)  # a stale socket of a killed warm process: its lock was free
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(0))  # stop_all: leave through the cleanup below
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o077)  # the socket: this user only (a connection hands over a terminal and runs a command)
    listener.bind(str(path))
    os.umask(umask)  # what the imports below write (caches) is made as the command's own files would be
    inode, server = os.stat(path).st_ino, os.getpid()
    command_line = _command_line_area()  # before anything changes the environment, whose strings follow it
    try:
        listener.listen(16)  # a command connecting now waits for the imports below, rather than doing its own
        path.with_suffix(".pid").write_text(str(os.getpid()))
        started = time.perf_counter()
        skipped = _preload()
        _log(log, f"pid {os.getpid()}: preloaded in {time.perf_counter() - started:.1f} s, {_thread_count()} "
                  "threads" + (f" (not importable: {', '.join(skipped)})" if skipped else ""))
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
        idle = _idle_seconds()
        listener.settimeout(idle)
        path.with_suffix(".ready").write_text(f"{idle:.0f}")
        while True:
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                _log(log, f"idle for {idle:.0f} s: exiting")
                return
            _serve_one(connection, (listener, log, lock), command_line)
    finally:
        with contextlib.suppress(OSError):
            if os.getpid() == server and os.stat(path).st_ino == inode:  # still ours
                for suffix in (".ready", ".pid"):
                    path.with_suffix(suffix).unlink(missing_ok=True)
                path.unlink()


def _preload() -> list[str]:
    import importlib

    import flows  # noqa: F401 - its environment defaults, read by transformers' and datasets' imports

    skipped = []
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - an optional module missing only leaves its import to the child
            skipped.append(name)
    import matplotlib

    matplotlib.use("Agg")  # as lib.evaluate.plots does
    return skipped


def _thread_count() -> int:
    """The process's threads, native ones included (a fork copies only the forking one)."""
    return len(os.listdir("/proc/self/task"))


def _serve_one(connection: socket.socket, held: tuple, command_line: tuple[int, int] | None) -> None:
    """Take one command's request and fork its child. held: what only the warm process may keep open (the
    listener, its log, the key's lock: a child holding the lock would keep a later warm process from starting);
    command_line: where this process's command line is, for the child's own (_show_as)."""
    fds: list[int] = []
    try:
        connection.settimeout(REQUEST_TIMEOUT_SECONDS)
        header, fds, _, _ = socket.recv_fds(connection, HEADER.size, 3)
        if not header:  # a readiness probe (start, start_in_background): connected, then closed
            connection.close()
            return
        magic, length = HEADER.unpack(header) if len(header) == HEADER.size else (b"", 0)
        if _peer_uid(connection) != os.getuid() or magic != MAGIC or len(fds) != 3:
            raise ValueError("not an astft command")
        request = json.loads(_receive(connection, length).decode("utf-8", "surrogateescape"))
    except (OSError, ValueError) as error:
        _log(held[1], f"refused a connection: {error}")
        connection.close()
        for fd in fds:
            os.close(fd)
        return
    pid = os.fork()
    if pid == 0:
        try:
            for handle in held:
                handle.close()
            _show_as(request["argv"], command_line)
            _run_child(connection, request, fds)
        finally:
            os._exit(1)  # never back into serve(), whose cleanup is the warm process's own
    connection.close()
    for fd in fds:
        os.close(fd)
    _log(held[1], f"pid {pid}: {' '.join(request['argv'][1:])} (in {request['cwd']})")


def _command_line_area() -> tuple[int, int] | None:
    """(address, length) of this process's command line as the kernel shows it (/proc/PID/cmdline: ps, pkill -f):
    the original argv strings, which end where the first environment string starts (how setproctitle finds them).
    None where memory does not hold what /proc says."""
    with contextlib.suppress(Exception):
        shown = Path("/proc/self/cmdline").read_bytes()
        environ = ctypes.POINTER(ctypes.c_void_p).in_dll(ctypes.CDLL(None), "environ")
        start = environ[0] - len(shown)
        if ctypes.string_at(start, len(shown)) == shown:
            return start, len(shown)
    return None


def _show_as(argv: list[str], command_line: tuple[int, int] | None) -> None:
    """Show the child as the command it runs (ps, top, pkill -f), not as the warm process: `pkill -f flows.warm`
    must not end a training run. Why by hand: setproctitle does this, but is not a dependency here."""
    text = " ".join(["astft", *argv[1:]]).encode("utf-8", "replace")
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(15, b"astft", 0, 0, 0)  # PR_SET_NAME: top's and ps -o comm's name
        if command_line is not None:
            start, length = command_line
            data = text[: length - 1]
            ctypes.memmove(start, data + b"\0" * (length - len(data)), length)


def _receive(connection: socket.socket, length: int) -> bytes:
    chunks, remaining = [], length
    while remaining:
        chunk = connection.recv(min(remaining, 1 << 20))
        if not chunk:
            raise ValueError("the request ended early")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _run_child(connection: socket.socket, request: dict, fds: list[int]) -> None:
    """The forked child: become the command's process (its terminal, folder, environment), run it, report."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.setpgid(0, 0)  # its own group, which the command signals as a terminal signals its foreground group
    for number in (signal.SIGCHLD, signal.SIGHUP, signal.SIGTSTP, signal.SIGWINCH):
        signal.signal(number, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for number in request["ignored"]:  # nohup's HUP, a script's ignored Ctrl-C
        signal.signal(number, signal.SIG_IGN)
    try:
        connection.settimeout(REQUEST_TIMEOUT_SECONDS)
        connection.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
        if connection.recv(1) != GO:
            os._exit(0)  # the command gave up waiting and runs in its own process: this child must not run it too
    except OSError:
        os._exit(0)
    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.umask(request["umask"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.path[:] = request["path"]
        sys.argv[:] = request["argv"]
        sys.stdout.reconfigure(line_buffering=sys.stdout.isatty())
        _reseed()
        connection.settimeout(None)
        threading.Thread(target=_interrupt_when_orphaned, args=(connection,), daemon=True).start()
        from lib.core.timing import set_process_start

        set_process_start(request["started"])  # the command's start-up is its own process's, then this child's
        code = _run_command(request["argv"][1:])
    except KeyboardInterrupt:  # before main's own handling (importing it)
        code = 130
    except BaseException:  # noqa: BLE001 - reported to the command below
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            _finish()
        # no Ctrl-C from here on: the command closes its socket once it has the code, which the orphan watcher
        # would otherwise take for a kill and turn into a KeyboardInterrupt before os._exit
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with contextlib.suppress(OSError):
            connection.sendall(json.dumps({"exit": code}).encode() + b"\n")
        os._exit(code)


def _run_command(argv: list[str]) -> int:
    from flows.cli import main

    try:
        return main(argv)
    except SystemExit as done:  # argparse's --help and usage errors
        if done.code is None or isinstance(done.code, int):
            return done.code or 0
        print(done.code, file=sys.stderr)
        return 1


def _finish() -> None:
    """What the interpreter does at its end, short of freeing every object (os._exit follows): its shutdown of
    threads (joining the others, and the exit callbacks of thread pools and Prefect's log and event workers, which
    send what they hold), the exit handlers, and a flush of Python's and C's output buffers."""
    import atexit

    threading._shutdown()  # CPython's own step at exit (private, and what Py_FinalizeEx calls first)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    ctypes.CDLL(None).fflush(None)


def _interrupt_when_orphaned(connection: socket.socket) -> None:
    """The command was killed outright (its socket closed): interrupt the run as its Ctrl-C would have, and end it
    outright, as that kill would have at once, if it has not ended ORPHAN_GRACE_SECONDS later (a Ctrl-C can wait
    on a Prefect server that is gone)."""
    with contextlib.suppress(OSError):
        while connection.recv(1024):
            pass
    os.killpg(0, signal.SIGINT)
    time.sleep(ORPHAN_GRACE_SECONDS)
    os.killpg(0, signal.SIGKILL)


def _reseed() -> None:
    """A fresh process's random state: every child would otherwise share the warm process's (Python's own
    random module is reseeded by the interpreter at fork)."""
    seed = int.from_bytes(os.urandom(8), "little")
    with contextlib.suppress(ImportError):
        import numpy

        numpy.random.seed(seed % 2**32)
    with contextlib.suppress(ImportError):
        import torch

        torch.manual_seed(seed)


def _log(log, line: str) -> None:
    log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


if __name__ == "__main__":  # python -m flows.warm start: start this environment's warm process and wait for it
    if sys.argv[1:] != ["start"]:
        sys.exit("usage: python -m flows.warm start")
    where = socket_path(warm_key())
    if where is None:
        sys.exit("ASTFT_HOME's path is too long for a Unix socket; set a shorter one")
    if not _ready(where):
        start(where)
    print(where)
