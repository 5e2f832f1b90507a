"""One run per folder: OS file locks (fcntl.flock) held while a run uses a work dir, a publish slot or a cache build.

The kernel releases a lock when the holding process ends, however it ends (kill -9 included), so a lock
is never stale. The lock file also records who holds it (pid, host, start time), so a refused run can name
the run in its way. A process may take a lock it already holds (reentrant): the CLI holds a run's locks
from its plan to its end, and the flow it starts takes them again. Linux and macOS (flock); shared network
folders only where their file system honours it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from lib.core.errors import ConfigError
from lib.core.layout import LOCK_FILE

logger = logging.getLogger(__name__)

# Lock files this process holds -> how many blocks hold them (flock is per open file: a second open of the
# same file in this process would be refused by the first, so re-entry is counted here instead).
_held: dict[str, int] = {}
_held_guard = threading.Lock()


# How long a refused run waits for a lock just taken to name its holder (file_lock writes it right after flock).
HOLDER_SETTLE_SECONDS = 1.0


def holder(lock_file: Path) -> str:
    """Who holds the lock, as its lock file records it ("an unknown process" where it cannot be read). A lock taken
    a moment ago may not name its holder yet: read again for up to HOLDER_SETTLE_SECONDS."""
    deadline = time.monotonic() + HOLDER_SETTLE_SECONDS
    while True:
        try:
            info = json.loads(Path(lock_file).read_text())
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
            return f"{info['what']} (pid {info['pid']} on {info['host']}, started {started})"
        except (OSError, ValueError, KeyError, TypeError):
            if time.monotonic() >= deadline:
                return "an unknown process"
            time.sleep(0.05)


@contextlib.contextmanager
def file_lock(
    lock_file: Path, what: str, wait: bool = False, refusal: Callable[[], ConfigError] | None = None,
    remove: bool = False,
) -> Iterator[None]:
    """Hold lock_file's lock while the block runs; `what` names this run in the refusals others get.

    Busy: refusal() (default: a ConfigError naming the holder); with wait, block until it is free instead.
    remove: delete the lock file when the block ends (a lock beside a folder others list), still holding it.
    """
    lock_file = Path(lock_file)
    key = os.path.realpath(lock_file)
    with _held_guard:
        reentered = key in _held
        if reentered:
            _held[key] += 1
    if reentered:
        try:
            yield
        finally:
            _release(key)
        return
    handle = _acquire(lock_file, wait, refusal, what)
    try:
        started = psutil.Process().create_time()  # the run's own start, not the moment it took the lock
        record = {"what": what, "pid": os.getpid(), "host": socket.gethostname(), "started": started}
        os.ftruncate(handle, 0)
        os.pwrite(handle, json.dumps(record).encode(), 0)
        with _held_guard:
            _held[key] = 1
        try:
            yield
        finally:
            _release(key)
            if remove:
                lock_file.unlink(missing_ok=True)  # while held: a waiter then finds its file gone and starts over
    finally:
        os.close(handle)  # releases the lock


def _acquire(lock_file: Path, wait: bool, refusal: Callable[[], ConfigError] | None, what: str) -> int:
    """Open and flock lock_file; the open handle. Retried when the file was removed (remove=True) meanwhile:
    a lock on a file no longer at that path would hold nothing."""
    said_waiting = False
    while True:
        handle = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise (refusal or (lambda: ConfigError(f"{lock_file} is held by {holder(lock_file)}")))() from None
                if not said_waiting:
                    logger.warning("%s is in use by %s: waiting for it to end", lock_file.parent, holder(lock_file))
                    said_waiting = True
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                same = os.fstat(handle).st_ino == os.stat(lock_file).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(handle)
            raise
        if same:
            if said_waiting:
                logger.info("%s is free: %s goes on", lock_file.parent, what)
            return handle
        os.close(handle)


def _release(key: str) -> None:
    with _held_guard:
        _held[key] -= 1
        if not _held[key]:
            del _held[key]


def folder_lock(folder: Path, what: str, wait: bool = False) -> contextlib.AbstractContextManager[None]:
    """Hold a work dir's lock (its .astft.lock) while the block runs: one run per work dir."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return file_lock(folder / LOCK_FILE, what, wait, refusal=lambda: in_use(folder))


def check_unlocked(folder: Path) -> None:
    """Refuse a work dir whose lock another process holds now (plan time: before any work); reads only."""
    check_free(Path(folder) / LOCK_FILE, lambda: in_use(folder))


def check_free(lock_file: Path, refusal: Callable[[], ConfigError]) -> None:
    """Raise refusal() if another process holds lock_file now; this process's own locks are free to it."""
    if is_held(lock_file):
        raise refusal()


def is_held(lock_file: Path) -> bool:
    """Whether another process holds lock_file now (reads only; this process's own locks are not held to it)."""
    if os.path.realpath(lock_file) in _held:
        return False
    try:
        handle = os.open(lock_file, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(handle)
    return False


def in_use(folder: Path) -> ConfigError:
    return ConfigError(
        f"{folder} is in use by {holder(Path(folder) / LOCK_FILE)}: two runs on one work dir would delete each "
        "other's checkpoints. Wait for that run to end (--wait queues this run behind it), or give this run another "
        "--name or --work-dir"
    )
