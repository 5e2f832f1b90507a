"""The built-in example run: synthesise data and an SSL-style checkpoint, then run the finetune flow
(or, with --ensemble, the ensemble flow over a sweep of layer counts and seeds)."""

from __future__ import annotations

from pathlib import Path

from lib.config import DataConfig, EncoderConfig, EnsembleConfig, FinetuneConfig, ModelConfig, TrainingConfig
from lib.example import make_example_dataset, make_example_test_split, make_ssl_checkpoint

DEMO_MEMBER = "demo-full"
# The example encoder has 2 layers: last-1 trains its top layer and the head, last-2 all of it; two
# seeds each make the 4 variants the ensemble chooses from.
DEMO_SWEEP_LAST_N = [1, 2]
DEMO_SEEDS = [1, 2]


def _demo_inputs(directory: Path, epochs: int, device: str) -> dict:
    """Create the example inputs under `directory` (once each) and return the config sections for them."""
    data_root = directory / "data"
    if not (data_root / "validation").is_dir():
        make_example_dataset(data_root)
    if not (data_root / "test").is_dir():  # also for demo folders made before the test split existed
        make_example_test_split(data_root)
    checkpoint = directory / "ssl-checkpoint" / "checkpoint-0"
    if not (checkpoint / "model.safetensors").is_file():
        make_ssl_checkpoint(checkpoint)
    return {
        "output_dir": directory / "ensemble",
        "data": DataConfig(
            train_dir=data_root / "train",
            validation_dir=data_root / "validation",
            test_dir=data_root / "test",
            cache_dir=directory / "cache",
        ),
        "checkpoint": checkpoint,
        # The example encoder is tiny and randomly initialised (there is no real SSL pretraining
        # to preserve), so it needs a higher learning rate and no accumulation to learn in seconds.
        "training": TrainingConfig(
            epochs=epochs,
            batch_size=8,
            gradient_accumulation_steps=1,
            learning_rate=1e-3,
            warmup_steps=0.1,
            device=device,
        ),
    }


def demo_config(directory: Path, epochs: int = 20, device: str = "auto") -> FinetuneConfig:
    """The single-member demo: full fine-tuning of the example encoder."""
    inputs = _demo_inputs(Path(directory), epochs, device)
    return FinetuneConfig(
        name=DEMO_MEMBER,
        output_dir=inputs["output_dir"],
        data=inputs["data"],
        model=ModelConfig(ssl_checkpoint=inputs["checkpoint"]),
        training=inputs["training"],
    )


def demo_ensemble_config(directory: Path, epochs: int = 20, device: str = "auto") -> EnsembleConfig:
    """The ensemble demo: last-1 and last-2 (full) with seeds 1 and 2, greedy selection."""
    inputs = _demo_inputs(Path(directory), epochs, device)
    return EnsembleConfig(
        output_dir=inputs["output_dir"],
        data=inputs["data"],
        model=EncoderConfig(ssl_checkpoint=inputs["checkpoint"]),
        training=inputs["training"],
        sweep_last_n=DEMO_SWEEP_LAST_N,
        seeds=DEMO_SEEDS,
    )
