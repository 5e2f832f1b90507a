"""Waveforms: header probing (sample rate, truncation), decode (soundfile: WAV, FLAC, OGG, MP3), mono down-mix,
resample, crop/pad."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional

from lib.core.errors import AudioError, display_path, is_utf8

# torchaudio.functional.resample's defaults: its sinc kernel reaches this many zero crossings of
# ROLLOFF x the lower rate's Nyquist frequency on each side of an output sample.
RESAMPLE_FILTER_WIDTH = 6
RESAMPLE_ROLLOFF = 0.99
# Float clips a little over full scale are common (inter-sample overs); +6 dBFS and up means samples
# written without scaling to [-1, 1] (e.g. raw int16 values stored as float).
LOUD_FLOAT_PEAK = 2.0
# Which clip_seconds of a longer clip are kept: its start, its centre, or a window fixed by its name.
Window = Literal["first", "centre", "random"]
# A down-mix 60 dB below its channels' peak is silence made of sound: opposite-polarity channels.
CANCELLED_MIX_RATIO = 1e-3


def source_frames(source_hz: int, target_hz: int, clip_seconds: float) -> int:
    """Source frames that decide the first clip_seconds after resampling: the clip plus the kernel's reach."""
    reach = math.ceil(RESAMPLE_FILTER_WIDTH * source_hz / (RESAMPLE_ROLLOFF * min(source_hz, target_hz))) + 1
    return math.ceil(clip_seconds * source_hz) + (reach if source_hz != target_hz else 0)


def window_start(path: str | Path, frames: int, source_hz: int, clip_seconds: float, window: Window) -> int:
    """The first source frame of the clip_seconds kept of a longer clip: its start, its centre window, or
    ("random") a window at an offset fixed by the file's name and folder, so a rebuilt cache crops the same."""
    excess = frames - math.ceil(clip_seconds * source_hz)
    if excess <= 0 or window == "first":
        return 0
    if window == "centre":
        return excess // 2
    name = "/".join(Path(path).parts[-2:])  # with its folder: yes/0a7c2a8d_nohash_0.wav and no/... crop apart
    draw = int.from_bytes(hashlib.sha1(name.encode("utf-8", "surrogateescape")).digest()[:8], "big")
    return draw % (excess + 1)


def read_wav(
    path: str | Path, target_hz: int | None = None, clip_seconds: float | None = None, window: Window = "first"
) -> tuple[np.ndarray, int]:
    """Decode any PCM width or float wav (or FLAC, OGG, MP3) into float32 of shape (frames, channels) in [-1, 1].

    With target_hz and clip_seconds, only the frames that clip needs are decoded: an hour-long file
    (or a header claiming a tiny sample rate) costs no more memory than one clip. window says which
    clip_seconds of a longer file (window_start).
    """
    try:
        with sf.SoundFile(str(path)) as handle:
            source_hz = handle.samplerate
            if problem := sample_rate_problem(source_hz):
                raise AudioError(path, problem)
            # A scanned clip was checked already; predict's inputs were not, and this is one header read.
            if problem := truncation_problem(path):
                raise AudioError(path, problem)
            frames = -1 if clip_seconds is None else source_frames(source_hz, target_hz or source_hz, clip_seconds)
            if clip_seconds is not None and window != "first" and handle.seekable():
                handle.seek(window_start(path, handle.frames, source_hz, clip_seconds, window))
            data = handle.read(frames, dtype="float32", always_2d=True)
    except UnicodeEncodeError as error:  # soundfile encodes the name strictly as UTF-8
        raise AudioError(path, "the name is not valid UTF-8 (bytes shown as \\xNN); rename the file") from error
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        raise AudioError(path, undecodable(path, error, "cannot decode audio")) from error
    return data, source_hz


def undecodable(path: str | Path, error: Exception, otherwise: str = "not a readable audio file") -> str:
    """Why a file soundfile cannot open is not a clip. libsndfile says "File does not exist or is not a regular
    file" of any file it cannot decode (a web page saved as .mp3): a file that is there is named as not audio."""
    if Path(path).is_file() and "does not exist or is not a regular file" in str(error):
        return (f"the file is there but is not {Path(path).suffix.lstrip('.').upper() or 'audio'} data libsndfile "
                "can decode (a download saved under the wrong name?); re-export it")
    return f"{otherwise} ({error})"


def to_mono(data: np.ndarray) -> np.ndarray:
    return data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]


def resample(waveform: np.ndarray, source_hz: int, target_hz: int) -> np.ndarray:
    if source_hz == target_hz:
        return waveform
    tensor = torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(waveform)), source_hz, target_hz)
    return tensor.numpy()


def fit_length(waveform: np.ndarray, num_samples: int) -> np.ndarray:
    """Keep the first num_samples samples, zero-padding at the end when the clip is shorter."""
    if waveform.shape[0] >= num_samples:
        return waveform[:num_samples]
    return np.pad(waveform, (0, num_samples - waveform.shape[0]))


def suspicious(data: np.ndarray, mono: np.ndarray) -> str | None:
    """Why a decodable clip probably is not what its author meant, or None; it is still used."""
    peak = float(np.abs(data).max(initial=0.0))
    if peak > LOUD_FLOAT_PEAK:  # only float files can decode outside [-1, 1]
        return f"float samples reach {peak:.2f}, far outside [-1, 1]; the clip was probably written unscaled"
    if data.shape[1] > 1 and peak > 0 and float(np.abs(mono).max(initial=0.0)) <= CANCELLED_MIX_RATIO * peak:
        return (
            f"the {data.shape[1]} channels cancel out when averaged to mono (one is polarity-inverted?); "
            "the clip trains as silence"
        )
    return None


def load_clip(
    path: str | Path, sample_rate_hz: int, clip_seconds: float, notes: dict[str, str] | None = None,
    window: Window = "first",
) -> np.ndarray:
    """Return a mono float32 waveform at sample_rate_hz, exactly clip_seconds long (window: which part of a longer
    clip, see window_start).

    When notes is given, a clip that decodes but looks wrong (see suspicious) adds path -> why to it.
    """
    data, source_hz = read_wav(path, sample_rate_hz, clip_seconds, window)
    if data.size == 0:
        raise AudioError(path, "zero-length audio (no samples)")
    if not np.isfinite(data).all():
        raise AudioError(path, "contains NaN or infinite samples")
    mono = to_mono(data)
    if notes is not None and (note := suspicious(data, mono)):
        notes[display_path(path)] = note
    waveform = resample(mono, source_hz, sample_rate_hz)
    return fit_length(waveform, int(round(sample_rate_hz * clip_seconds))).astype(np.float32, copy=False)


# What soundfile (libsndfile >= 1.1) decodes, and the scan therefore lists.
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".mp3"})


# Below this a header is corrupt rather than low-fidelity (telephone audio is 8 kHz), and resampling
# from it would blow a few KB up to gigabytes (a 1 Hz header makes 16000 output samples per input one).
MIN_SAMPLE_RATE_HZ = 1000


def sample_rate_problem(rate_hz: int) -> str | None:
    """Why a header's (positive) sample rate cannot be the clip's real one, or None."""
    if rate_hz >= MIN_SAMPLE_RATE_HZ:
        return None
    return (
        f"sample rate {rate_hz} Hz is below {MIN_SAMPLE_RATE_HZ} Hz, so the header is most likely corrupt; "
        "re-export the clip at its real sample rate"
    )


def _riff_shortfall(path: Path) -> tuple[int, int] | None:
    """(bytes of samples the RIFF header promises, bytes the file holds) when a wav is cut short, else None."""
    with open(path, "rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
            return None  # RF64, W64 or another container: libsndfile's own checks apply
        file_bytes = os.fstat(handle.fileno()).st_size
        while len(chunk := handle.read(8)) == 8:
            size = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"data":
                # 0 and 0xFFFFFFFF are what writers that cannot seek back (pipes, streams) leave behind.
                present = file_bytes - handle.tell()
                return (size, present) if size not in (0, 0xFFFFFFFF) and present < size else None
            handle.seek(size + (size & 1), os.SEEK_CUR)  # chunks are padded to even sizes
    return None


def probe_clip(path: Path) -> tuple[sf._SoundFileInfo | None, str | None]:
    if not is_utf8(str(path)):
        return None, (
            "the name is not valid UTF-8 (bytes shown as \\xNN); rename the file or its folder "
            "(e.g. convmv -f latin1 -t utf8 -r --notest DIR)"
        )
    try:
        info = sf.info(str(path))
        shortfall = _riff_shortfall(path)
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        return None, undecodable(path, error)
    if info.frames == 0:
        return None, "zero-length audio (no samples)"
    if info.samplerate <= 0 or info.channels <= 0:
        return None, f"invalid header (sample rate {info.samplerate}, channels {info.channels})"
    if problem := sample_rate_problem(info.samplerate):
        return None, problem
    if shortfall is not None:
        return None, truncation_reason(shortfall)
    return info, None


def truncation_reason(shortfall: tuple[int, int]) -> str:
    # libsndfile reads what is there, which would then be zero-padded and used as a whole clip.
    return (
        f"truncated: the header promises {shortfall[0]} bytes of samples but the file holds {shortfall[1]} "
        "(an interrupted copy or download?); copy it again"
    )


def truncation_problem(path: str | os.PathLike) -> str | None:
    """Why a wav is cut short (its header promises more samples than it holds), or None; for readers
    that were not preceded by a scan (lib.evaluate.predict's inputs)."""
    shortfall = _riff_shortfall(Path(path))
    return None if shortfall is None else truncation_reason(shortfall)
