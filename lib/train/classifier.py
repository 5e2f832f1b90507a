"""Fine-tuning's Trainer for any classifier: checkpoints per epoch, the best epoch kept, the batch-size schedule and
augmentation when asked for. The fine-tuning recipe builds a member's from it; tests and benchmarks a bare classifier's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import Trainer, TrainerCallback

from lib.config.sections import TrainingConfig
from lib.core.layout import BEST_MODEL_DIR, train_log_name
from lib.core.runtime import Runtime
from lib.data.augment import augmenting_trainer
from lib.data.noise import BackgroundNoise
from lib.evaluate.metrics import compute_metrics
from lib.train.arguments import finetune_arguments, run_callbacks
from lib.train.engine import TrainerSetup
from lib.train.epochs import EpochRecord
from lib.train.schedule import EpochBatchSizeTrainer, epoch_batch_sizes
from lib.train.workdir import RunOwner

EpochHook = Callable[[EpochRecord], None]


def classifier_trainer_setup(
    model: torch.nn.Module,
    train: Dataset,
    validation: Dataset,
    training: TrainingConfig,
    work_dir: Path,
    runtime: Runtime,
    resume_key: str,
    owner: RunOwner | None = None,
    train_log: Path | None = None,
    describe: str = "a classifier",
    processing_class: Any = None,
    data_collator: Callable | None = None,
    after_save: Callable[[Path], None] | None = None,
    on_epoch: EpochHook | None = None,
    extra_callbacks: Sequence[TrainerCallback] = (),
    earlier_resume_keys: tuple[str, ...] = (),
    background_noise: BackgroundNoise | None = None,
) -> TrainerSetup:
    """Fine-tuning's Trainer for any classifier: a checkpoint per epoch, the best by the chosen metric saved to
    work_dir/best-model, the per-epoch batch-size schedule and augmentation when asked for (unaugmented runs keep
    the plain Trainer). extra_callbacks observe the run; background_noise: the windows that
    training.augmentation.background_noise_probability mixes in."""
    # A constant batch size needs none of the schedule's epoch-loop hooks, and stock Trainer also covers
    # torchrun/DDP, which the schedule does not.
    trainer_class: type[Trainer] = EpochBatchSizeTrainer if training.batch_sizes else Trainer
    options: dict[str, Any] = {"epoch_batch_sizes": epoch_batch_sizes(training)} if training.batch_sizes else {}
    if training.augmentation.enabled:
        trainer_class = augmenting_trainer(trainer_class)
        options["augmentation"] = training.augmentation
        options["background_noise"] = background_noise
    work_dir = Path(work_dir)
    return TrainerSetup(
        trainer_class=trainer_class,
        trainer_options=options,
        model=model,
        arguments=finetune_arguments(training, work_dir, runtime),
        train_dataset=train,
        eval_dataset=validation,
        work_dir=work_dir,
        resume_key=resume_key,
        owner=owner or RunOwner(),
        model_dir=work_dir / BEST_MODEL_DIR,
        describe=describe,
        memory_fixes=(
            "start a per-epoch batch-size schedule small (--batch-sizes)",
            "train fewer layers (--train-last-n-layers / --head-only)",
        ),
        processing_class=processing_class,
        data_collator=data_collator,
        compute_metrics=compute_metrics,
        callbacks=run_callbacks(
            training, work_dir, train_log or work_dir / train_log_name(""), on_epoch, extra_callbacks
        ),
        after_save=after_save,
        earlier_resume_keys=earlier_resume_keys,
    )
