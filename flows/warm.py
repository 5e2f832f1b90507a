"""The warm start: a background process that has imported torch, transformers, datasets and the rest once, and
forks a fresh child to run each astft command, so a command starts in about a second instead of five.

Why by hand: the cost it removes is the interpreter's own (about 4.5 s of third-party imports before any work,
on 2 cores), which no library here caches; Mercurial's chg does the same for hg. Prefect's workers and
`flow.serve` start a fresh process per run, which imports everything again.

How a command runs warm (Linux; ASTFT_WARM=0 turns it off):
- `entry` (the astft command) connects to the warm process's socket, ASTFT_HOME/warm/<key>.sock, and hands it
  the command line, working folder, environment, umask and its own stdin, stdout and stderr (their file
  descriptors, over the socket). The child runs `flows.cli.main` with them, so it writes to the same terminal,
  and sends back its exit code; Ctrl-C, TERM and HUP sent to the command are passed on to the child, and a
  command killed outright interrupts its child as a Ctrl-C would (the same command then resumes).
- The key hashes what the preloaded modules saw when they were imported: the Python executable, sys.path, the
  environment, the install folders' times (a pip install changes them) and this package's own files. Any change
  means another key, so another warm process; an unused one exits after ASTFT_WARM_IDLE_S (default 900 s).
- Only third-party modules are preloaded (PRELOAD). Prefect, which reads its settings and profile when imported,
  and astft's own flows/, lib/ and tasks/ are imported by each child, so an edit to them or to Prefect's settings
  takes effect at the next command.
- Where no warm process serves the key, the command runs in its own process as before, and then starts one in
  the background for the next command (after its own work, so the two never compete for the cores).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
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
# the commands that import the heavy modules (not `server`, which must stay light, nor a bare --help)
COMMANDS = frozenset({"finetune", "ensemble", "crossval", "pretrain", "demo", "predict", "export"})
# variables a shell changes between commands that no preloaded module reads: not part of the key
VOLATILE_VARIABLES = frozenset({"PWD", "OLDPWD", "_", "SHLVL"})
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
MAGIC = b"ASTFT1"
REQUEST_TIMEOUT_SECONDS = 10.0  # a client that connects and sends nothing does not hold the warm process up
READY_TIMEOUT_SECONDS = 120.0  # a warm process still importing answers within this, or the command runs here
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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
    hasher = hashlib.sha256()
    parts = {
        "python": [sys.executable, sys.version],
        "path": path,
        "environment": sorted((name, value) for name, value in environ.items() if name not in VOLATILE_VARIABLES),
        # a pip install or uninstall changes an install folder's time (not the working folder's, which a run's
        # outputs change); an edit to this package, its files'
        "times": [_mtime(entry) for entry in path if "-packages" in entry] + [_mtime(file) for file in _own_files()],
    }
    hasher.update(json.dumps(parts, sort_keys=True).encode("utf-8", "surrogateescape"))
    return hasher.hexdigest()[:24]


def socket_path(key: str) -> Path | None:
    """Where the warm process for this key listens; None where the path is too long for a Unix socket."""
    path = _folder().absolute() / f"{key}.sock"
    return path if len(os.fsencode(path)) <= MAX_SOCKET_PATH else None


def run_warm(argv: list[str], key: str) -> int | None:
    """Run this command in the warm process for key and return its exit code; None: it did not start there (no
    warm process for the key, or it did not answer), so the caller runs it in this process."""
    path = socket_path(key)
    if path is None:
        return None
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(str(path))
    except OSError:  # none listening (never started, idled out, or killed: its socket file is stale)
        client.close()
        return None
    with client:
        request = {
            "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "path": sys.path, "umask": _umask(),
            "started": time.time() - _age(),
        }
        try:
            _send_request(client, request)
            client.settimeout(READY_TIMEOUT_SECONDS)
            replies = client.makefile("rb")
            first = replies.readline()  # {"pid": ...} once the child has started
        except OSError:
            return None  # the warm process went away before any child started: nothing ran
        if not first:
            return None
        child = json.loads(first)["pid"]
        client.settimeout(None)
        previous = {number: signal.signal(number, _forward_to(child)) for number in FORWARDED_SIGNALS}
        try:
            last = replies.readline()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
    if not last:
        print(f"astft: the warm process's child running this command (pid {child}) ended without an exit status "
              f"(killed?); run the command again, or set {ENABLE_VARIABLE}=0 to run each command in its own process",
              file=sys.stderr)
        return 1
    return int(json.loads(last)["exit"])


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
    boot = "import json, sys; sys.path[:] = json.loads(sys.argv[1]); from flows.warm import serve; serve(sys.argv[2])"
    process = subprocess.Popen(
        [sys.executable, "-c", boot, json.dumps(sys.path if path is None else path), str(where)], cwd="/",
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


def stop_all(home: Path | None = None) -> list[int]:
    """Stop every warm process under ASTFT_HOME (a child running a command finishes it); their pids."""
    stopped = []
    for pid in _running(home):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            stopped.append(pid)
    return stopped


def status(home: Path | None = None) -> str:
    """A line for `astft server status`: the warm processes running under ASTFT_HOME."""
    pids = _running(home)
    if not pids:
        return f"no warm process is running; the next heavy command starts one ({ENABLE_VARIABLE}=0: none)"
    return (f"warm process(es), torch, transformers and datasets imported for the next command: pid "
            f"{', '.join(map(str, pids))} (each ends after {_idle_seconds():.0f} s unused; {ENABLE_VARIABLE}=0: none)")


def _idle_seconds() -> float:
    return float(os.environ.get(IDLE_VARIABLE) or IDLE_SECONDS)


def _running(home: Path | None = None) -> list[int]:
    pids = []
    for pid_file in sorted(_folder(home).glob("*.pid")):
        with contextlib.suppress(OSError, ValueError):
            if _holds_lock(pid_file.with_suffix(".lock")):
                pids.append(int(pid_file.read_text()))
    return pids


def _folder(home: Path | None = None) -> Path:
    return Path(home or os.environ.get("ASTFT_HOME") or Path.home() / ".astft") / "warm"


def _send_request(client: socket.socket, request: dict) -> None:
    payload = json.dumps(request).encode("utf-8", "surrogateescape")
    socket.send_fds(client, [HEADER.pack(MAGIC, len(payload))], [0, 1, 2])
    client.sendall(payload)


def _forward_to(pid: int):
    def forward(number, frame) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, number)
    return forward


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


def _holds_lock(lock: Path) -> bool:
    """Whether some process holds this lock file (a warm process holds its own for as long as it lives)."""
    try:
        with open(lock, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _age() -> float:
    from lib.core.timing import since_process_start

    return since_process_start()


def _mtime(path: str | Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def _own_files() -> list[Path]:
    """The files the warm process runs itself: this module and the package's __init__ (its environment defaults)."""
    here = Path(__file__).resolve().parent
    return [here / "__init__.py", here / "warm.py"]


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
    os.umask(0o077)  # the socket: this user only (a connection hands over a terminal and runs a command)
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(0))  # stop_all: leave through the cleanup below
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    inode, server = os.stat(path).st_ino, os.getpid()
    try:
        listener.listen(16)  # a command connecting now waits for the imports below, rather than doing its own
        path.with_suffix(".pid").write_text(str(os.getpid()))
        started = time.perf_counter()
        skipped = _preload()
        threads = [thread.name for thread in threading.enumerate() if thread is not threading.current_thread()]
        _log(log, f"pid {os.getpid()}: preloaded in {time.perf_counter() - started:.1f} s"
                  + (f" (not importable: {', '.join(skipped)})" if skipped else "")
                  + (f"; threads running, which a fork does not copy: {', '.join(threads)}" if threads else ""))
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
        idle = _idle_seconds()
        listener.settimeout(idle)
        path.with_suffix(".ready").write_text("")
        while True:
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                _log(log, f"idle for {idle:.0f} s: exiting")
                return
            _serve_one(connection, listener, log)
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


def _serve_one(connection: socket.socket, listener: socket.socket, log) -> None:
    fds: list[int] = []
    try:
        connection.settimeout(REQUEST_TIMEOUT_SECONDS)
        uid = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
        header, fds, _, _ = socket.recv_fds(connection, HEADER.size, 3)
        if not header:  # a readiness probe (start, start_in_background): connected, then closed
            connection.close()
            return
        magic, length = HEADER.unpack(header) if len(header) == HEADER.size else (b"", 0)
        if uid != os.getuid() or magic != MAGIC or len(fds) != 3:
            raise ValueError("not an astft command")
        request = json.loads(_receive(connection, length).decode("utf-8", "surrogateescape"))
    except (OSError, ValueError) as error:
        _log(log, f"refused a connection: {error}")
        connection.close()
        for fd in fds:
            os.close(fd)
        return
    pid = os.fork()
    if pid == 0:
        try:
            listener.close()
            log.close()
            _run_child(connection, request, fds)
        finally:
            os._exit(1)  # never back into serve(), whose cleanup is the warm process's own
    connection.close()
    for fd in fds:
        os.close(fd)
    _log(log, f"pid {pid}: {' '.join(request['argv'][1:])} (in {request['cwd']})")


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
    code = 1
    try:
        connection.settimeout(None)
        connection.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
    except OSError:  # the command gave up waiting and runs in its own process: this child must not run it too
        os._exit(0)
    try:
        for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(number, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.setpgid(0, 0)  # its own group: the command's Ctrl-C reaches it alone, not the warm process
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
        threading.Thread(target=_interrupt_when_orphaned, args=(connection,), daemon=True).start()
        from lib.core.timing import set_process_start

        set_process_start(request["started"])  # the command's start-up is its own process's, then this child's
        code = _run_command(request["argv"][1:])
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
    """What the interpreter does at its end, short of freeing every object (os._exit follows): join the running
    threads, run the exit handlers (Prefect's send their last logs and events), flush the output."""
    import atexit

    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()


def _interrupt_when_orphaned(connection: socket.socket) -> None:
    """The command was killed outright (its socket closed): interrupt the run as its Ctrl-C would have."""
    with contextlib.suppress(OSError):
        while connection.recv(1024):
            pass
    os.kill(os.getpid(), signal.SIGINT)


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
