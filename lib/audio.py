"""Waveform loading: decode (soundfile), down-mix to mono, resample (torchaudio), trim/pad."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional


class AudioError(ValueError):
    """A clip that cannot be turned into a waveform; carries the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode any PCM width or float wav into float32 of shape (frames, channels) in [-1, 1]."""
    try:
        data, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        raise AudioError(path, f"cannot decode audio ({error})") from error
    return data, sample_rate


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


def load_clip(path: str | Path, sample_rate_hz: int, clip_seconds: float) -> np.ndarray:
    """Return a mono float32 waveform at sample_rate_hz, exactly clip_seconds long."""
    data, source_hz = read_wav(path)
    if data.size == 0:
        raise AudioError(path, "zero-length audio (no samples)")
    if not np.isfinite(data).all():
        raise AudioError(path, "contains NaN or infinite samples")
    waveform = resample(to_mono(data), source_hz, sample_rate_hz)
    return fit_length(waveform, int(round(sample_rate_hz * clip_seconds))).astype(np.float32, copy=False)
