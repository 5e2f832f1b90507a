"""Every exception type astft raises on purpose, and how a path is shown in their messages.

Each message names the file or parameter, what was found and the fix; the CLI prints it as one line.
"""

from __future__ import annotations

import os
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
