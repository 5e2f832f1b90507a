"""The built-in example: a small learnable audio dataset, unlabeled clips, a tiny AST config and the demo's
run configs (pretrain, then fine-tune or an ensemble), all made offline.

Used by `astft demo`, the benchmarks and the tests. Everything is deterministic for a given seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from transformers import ASTConfig

from lib.config import (
    DataConfig,
    EncoderConfig,
    EnsembleConfig,
    FinetuneConfig,
    ModelConfig,
    PretrainConfig,
    TrainingConfig,
)
from lib.core.layout import SSL_FOLDER

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


# --- the demo: write_demo_inputs writes the clips once; the config builders only describe runs over them ---

DEMO_MEMBER = "demo-full"
DEMO_ENCODER = "demo-ssl"
DEMO_UNLABELED_CLIPS = 96  # beside the 96 train clips: pretraining sees 192, fine-tuning the 96 labelled
DEMO_PRETRAIN_EPOCHS = 10
# The example encoder has 2 layers: last-1 trains its top layer and the head, last-2 all of it; two
# seeds each make the 4 variants the ensemble chooses from.
DEMO_SWEEP_LAST_N = [1, 2]
DEMO_SEEDS = [1, 2]


def write_demo_inputs(directory: Path) -> None:
    """Synthesise the demo's clips under `directory` (data/train, validation, test and unlabeled/), once."""
    directory = Path(directory)
    if not (directory / "data" / "validation").is_dir():
        make_example_dataset(directory / "data")
        make_example_test_split(directory / "data")
    if not (directory / "unlabeled").is_dir():
        make_unlabeled_clips(directory / "unlabeled", DEMO_UNLABELED_CLIPS)


def _demo_data(directory: Path) -> DataConfig:
    data_root = Path(directory) / "data"
    return DataConfig(
        train_dir=data_root / "train",
        validation_dir=data_root / "validation",
        test_dir=data_root / "test",
        cache_dir=Path(directory) / "cache",
    )


def _demo_training(epochs: int, device: str) -> TrainingConfig:
    # The example encoder is tiny and only briefly pretrained: a higher learning rate than the notebook's and no
    # accumulation make it learn in seconds.
    return TrainingConfig(
        epochs=epochs, batch_size=8, gradient_accumulation_steps=1, learning_rate=1e-3, warmup_steps=0.1, device=device
    )


def demo_pretrain_config(directory: Path, device: str = "auto", epochs: int = DEMO_PRETRAIN_EPOCHS) -> PretrainConfig:
    """Pretraining of the example's tiny encoder (64 wide, 2 layers) on the train clips and the unlabeled
    ones; the validation clips score its masked-patch accuracy."""
    data = _demo_data(directory)
    tiny = tiny_ast_config()
    return PretrainConfig(
        name=DEMO_ENCODER,
        output_dir=Path(directory) / "ensemble",
        data={
            "data_dirs": [data.train_dir, Path(directory) / "unlabeled"],
            "validation_dir": data.validation_dir,
            "cache_dir": data.cache_dir,
        },
        model={key: getattr(tiny, key) for key in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                    "intermediate_size")},
        # SSAST's 1e-4 and 1000 warmup steps suit millions of steps; a few hundred clips want more, sooner
        training={"epochs": epochs, "batch_size": 16, "learning_rate": 1e-3, "warmup_steps": 0.1,
                  "device": device},
    )


def demo_config(directory: Path, epochs: int = 20, device: str = "auto") -> FinetuneConfig:
    """The single-member demo: full fine-tuning of the pretrained example encoder."""
    output_dir = Path(directory) / "ensemble"
    return FinetuneConfig(
        name=DEMO_MEMBER,
        output_dir=output_dir,
        data=_demo_data(directory),
        model=ModelConfig(ssl_checkpoint=output_dir / SSL_FOLDER / DEMO_ENCODER),  # what pretraining publishes
        training=_demo_training(epochs, device),
    )


def demo_ensemble_config(directory: Path, epochs: int = 20, device: str = "auto") -> EnsembleConfig:
    """The ensemble demo: last-1 and last-2 (full) with seeds 1 and 2, greedy selection."""
    output_dir = Path(directory) / "ensemble"
    return EnsembleConfig(
        output_dir=output_dir,
        data=_demo_data(directory),
        model=EncoderConfig(ssl_checkpoint=output_dir / SSL_FOLDER / DEMO_ENCODER),
        training=_demo_training(epochs, device),
        sweep_last_n=DEMO_SWEEP_LAST_N,
        seeds=DEMO_SEEDS,
    )
