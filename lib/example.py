"""The built-in example: a small learnable audio dataset, unlabeled clips and a tiny AST config, made offline.

Used by `astft demo`, the benchmarks and the tests. Everything is deterministic for a given seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from transformers import ASTConfig

EXAMPLE_CLASSES = ("chirp", "noise_burst", "tone_high", "tone_low")


def tiny_ast_config(**overrides) -> ASTConfig:
    """A small AST (64 hidden, 2 layers, 128 frames) that trains in seconds on a CPU."""
    values = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        num_mel_bins=128,
        max_length=128,
    )
    values.update(overrides)
    return ASTConfig(**values)


def synth_clip(
    class_name: str, rng: np.random.Generator, sample_rate_hz: int = 16000, seconds: float = 1.0
) -> np.ndarray:
    """One clip of a class; classes differ in spectral shape, clips in pitch, level, timing and noise."""
    t = np.arange(int(sample_rate_hz * seconds)) / sample_rate_hz
    amplitude = rng.uniform(0.2, 0.7)
    phase = rng.uniform(0, 2 * np.pi)
    if class_name == "tone_low":
        signal = np.sin(2 * np.pi * rng.uniform(250, 450) * t + phase)
    elif class_name == "tone_high":
        signal = np.sin(2 * np.pi * rng.uniform(2500, 3500) * t + phase)
    elif class_name == "chirp":
        start, end = rng.uniform(300, 600), rng.uniform(3000, 5000)
        signal = np.sin(2 * np.pi * (start * t + (end - start) * t**2 / (2 * seconds)) + phase)
    elif class_name == "noise_burst":
        signal = np.zeros_like(t)
        begin = rng.integers(0, len(t) // 2)
        length = rng.integers(len(t) // 4, len(t) // 2)
        signal[begin : begin + length] = rng.standard_normal(min(length, len(t) - begin))
        signal /= max(np.abs(signal).max(), 1e-6)
    else:
        raise ValueError(f"unknown example class {class_name!r}; choose from {EXAMPLE_CLASSES}")
    noise = rng.standard_normal(len(t)) * rng.uniform(0.005, 0.03)
    return np.clip(amplitude * signal + noise, -1, 1).astype(np.float32)


def make_example_dataset(
    root: Path,
    train_per_class: int = 24,
    validation_per_class: int = 8,
    classes: tuple[str, ...] = EXAMPLE_CLASSES,
    seed: int = 0,
    sample_rate_hz: int = 16000,
) -> tuple[Path, Path]:
    """Write root/train/<class>/*.wav and root/validation/<class>/*.wav (16-bit PCM); return both dirs."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, count in (("train", train_per_class), ("validation", validation_per_class)):
        _write_clips(root / split, classes, count, rng, sample_rate_hz)
    return root / "train", root / "validation"


def make_example_test_split(
    root: Path,
    per_class: int = 8,
    classes: tuple[str, ...] = EXAMPLE_CLASSES,
    seed: int = 0,
    sample_rate_hz: int = 16000,
) -> Path:
    """Write root/test/<class>/*.wav from a random stream that train and validation never draw from
    (pitches, levels, timings and noise unseen in train); return the folder."""
    test_dir = Path(root) / "test"
    _write_clips(test_dir, classes, per_class, np.random.default_rng([seed, 1]), sample_rate_hz)
    return test_dir


def _write_clips(split_dir: Path, classes: tuple[str, ...], count: int, rng: np.random.Generator,
                 sample_rate_hz: int) -> None:
    for class_name in classes:
        folder = split_dir / class_name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            clip = synth_clip(class_name, rng, sample_rate_hz)
            sf.write(str(folder / f"{class_name}_{index:03d}.wav"), clip, sample_rate_hz, subtype="PCM_16")


def make_unlabeled_clips(
    folder: Path,
    count: int = 96,
    classes: tuple[str, ...] = EXAMPLE_CLASSES,
    seed: int = 0,
    sample_rate_hz: int = 16000,
    parts: int = 2,
) -> Path:
    """Write `count` clips of the example's kinds, in no class folder (labels unrecorded), spread over
    folder/part-<k>/ (pretraining reads any depth), from a random stream the labelled splits never draw from."""
    rng = np.random.default_rng([seed, 2])
    for index in range(count):
        part = Path(folder) / f"part-{index % parts}"
        part.mkdir(parents=True, exist_ok=True)
        clip = synth_clip(classes[rng.integers(len(classes))], rng, sample_rate_hz)
        sf.write(str(part / f"clip_{index:04d}.wav"), clip, sample_rate_hz, subtype="PCM_16")
    return Path(folder)


