"""The built-in example run: synthesise data and an SSL-style checkpoint, then run the finetune flow."""

from __future__ import annotations

from pathlib import Path

from lib.config import DataConfig, FinetuneConfig, ModelConfig, TrainingConfig
from lib.example import make_example_dataset, make_ssl_checkpoint

DEMO_MEMBER = "demo-full"


def demo_config(directory: Path, epochs: int = 20, device: str = "auto") -> FinetuneConfig:
    """Create the example inputs under `directory` (once) and return the run config for them."""
    directory = Path(directory)
    data_root = directory / "data"
    if not (data_root / "validation").is_dir():
        make_example_dataset(data_root)
    checkpoint = directory / "ssl-checkpoint" / "checkpoint-0"
    if not (checkpoint / "model.safetensors").is_file():
        make_ssl_checkpoint(checkpoint)
    return FinetuneConfig(
        name=DEMO_MEMBER,
        output_dir=directory / "ensemble",
        data=DataConfig(
            train_dir=data_root / "train",
            validation_dir=data_root / "validation",
            cache_dir=directory / "cache",
        ),
        model=ModelConfig(ssl_checkpoint=checkpoint),
        # The example encoder is tiny and randomly initialised (there is no real SSL pretraining
        # to preserve), so it needs a higher learning rate and no accumulation to learn in seconds.
        training=TrainingConfig(
            epochs=epochs,
            batch_size=8,
            gradient_accumulation_steps=1,
            learning_rate=1e-3,
            warmup_steps=0.1,
            device=device,
        ),
    )
