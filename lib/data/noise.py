"""Background-noise augmentation: windows of noise recordings (Speech Commands' _background_noise_/, or
data.noise_dir) mixed into training clips' log-mel features at a random volume.

TensorFlow's Speech Commands recipe mixes a random window of a noise recording into the waveform, scaled by a
factor drawn from 0..background_volume, for a share (background_frequency) of the training clips. Here the
waveforms are gone once the feature cache is built, so the mix happens where the features are: for
uncorrelated signals the power spectra add, so the mixed log-mel is logaddexp(clip, noise + 2 log(scale)).
That is exact in expectation, not sample by sample (the cross term of the two spectra averages to zero, it is
not zero in one frame). The noise windows' features are computed once per run, in seconds.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from lib.config import DataConfig
from lib.core.errors import AudioError, ConfigError
from lib.data.audio import AUDIO_SUFFIXES, read_wav, resample, to_mono
from lib.data.features import FeatureParams, fbank_frames, make_feature_extractor, one_torch_thread
from lib.data.layouts import SPEECH_COMMANDS_NOISE

logger = logging.getLogger(__name__)

# Enough windows for variety (Speech Commands' six recordings make about 400 one-second windows), bounded
# so that an hour of noise does not become 3,600 feature rows held in memory.
MAX_WINDOWS = 2000


def noise_folder(data: DataConfig) -> Path | None:
    """The folder of noise recordings: data.noise_dir, else a Speech Commands root's _background_noise_/."""
    if data.noise_dir is not None:
        return Path(data.noise_dir)
    if data.layout == "speech_commands" and (Path(data.root) / SPEECH_COMMANDS_NOISE).is_dir():
        return Path(data.root) / SPEECH_COMMANDS_NOISE
    return None


def check_noise_folder(data: DataConfig, probability: float) -> None:
    """Background noise asked for needs a folder of recordings; refused at plan time otherwise."""
    if not probability:
        return
    folder = noise_folder(data)
    if folder is None or not folder.is_dir():
        raise ConfigError(
            f"training.augmentation.background_noise_probability is {probability:g} but there is no noise folder"
            + (f" ({folder} is not a folder)" if folder is not None else "")
            + ": set data.noise_dir to a folder of noise recordings (a speech_commands root has _background_noise_/)"
        )


class BackgroundNoise:
    """Noise windows as raw log-mel (windows x frames x mel bins; frames past a window's content are -inf, no
    energy), and how to mix them into normalised features."""

    def __init__(self, windows: torch.Tensor, params: FeatureParams):
        self.windows = windows
        self.normalize, self.mean, self.scale = params.normalize, params.mean, 2 * params.std  # ASTFeatureExtractor's

    def mix(self, features: torch.Tensor, probability: float, volume: float) -> torch.Tensor:
        """Each sample, with the probability, plus a random window scaled by U(0, volume) in amplitude."""
        batch, device = features.shape[0], features.device
        chosen = torch.rand(batch, device=device) < probability
        if not bool(chosen.any()):
            return features
        picks = torch.randint(len(self.windows), (batch,), device="cpu")
        noise = self.windows[picks].to(device=device, dtype=features.dtype)
        gain_db = 2 * torch.log(torch.rand(batch, device=device).clamp_min(1e-6) * volume)  # log of a power ratio
        raw = features * self.scale + self.mean if self.normalize else features
        mixed = torch.logaddexp(raw, noise + gain_db[:, None, None])
        mixed = (mixed - self.mean) / self.scale if self.normalize else mixed
        return torch.where(chosen[:, None, None], mixed, features)


def background_noise(folder: Path, params: FeatureParams) -> BackgroundNoise:
    """Cut every recording under folder into clip_seconds windows and compute their raw log-mel features."""
    files = sorted(path for path in Path(folder).rglob("*") if path.suffix.lower() in AUDIO_SUFFIXES and path.is_file())
    samples = int(round(params.sample_rate_hz * params.clip_seconds))
    windows: list[np.ndarray] = []
    for path in files:
        try:
            data, source_hz = read_wav(path)
        except AudioError as error:
            logger.warning("background noise: skipping %s: %s", error.path, error.reason)
            continue
        waveform = resample(to_mono(data), source_hz, params.sample_rate_hz)
        windows += [waveform[start:start + samples] for start in range(0, len(waveform) - samples + 1, samples)]
    if not windows:
        raise ConfigError(
            f"background noise: no recording under {folder} is {params.clip_seconds:g} s or longer (of "
            f"{len(files)} audio files); add longer ones, or set training.augmentation.background_noise_probability=0"
        )
    if len(windows) > MAX_WINDOWS:  # evenly spread over the recordings
        windows = [windows[index] for index in np.linspace(0, len(windows) - 1, MAX_WINDOWS).astype(int)]
    extractor = make_feature_extractor(params.model_copy(update={"normalize": False}))
    with one_torch_thread():
        raw = extractor(windows, sampling_rate=params.sample_rate_hz, return_tensors="np")["input_values"]
    raw = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))
    raw[:, min(fbank_frames(params.sample_rate_hz, params.clip_seconds), raw.shape[1]):] = -math.inf  # padding
    logger.info("background noise: %d windows of %g s from %d recordings in %s", len(raw), params.clip_seconds,
                len(files), folder)
    return BackgroundNoise(raw, params)
