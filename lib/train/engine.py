"""Trainer assembly: TrainingArguments, batch-size schedule, callbacks, work-dir ownership, resume."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from datasets import Dataset
from pydantic import BaseModel
from transformers import Trainer, TrainerCallback

from lib.data.augment import augmenting_trainer
from lib.config import TrainingConfig
from lib.evaluate.metrics import compute_metrics
from lib.core.runtime import Runtime
from lib.core.layout import BEST_MODEL_DIR, LOG_HISTORY_FILE
from lib.train.arguments import SpeedSettings, attention_implementation, build_training_arguments, run_callbacks, speed_settings
from lib.train.epochs import EpochRecord
from lib.train.schedule import EpochBatchSizeTrainer, epoch_batch_sizes
from lib.train.workdir import RunOwner, prepare_work_dir

logger = logging.getLogger(__name__)


class TrainResult(BaseModel):
    """What a Trainer run left: where the best model is, how it was chosen, how the run went."""

    work_dir: str
    best_model_dir: str
    best_checkpoint: str | None
    metric: str
    best_metric: float | None
    best_epoch: float | None
    epochs_run: float
    resumed_from: str | None
    train_log: str
    precision: str
    device: str
    batch_sizes: list[int]  # train batch size of each epoch
    optimizer_steps: int
    speed: SpeedSettings


def train_classifier(
    model: torch.nn.Module,
    train_dataset: Dataset,
    eval_dataset: Dataset,
    processing_class,
    config: TrainingConfig,
    work_dir: Path,
    train_log: Path,
    run_fingerprint: str,
    runtime: Runtime,
    extra_callbacks: Sequence[TrainerCallback] = (),
    data_collator: Callable | None = None,
    save_best: Callable[[Path], None] | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    owner: RunOwner | None = None,
) -> TrainResult:
    """Fine-tune with HF Trainer, keep the best epoch by the chosen metric, save it to work_dir/best-model.

    The train batch size follows config.batch_sizes per epoch; extra_callbacks observe the run.
    data_collator replaces Trainer's (the feature extractor's padding collator, which expects
    input_values); save_best(best_dir) runs after the best model is saved there, e.g. to save
    another form of it (lib.model.trunk.TrunkTail saves its full classifier); on_epoch(record) runs after
    each epoch's validation (e.g. to report progress); owner is whose work dir it is (prepare_work_dir).
    """
    work_dir = Path(work_dir)
    resume_from = prepare_work_dir(work_dir, run_fingerprint, owner)
    if resume_from:
        logger.info("resuming from %s", resume_from)
    callbacks = run_callbacks(config, work_dir, train_log, on_epoch, extra_callbacks)
    # A constant batch size needs none of the schedule's epoch-loop hooks, and stock Trainer also
    # covers torchrun/DDP, which the schedule does not.
    schedule = {"epoch_batch_sizes": epoch_batch_sizes(config)} if config.batch_sizes else {}
    trainer_class = EpochBatchSizeTrainer if config.batch_sizes else Trainer
    # Unaugmented runs keep the plain classes, so they train exactly as before augmentation existed.
    augment = {"augmentation": config.augmentation} if config.augmentation.enabled else {}
    trainer_class = augmenting_trainer(trainer_class) if augment else trainer_class
    trainer = trainer_class(
        **schedule,
        **augment,
        model=model,
        args=build_training_arguments(config, work_dir, runtime),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processing_class,
        data_collator=data_collator,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume_from)

    best_dir = work_dir / BEST_MODEL_DIR
    trainer.save_model(str(best_dir))  # load_best_model_at_end put the best epoch's weights back
    if save_best is not None:
        save_best(best_dir)
    state = trainer.state
    (work_dir / LOG_HISTORY_FILE).write_text(json.dumps(state.log_history, indent=2))
    best_epoch = None
    if state.best_model_checkpoint:
        best_step = int(Path(state.best_model_checkpoint).name.split("-")[-1])
        best_epoch = next(
            (entry["epoch"] for entry in state.log_history if entry.get("step") == best_step and "eval_loss" in entry),
            None,
        )
    return TrainResult(
        work_dir=str(work_dir),
        best_model_dir=str(best_dir),
        best_checkpoint=state.best_model_checkpoint,
        metric=config.metric_for_best_model,
        best_metric=state.best_metric,
        best_epoch=best_epoch,
        epochs_run=state.epoch or 0.0,
        resumed_from=resume_from,
        train_log=str(train_log),
        precision=runtime.precision,
        device=runtime.device,
        batch_sizes=epoch_batch_sizes(config),
        optimizer_steps=state.global_step,
        speed=speed_settings(config, runtime, attention_implementation(model)),
    )
