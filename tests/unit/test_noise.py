"""Background noise: windows cut from recordings, mixed into features as the waveforms would have mixed."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from lib.config import DataConfig
from lib.core.errors import ConfigError
from lib.data.features import FeatureParams, fbank_frames, make_feature_extractor
from lib.data.noise import BackgroundNoise, background_noise, check_noise_folder, noise_folder
from tests.layouts import make_speech_commands

PARAMS = FeatureParams(clip_seconds=0.5, max_frames=64, num_mel_bins=64)


def features_of(waveforms: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(make_feature_extractor(PARAMS)(waveforms, sampling_rate=16000, return_tensors="np")[
        "input_values"])


def test_recordings_are_cut_into_clip_long_windows_with_no_energy_past_their_frames(tmp_path):
    rng = np.random.default_rng(0)
    sf.write(str(tmp_path / "a.wav"), 0.1 * rng.standard_normal(24000), 16000)  # 1.5 s: 3 windows
    sf.write(str(tmp_path / "b.flac"), 0.1 * rng.standard_normal(44100), 44100)  # 1 s at 44.1 kHz: 2 windows
    sf.write(str(tmp_path / "short.wav"), 0.1 * rng.standard_normal(4000), 16000)  # 0.25 s: none
    bank = background_noise(tmp_path, PARAMS)
    frames = fbank_frames(16000, 0.5)
    assert bank.windows.shape == (5, 64, 64)
    assert torch.isfinite(bank.windows[:, :frames]).all() and torch.isneginf(bank.windows[:, frames:]).all()
    (tmp_path / "only-short").mkdir()
    (tmp_path / "short.wav").rename(tmp_path / "only-short" / "short.wav")
    with pytest.raises(ConfigError, match=r"no recording under .*only-short is 0.5 s or longer \(of 1 audio files\)"):
        background_noise(tmp_path / "only-short", PARAMS)


def test_mixing_in_the_log_mel_domain_matches_mixing_the_waveforms(tmp_path):
    rng = np.random.default_rng(1)
    t = np.arange(8000) / 16000
    clip = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    noise = (0.5 * rng.standard_normal(8000)).astype(np.float32)
    sf.write(str(tmp_path / "noise.wav"), noise, 16000, subtype="FLOAT")
    bank = background_noise(tmp_path, PARAMS)
    torch.manual_seed(0)
    mixed = bank.mix(features_of([clip]), probability=1.0, volume=1.0)
    torch.manual_seed(0)
    torch.rand(1), torch.randint(1, (1,))  # the draws mix makes before the scale: chosen, window
    scale = float(torch.rand(1).clamp_min(1e-6))
    truth = features_of([clip + scale * noise])
    frames = fbank_frames(16000, 0.5)
    error = (mixed - truth)[0, :frames] * 2 * PARAMS.std  # in log power (nepers)
    assert float(error.abs().median()) < 0.1, float(error.abs().median())  # under half a dB
    assert torch.equal(mixed[0, frames:], features_of([clip])[0, frames:])  # padding stays padding


def test_a_probability_of_zero_leaves_features_alone_and_noise_only_adds_energy():
    windows = torch.randn(3, 64, 64)
    bank = BackgroundNoise(windows, PARAMS)
    features = torch.randn(16, 64, 64)
    assert torch.equal(bank.mix(features, 0.0, 0.1), features)
    mixed = bank.mix(features, 1.0, 0.5)
    assert bool((mixed >= features - 1e-6).all()) and not torch.equal(mixed, features)


def test_the_noise_folder_is_the_setting_else_the_speech_commands_one_and_refused_when_absent(tmp_path):
    make_speech_commands(tmp_path, speakers=3)
    speech = DataConfig(layout="speech_commands", root=tmp_path)
    assert noise_folder(speech) == tmp_path / "_background_noise_"
    folders = DataConfig(train_dir=tmp_path, validation_dir=tmp_path / "v")
    assert noise_folder(folders) is None
    check_noise_folder(folders, 0.0)
    with pytest.raises(ConfigError, match="background_noise_probability is 0.8 but there is no noise folder"):
        check_noise_folder(folders, 0.8)
    folders.noise_dir = tmp_path / "_background_noise_"
    check_noise_folder(folders, 0.8)
