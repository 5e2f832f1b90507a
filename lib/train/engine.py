"""run_trainer: the one HF Trainer loop both recipes use (work dir, resume, train, out-of-memory message, save).

A recipe (lib.recipes.finetune, lib.recipes.pretrain) describes its run as a TrainerSetup: the Trainer
class and what it is built with, where the work dir is and what must match to resume from it. run_trainer
claims the work dir, resumes this same run's last checkpoint or starts fresh, trains, saves the model to
setup.model_dir and writes Trainer's log history beside it, and returns a TrainerRun.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from pydantic import BaseModel
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from lib.core.errors import TrainingOutOfMemory
from lib.core.layout import LOG_HISTORY_FILE
from lib.train.epochs import WarmupClock
from lib.train.workdir import RunOwner, prepare_work_dir

logger = logging.getLogger(__name__)


def resume_key(run_fingerprint: str, features_key: str, model_key: str) -> str:
    """What must match for a work dir's checkpoints to be resumed: the config's fingerprint, the exact clips
    and features (the feature cache key covers the scan fingerprint), and the model it started from."""
    return f"{run_fingerprint}-{features_key}-{model_key}"


@dataclass
class TrainerSetup:
    """One Trainer run as a recipe describes it; run_trainer builds the Trainer from it and runs it."""

    trainer_class: type[Trainer]
    model: torch.nn.Module
    arguments: dict[str, Any]  # TrainingArguments' keyword arguments (lib.train.arguments)
    train_dataset: Dataset
    eval_dataset: Dataset
    work_dir: Path
    resume_key: str
    owner: RunOwner  # whose work dir it is (run.json)
    model_dir: Path  # where the trained model is saved when training ends
    # what trains, as the out-of-memory message names it: "member x (per-device batch size 8, 128 frames, ...)"
    describe: str
    memory_fixes: Sequence[str] = ()  # fixes for running out of GPU memory besides the batch size and max_frames
    processing_class: Any = None  # saved beside each checkpoint (the feature extractor)
    data_collator: Callable | None = None
    compute_metrics: Callable | None = None
    callbacks: list[TrainerCallback] = field(default_factory=list)
    trainer_options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of trainer_class's own
    after_save: Callable[[Path], None] | None = None  # e.g. save another form of the model into model_dir
    earlier_resume_keys: tuple[str, ...] = ()  # what an earlier astft recorded for this same run


class TrainerRun(BaseModel):
    """What a Trainer run left: the saved model, where it resumed from, and Trainer's state at the end."""

    work_dir: str
    model_dir: str
    resumed_from: str | None
    optimizer_steps: int
    epochs_run: float
    best_checkpoint: str | None  # with load_best_model_at_end: the checkpoint whose weights model_dir holds
    best_metric: float | None
    best_epoch: int | None
    # seconds: set-up, first optimizer step, first evaluation, the rest of the loop, saving (lib.core.timing)
    phases: dict[str, float] = {}


def run_trainer(setup: TrainerSetup) -> TrainerRun:
    """Claim the work dir, resume or start fresh, train, save the model and the log history."""
    work_dir = Path(setup.work_dir)
    resume_from = prepare_work_dir(work_dir, setup.resume_key, setup.owner, setup.earlier_resume_keys)
    if resume_from:
        logger.info("resuming from %s", resume_from)
    started = time.perf_counter()
    trainer = setup.trainer_class(
        **setup.trainer_options,
        model=setup.model,
        args=TrainingArguments(**setup.arguments),
        train_dataset=setup.train_dataset,
        eval_dataset=setup.eval_dataset,
        processing_class=setup.processing_class,
        data_collator=setup.data_collator,
        compute_metrics=setup.compute_metrics,
        callbacks=setup.callbacks,
    )
    quiet_trainer_console(trainer)
    clock = next((callback for callback in setup.callbacks if isinstance(callback, WarmupClock)), None)
    if clock is None:
        clock = WarmupClock()
        trainer.add_callback(clock)
    try:
        with frozen_heap():  # before any worker forks
            start_evaluation_workers(trainer)
            set_up = clock.start()
            trainer.train(resume_from_checkpoint=resume_from)
    except torch.cuda.OutOfMemoryError as error:
        raise out_of_memory(setup) from error
    trained = time.perf_counter()
    trainer.save_model(str(setup.model_dir))  # with load_best_model_at_end: the best epoch's weights
    if setup.after_save is not None:
        setup.after_save(Path(setup.model_dir))
    first_step = clock.first_step or set_up  # none taken: a run resumed at its end
    first_evaluation = clock.evaluations[0] if clock.evaluations else 0.0
    phases = {
        "trainer set-up": set_up - started,
        # data loader start, compilation and the first forward and backward pass: the warm-up a user waits through
        "first optimizer step": first_step - set_up,
        "first evaluation": first_evaluation,  # the evaluation loader's start, the first forward at its shapes
        "training loop": trained - first_step - first_evaluation,
        "saving the best model": time.perf_counter() - trained,
    }
    state = trainer.state
    (work_dir / LOG_HISTORY_FILE).write_text(json.dumps(state.log_history, indent=2))
    return TrainerRun(
        work_dir=str(work_dir),
        model_dir=str(setup.model_dir),
        resumed_from=resume_from,
        optimizer_steps=state.global_step,
        epochs_run=state.epoch or 0.0,
        best_checkpoint=state.best_model_checkpoint,
        best_metric=state.best_metric,
        best_epoch=best_epoch(state.best_model_checkpoint, state.log_history),
        phases={name: round(seconds, 3) for name, seconds in phases.items()},
    )


_runs_in_this_process = 0


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the objects that exist before training out of the cyclic garbage collector while it trains.

    Trainer starts training with accelerate's free_memory(), a full gc.collect(): in a flow's process (Prefect,
    transformers, datasets: about 570,000 objects) that alone took 0.28 s on 2 cores before the first step, and
    every later full collection pays it again. Frozen, those objects are skipped, and DataLoader workers forked
    from this process no longer copy the pages a collection in them would touch (Python's gc.freeze docs give
    this use). Reference counting frees as always; the frozen objects return to the collector afterwards. A
    caller that froze objects itself keeps them frozen.

    What free_memory() is for stays done: garbage in cycles is frozen too, and a finished member's model is such
    garbage (accelerate's autocast wrapper makes model.forward refer back to the model). So from the second run
    in a process (the next member of an ensemble or fold), the heap is collected before it is frozen; the first
    run has no earlier model to free.
    """
    global _runs_in_this_process
    if _runs_in_this_process:
        gc.collect()
    _runs_in_this_process += 1
    already_frozen = gc.get_freeze_count() > 0
    gc.freeze()
    try:
        yield
    finally:
        if not already_frozen:
            gc.unfreeze()


def start_evaluation_workers(trainer: Trainer) -> None:
    """Start the evaluation loader's workers now, so that they come up while the first epoch trains.

    With persistent workers, Trainer keeps one evaluation loader for the whole run, but builds it, and starts
    its workers, only at the first evaluation, which then waits for them. torch's DataLoader.__iter__ starts
    them without waiting, on the torch loader inside accelerate's wrapper (whose own __iter__ is a generator:
    calling it would do nothing); the first evaluation's iter() then resumes the same workers.
    """
    args = trainer.args
    if trainer.eval_dataset is None or not (args.dataloader_num_workers and args.dataloader_persistent_workers):
        return
    loader = trainer.get_eval_dataloader()  # kept by Trainer for every evaluation of the run
    state = torch.get_rng_state()  # the iterator draws its workers' base seed: training's draws stay as they were
    iter(getattr(loader, "base_dataloader", loader))
    torch.set_rng_state(state)


class TrainingBar(ProgressCallback):
    """Trainer's progress bar over the optimizer steps alone (--progress): no evaluation bar under it, and no
    log dicts written through it (EpochLogCallback says each epoch once)."""

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        pass

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


def quiet_trainer_console(trainer: Trainer) -> None:
    """Trainer prints every log dict ({'loss': ...}, {'eval_loss': ...}) to the console: PrinterCallback without
    progress bars, ProgressCallback with them. The epoch line is ours, so neither prints them here."""
    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(TrainingBar)


def best_epoch(best_checkpoint: str | None, log_history: list[dict]) -> int | None:
    """The epoch of the checkpoint load_best_model_at_end chose, from the evaluation logged at its step (a whole
    number: evaluation runs at the end of each epoch)."""
    if not best_checkpoint:
        return None
    step = int(Path(best_checkpoint).name.split("-")[-1])
    epoch = next((entry["epoch"] for entry in log_history if entry.get("step") == step and "eval_loss" in entry), None)
    return None if epoch is None else round(epoch)


def out_of_memory(setup: TrainerSetup) -> TrainingOutOfMemory:
    """The one out-of-memory message: what was training, and the knobs that lower its memory."""
    fixes = [
        "lower training.batch_size (--batch-size) and raise gradient_accumulation_steps to keep the effective batch",
        *setup.memory_fixes,
        "cut features.max_frames (--max-frames)",
    ]
    return TrainingOutOfMemory(
        f"GPU out of memory training {setup.describe}. To fit: {'; or '.join(fixes)}. Checkpoints already saved "
        "are kept: re-running the same config resumes from them."
    )
