"""One run per folder: an OS file lock (fcntl.flock) held while a run uses a work dir, named after its holder.

The kernel releases the lock when the holding process ends, however it ends (kill -9 included), so a lock
is never stale. The lock file also records who holds it (pid, host, start time), so a refused run can name
the run in its way. Linux and macOS (flock); shared network folders only where their file system honours it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from lib.core.errors import ConfigError
from lib.core.layout import LOCK_FILE

logger = logging.getLogger(__name__)


def holder(lock_file: Path) -> str:
    """Who holds the lock, as its lock file records it ("an unknown process" where it cannot be read)."""
    try:
        info = json.loads(Path(lock_file).read_text())
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
        return f"{info['what']} (pid {info['pid']} on {info['host']}, started {started})"
    except (OSError, ValueError, KeyError, TypeError):
        return "an unknown process"


@contextlib.contextmanager
def folder_lock(folder: Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold folder's lock while the block runs; `what` names this run in the refusals others get.

    Busy: ConfigError naming the holder; with wait, block until it is free instead.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock_file = folder / LOCK_FILE
    handle = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise in_use(folder) from None
            logger.warning("%s is in use by %s: waiting for it to end (--wait)", folder, holder(lock_file))
            fcntl.flock(handle, fcntl.LOCK_EX)
            logger.info("%s is free: %s goes on", folder, what)
        started = psutil.Process().create_time()  # the run's own start, not the moment it took the lock
        record = {"what": what, "pid": os.getpid(), "host": socket.gethostname(), "started": started}
        os.ftruncate(handle, 0)
        os.pwrite(handle, json.dumps(record).encode(), 0)
        yield
    finally:
        os.close(handle)  # releases the lock


def check_unlocked(folder: Path) -> None:
    """Refuse a folder whose lock another process holds now (plan time: before any work); reads only."""
    lock_file = Path(folder) / LOCK_FILE
    try:
        handle = os.open(lock_file, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise in_use(folder) from None
    finally:
        os.close(handle)


def in_use(folder: Path) -> ConfigError:
    return ConfigError(
        f"{folder} is in use by {holder(Path(folder) / LOCK_FILE)}: two runs on one work dir would delete each "
        "other's checkpoints. Wait for that run to end (--wait queues this run behind it), or give this run another "
        "--name or --work-dir"
    )
