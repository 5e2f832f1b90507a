"""Every exception type astft raises on purpose, and how a path is shown in their messages.

Each message names the file or parameter, what was found and the fix; the CLI prints it as one line.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


def is_utf8(name: str) -> bool:
    """Whether a file name is valid UTF-8."""
    # Python keeps the bytes of a name that is not UTF-8 as lone surrogates, which then break every
    # str.encode(): hashing, JSON, Arrow, logging. Such names are caught here, once.
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def display_path(path: str | os.PathLike) -> str:
    """The path as printable text: bytes that are not UTF-8 shown as \\xNN escapes, so messages never crash."""
    text = os.fspath(path)
    return text if is_utf8(text) else os.fsencode(text).decode("utf-8", "backslashreplace")


class ConfigError(ValueError):
    """A run configuration that cannot be used; the message names the parameter and the fix."""


class ScanError(ValueError):
    """The dataset folders do not have the expected layout; the message names the folder and the fix."""


class AudioError(ValueError):
    """A clip that cannot be turned into a waveform; carries the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        path = display_path(path)  # a name that is not UTF-8 must not crash the message itself
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class FeatureWorkerDied(RuntimeError):
    """A feature worker process ended abruptly (killed, out of memory); the message names the setting."""


class BadAudioError(ValueError):
    """Clips that passed the header scan but cannot be decoded into usable samples (bad: path -> reason)."""

    def __init__(self, bad: dict[str, str], message: str):
        super().__init__(message)
        self.bad = dict(sorted(bad.items()))


class FeatureCacheCorrupt(ValueError):
    """A feature cache file of the right size that cannot be read; the message says which folder to delete."""


class CheckpointError(ValueError):
    """An SSL checkpoint that cannot become an encoder; the message names the file/key and the fix."""


class TrunkOverflow(ValueError):
    """The trunk's outputs do not fit float16; the cache falls back to float32."""


class NonFiniteError(ValueError):
    """Weights, logits or a loss hold NaN or inf; the message names where and what to do."""


class EnsembleError(ValueError):
    """Members that cannot be combined, or an ensemble folder that cannot be read."""


class TrainingOutOfMemory(RuntimeError):
    """The GPU ran out of memory; the message says which knobs to turn."""


class DiskSpaceError(RuntimeError):
    """Not enough free space for what a run is about to write; the message names the folder and the fix."""


# A write that failed because the disk is full or read-only: the same one-line advice wherever it happens.
DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "read-only file system"}


def disk_error(error: BaseException) -> OSError | None:
    """The full-disk or read-only OSError behind error (itself, its causes, or inside a shutil.Error), if any."""
    seen = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_ERRNOS:
            return current
        if isinstance(current, shutil.Error) and current.args and isinstance(current.args[0], list):
            # copytree's errors: (source, destination, str(error)); the errno survives only in the text
            for *_, text in current.args[0]:
                for number, words in DISK_ERRNOS.items():
                    if f"[Errno {number}]" in str(text):
                        return OSError(number, words)
        pending += [current.__cause__, current.__context__]
    return None


def disk_error_message(error: OSError, folders: dict[str, Path]) -> str:
    """One line for a full or read-only disk: what failed, the free space of each folder the run writes to
    (label -> path), and the fix."""
    # shutil's copies name the source first and what they were writing second
    written = error.filename2 or error.filename
    where = f" writing {display_path(written)}" if written else ""
    free = []
    for label, folder in folders.items():
        existing = next((p for p in (Path(folder), *Path(folder).parents) if p.exists()), None)
        if existing is not None:
            free.append(f"{label} {display_path(folder)}: {human_bytes(shutil.disk_usage(existing).free)} free")
    fix = (
        "make the folder writable or pass --output-dir / --cache-dir on a writable disk"
        if error.errno == errno.EROFS
        else "free space there (old caches under <cache_dir>/features and trunk can go) or pass --output-dir / "
        "--cache-dir on a larger disk"
    )
    return (
        f"{DISK_ERRNOS[error.errno]}{where} ({'; '.join(free) or 'no folder known'}): {fix}; what was published "
        "before is untouched, and a rerun reuses every finished cache and checkpoint"
    )


def human_bytes(count: float) -> str:
    """1.2 GB, 340 MB, 172 KB: a size as a person reads it (never a full disk's "0.0 GB" for 160 KB)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} bytes"


class EnsembleMembersFailed(RuntimeError):
    """Some members of an ensemble failed; the others were published and evaluated (flows.ensemble)."""


class CrossvalFoldsFailed(RuntimeError):
    """Some folds of a cross-validation failed; the others were published, and crossval.json reports them
    (flows.crossval)."""
