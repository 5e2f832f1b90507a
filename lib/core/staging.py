"""Build a folder beside its final name and rename it into place (caches shared between runs).

Also the two things every such folder needs: a size manifest that proves it whole (meta.json), and
names that say which process is building them, so that what a killed run left behind can be told
apart from what a running one is still writing.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from lib.core.errors import DiskSpaceError, human_bytes
from lib.core.hashing import digest
from lib.core.layout import META_FILE, lock_file_for
from lib.core.locks import file_lock

logger = logging.getLogger(__name__)


# Owner tag: hashed host, pid, start time (why: docs/decisions.md, "Abandoned folders: judged by owner, not age").
OWNER_PATTERN = r"(?P<owner>[0-9a-f]{8}-\d+-\d+)-[0-9a-f]{8}"
_OWNER = re.compile(r"(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d+)")
# psutil derives the start time from boot time + ticks; allow for rounding between two readings.
_START_TOLERANCE_S = 2


def _host() -> str:
    return digest(socket.gethostname(), 8)


def owner_tag(pid: int | None = None) -> str:
    """host-pid-start of a running process (default: this one)."""
    pid = os.getpid() if pid is None else pid
    return f"{_host()}-{pid}-{int(psutil.Process(pid).create_time())}"


def owned_name(prefix: str) -> str:
    """A fresh name for a folder this process is about to build: prefix + owner tag + random token."""
    return f"{prefix}{owner_tag()}-{uuid.uuid4().hex[:8]}"


def owner_state(tag: str) -> str:
    """"self", "running" (another live process), "gone" (its process ended) or "unknown".

    Only "gone" proves a folder abandoned. Another host's processes cannot be seen from here, so
    their folders are "unknown" and left for that host's next run to clean (shared storage); so
    are names that hold no tag and processes we may not inspect.
    """
    match = _OWNER.fullmatch(tag)
    if match is None or match["host"] != _host():
        return "unknown"
    pid = int(match["pid"])
    try:
        process = psutil.Process(pid)
        started = process.create_time()
        if process.status() == psutil.STATUS_ZOMBIE:  # ended, only not yet reaped by its parent
            return "gone"
    except psutil.NoSuchProcess:
        return "gone"
    except psutil.Error:
        return "unknown"
    if abs(started - int(match["start"])) > _START_TOLERANCE_S:
        return "gone"  # the pid now belongs to a process that started later
    return "self" if pid == os.getpid() else "running"


def remove_abandoned(
    root: Path, pattern: str, also_own: bool = False, keep: Callable[[Path], bool] | None = None
) -> None:
    """Remove root's entries whose whole name matches pattern (which has OWNER_PATTERN) and whose
    owner process has ended (and, with also_own, this process's own), unless keep(entry) says no
    (asked just before each removal); links are unlinked, not followed."""
    compiled = re.compile(pattern)
    try:
        entries = list(Path(root).iterdir())
    except FileNotFoundError:
        return
    removable = {"gone", "self"} if also_own else {"gone"}
    for entry in entries:
        match = compiled.fullmatch(entry.name)
        state = owner_state(match["owner"]) if match else None
        if state not in removable or (keep and keep(entry)):
            continue
        why = "its process has ended" if state == "gone" else "made earlier by this process"
        logger.info("removing %s (%s)", entry, why)
        if entry.is_symlink() or not entry.is_dir():
            entry.unlink(missing_ok=True)
        else:
            shutil.rmtree(entry, ignore_errors=True)


def record_file_sizes(folder: Path, key: str, extra: dict | None = None) -> None:
    """Write folder/meta.json: the key and every file's size. Call it last: it marks the folder whole."""
    folder = Path(folder)
    sizes = {
        path.relative_to(folder).as_posix(): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != META_FILE
    }
    (folder / META_FILE).write_text(json.dumps({**(extra or {}), "key": key, "file_bytes": sizes}, indent=2))


def file_sizes_match(folder: Path, key: str) -> bool:
    """Whether folder holds a meta.json for this key and every file it lists, at its recorded size."""
    try:
        meta = json.loads((Path(folder) / META_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    sizes = meta.get("file_bytes") if isinstance(meta, dict) and meta.get("key") == key else None
    if not isinstance(sizes, dict) or not sizes:
        return False
    for name, size in sizes.items():
        path = Path(folder) / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def check_free_space(root: Path, needed_bytes: int, what: str, setting: str) -> None:
    """Refuse to start building what would not fit: else the disk fills part way and the build fails late."""
    free = shutil.disk_usage(root).free
    if needed_bytes > free:
        raise DiskSpaceError(
            f"the {what} needs about {human_bytes(needed_bytes)} in {root} but only {human_bytes(free)} are free "
            f"there: free some space, or pass {setting} on a larger disk"
        )


@contextmanager
def build_lock(final: Path, what: str) -> Iterator[None]:
    """Hold the lock of a shared folder being built (a cache): of two runs building the same one at once, one
    builds and the other waits here, then finds it whole and reuses it, instead of computing it twice."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(lock_file_for(final), f"a run building the {what} {final.name}", wait=True, remove=True):
        yield


@contextmanager
def staged_folder(root: Path, key: str, is_complete: Callable[[Path, str], bool], what: str) -> Iterator[Path]:
    """Yield an empty staging folder beside root/key; when the block ends normally, rename it to root/key.

    The block writes its marker of completeness (meta.json) last. A leftover incomplete root/key is
    removed first; a concurrent builder that published the same key first wins (its content is
    equivalent); on any error the staging folder is removed and nothing is published.
    """
    final = Path(root) / key
    if final.exists() and not is_complete(final, key):  # re-checked: another builder may just have finished
        logger.warning("%s %s is incomplete or corrupt; rebuilding it", what, final)
        shutil.rmtree(final, ignore_errors=True)
    Path(root).mkdir(parents=True, exist_ok=True)
    # Sweep abandoned staging folders (why: docs/decisions.md, "Abandoned folders: judged by owner, not age").
    remove_abandoned(root, rf"\..+\.tmp-{OWNER_PATTERN}")
    staging = Path(root) / owned_name(f".{key}.tmp-")
    staging.mkdir()
    try:
        yield staging
        try:
            os.rename(staging, final)
        except OSError:
            # Another process published the same key first; its cache is equivalent.
            if not is_complete(final, key):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
