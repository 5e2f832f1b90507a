"""The built-in example run: synthesise data, pretrain a tiny encoder on its clips and more unlabeled ones
(the astft-pretrain flow), then fine-tune from it (astft-finetune; with --ensemble, the ensemble flow
over a sweep of layer counts and seeds)."""

from __future__ import annotations

from pathlib import Path

from lib.config import (
    DataConfig,
    EncoderConfig,
    EnsembleConfig,
    FinetuneConfig,
    ModelConfig,
    PretrainConfig,
    TrainingConfig,
)
from lib.example import (
    make_example_dataset,
    make_example_test_split,
    make_unlabeled_clips,
    tiny_ast_config,
)

DEMO_MEMBER = "demo-full"
DEMO_ENCODER = "demo-ssl"
DEMO_UNLABELED_CLIPS = 96  # beside the 96 train clips: pretraining sees 192, fine-tuning the 96 labelled
DEMO_PRETRAIN_EPOCHS = 10
# The example encoder has 2 layers: last-1 trains its top layer and the head, last-2 all of it; two
# seeds each make the 4 variants the ensemble chooses from.
DEMO_SWEEP_LAST_N = [1, 2]
DEMO_SEEDS = [1, 2]


def _demo_inputs(directory: Path, epochs: int, device: str) -> dict:
    """Create the example inputs under `directory` (once each) and return the config sections for them."""
    data_root = directory / "data"
    if not (data_root / "validation").is_dir():
        make_example_dataset(data_root)
        make_example_test_split(data_root)
    if not (directory / "unlabeled").is_dir():
        make_unlabeled_clips(directory / "unlabeled", DEMO_UNLABELED_CLIPS)
    output_dir = directory / "ensemble"
    return {
        "output_dir": output_dir,
        "data": DataConfig(
            train_dir=data_root / "train",
            validation_dir=data_root / "validation",
            test_dir=data_root / "test",
            cache_dir=directory / "cache",
        ),
        "unlabeled": directory / "unlabeled",
        "checkpoint": output_dir / "ssl" / DEMO_ENCODER,  # what demo_pretrain_config publishes
        # The example encoder is tiny and only briefly pretrained, so it needs a higher learning rate and no
        # accumulation to learn in seconds.
        "training": TrainingConfig(
            epochs=epochs,
            batch_size=8,
            gradient_accumulation_steps=1,
            learning_rate=1e-3,
            warmup_steps=0.1,
            device=device,
        ),
    }


def demo_pretrain_config(directory: Path, device: str = "auto", epochs: int = DEMO_PRETRAIN_EPOCHS) -> PretrainConfig:
    """Pretraining of the example's tiny encoder (64 wide, 2 layers) on the train clips and the unlabeled
    ones; the validation clips score its masked-patch accuracy."""
    inputs = _demo_inputs(Path(directory), 1, device)
    data = inputs["data"]
    tiny = tiny_ast_config()
    return PretrainConfig(
        name=DEMO_ENCODER,
        output_dir=inputs["output_dir"],
        data={
            "data_dirs": [data.train_dir, inputs["unlabeled"]],
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
