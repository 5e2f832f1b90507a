"""The per-epoch record of a run: the train log line, epochs.jsonl and the on_epoch hook (the UI's progress)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from pydantic import BaseModel
from transformers import TrainerCallback

from lib.core.layout import EPOCHS_FILE

logger = logging.getLogger(__name__)


class EpochRecord(BaseModel):
    """One finished epoch: what the train log, the epochs file and an on_epoch hook receive."""

    epoch: int
    epochs: int
    batch_size: int
    step: int
    train_loss: float | None
    # validation metrics, without the eval_ prefix; None: not measured (pretraining: no masked patch scored)
    metrics: dict[str, float | None]
    seconds: float  # wall time of the epoch, its validation included
    evaluation_seconds: float | None = None  # of that: the validation (the first pays for its workers' start)
    # on the first epoch a run trained: seconds from trainer.train() to the end of its first optimizer step (data
    # loader start, the first forward and backward, kernel selection); the warm-up a user waits through
    first_step_seconds: float | None = None
    # more training figures the Trainer logged with the loss (pretraining's); None as in metrics
    train_metrics: dict[str, float | None] = {}
    # Set on the epoch a run resumed into mid-way (from a checkpoint_every_steps checkpoint): the optimizer
    # step it resumed after. Trainer restarts its running loss there, so the epoch's training figures
    # (train_loss, train_metrics) cover only steps resumed_at_step + 1 to step.
    resumed_at_step: int | None = None

    def line(self) -> str:
        parts = [f"epoch {self.epoch}/{self.epochs}", f"batch_size {self.batch_size}", f"step {self.step}"]
        if self.train_loss is not None:
            parts.append(f"train_loss {self.train_loss:.4f}")
        parts += [f"train_{key} {_figure(key, value)}" for key, value in self.train_metrics.items()]
        parts += [f"{key} {_figure(key, value)}" for key, value in self.metrics.items()]
        parts.append(f"seconds {self.seconds:.1f}")
        if self.evaluation_seconds is not None:
            parts.append(f"eval_seconds {self.evaluation_seconds:.2f}")
        if self.first_step_seconds is not None:
            parts.append(f"first_step_seconds {self.first_step_seconds:.2f}")
        if self.resumed_at_step is not None:
            parts.append(f"(resumed mid-epoch: train figures of steps {self.resumed_at_step + 1}-{self.step} only)")
        return "  ".join(parts)


def _figure(key: str, value: float | None) -> str:
    """4 decimals; a count (masked_patches) as a whole number."""
    if value is None:
        return "n/a"
    return f"{value:.0f}" if key.endswith("patches") else f"{value:.4f}"


class WarmupClock(TrainerCallback):
    """The warm-up a run pays: seconds from trainer.train() (start()) to its first optimizer step, and of each
    evaluation (from the epoch's end to its metrics). First in the callback list, so that the epoch log sees the
    evaluation just timed. On CUDA the first step and each epoch's end wait for the GPU (one sync each), so that
    queued work is counted where it was launched."""

    def __init__(self):
        self.start()
        self.started = None  # every field set, and not started yet

    def start(self) -> float:
        """Called right before trainer.train(): what Trainer does before on_train_begin (its data loader,
        optimizer, free_memory) is part of the warm-up. Returns the time it started from."""
        self.started: float | None = _now()
        self.first_step: float | None = None  # when the first optimizer step ended
        self.evaluation_started: float | None = None
        self.last_evaluation: float | None = None  # seconds of the evaluation just ended; None: not timed
        self.evaluations: list[float] = []
        return self.started

    @property
    def first_step_seconds(self) -> float | None:
        if self.started is None or self.first_step is None:
            return None
        return self.first_step - self.started

    def on_train_begin(self, args, state, control, **kwargs):
        if self.started is None:  # a Trainer driven without run_trainer
            self.started = _now()

    def on_step_end(self, args, state, control, **kwargs):
        if self.first_step is None:
            self.first_step = _now(synchronize=True)

    def on_epoch_end(self, args, state, control, **kwargs):
        self.evaluation_started = _now(synchronize=True)

    def on_evaluate(self, args, state, control, **kwargs):
        self.last_evaluation = None if self.evaluation_started is None else _now() - self.evaluation_started
        if self.last_evaluation is not None:
            self.evaluations.append(self.last_evaluation)
        self.evaluation_started = None


def _now(synchronize: bool = False) -> float:
    """time.perf_counter(), after the GPU's queued work when asked (never starts CUDA where it is not in use)."""
    if synchronize and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


class EpochLogCallback(TrainerCallback):
    """Per epoch, on rank 0: a line in train_log<name>.txt, an EpochRecord in epochs.jsonl, and on_epoch(record).

    train_keys: figures besides the loss that the Trainer logs with it, copied into the record. clock: the run's
    WarmupClock, whose evaluation and first-step seconds the records carry.
    """

    def __init__(
        self, path: Path, total_epochs: int, records: Path | None = None,
        on_epoch: Callable[[EpochRecord], None] | None = None, train_keys: Sequence[str] = (),
        clock: WarmupClock | None = None,
    ):
        self.clock = clock
        self.first_step_logged = False
        self.path = Path(path)
        self.records = Path(records) if records else self.path.parent / EPOCHS_FILE
        self.total_epochs = total_epochs
        self.on_epoch = on_epoch
        self.train_keys = tuple(train_keys)
        self.started = time.monotonic()
        self.resumed_at_step: int | None = None  # until the first epoch after a mid-epoch resume is logged

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        # A resumed state's epoch is fractional when its checkpoint was saved mid-epoch (checkpoint_every_steps)
        if state.global_step and not float(state.epoch or 0).is_integer():
            self.resumed_at_step = state.global_step
        with self.path.open("a") as log:
            log.write(f"# run started: {self.total_epochs} epochs, output {args.output_dir}\n")
            if self.resumed_at_step is not None:
                log.write(
                    f"# resumed mid-epoch {math.ceil(state.epoch)} after step {state.global_step}: that epoch's "
                    "train figures cover only the steps after it\n"
                )

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero:
            return
        train_logs = [entry for entry in state.log_history if "loss" in entry]
        record = EpochRecord(
            epoch=round(state.epoch or 0),
            epochs=self.total_epochs,
            batch_size=state.train_batch_size or args.per_device_train_batch_size,
            step=state.global_step,
            train_loss=train_logs[-1]["loss"] if train_logs else None,
            train_metrics={key: train_logs[-1][key] for key in self.train_keys if train_logs and key in train_logs[-1]},
            metrics={
                key[5:]: value for key, value in sorted((metrics or {}).items())
                if key.startswith("eval_") and (value is None or isinstance(value, (int, float)))
                and "runtime" not in key and "per_second" not in key
            },
            seconds=time.monotonic() - self.started,
            resumed_at_step=self.resumed_at_step,
            **self._warmup(),
        )
        self.resumed_at_step = None
        with self.path.open("a") as log:
            log.write(record.line() + "\n")
        with self.records.open("a") as records:
            records.write(record.model_dump_json() + "\n")
        if self.on_epoch is not None:
            self.on_epoch(record)


    def _warmup(self) -> dict[str, float | None]:
        """This epoch's evaluation seconds, and the first step's on the first record of the run."""
        if self.clock is None:
            return {}
        first_step = None if self.first_step_logged else self.clock.first_step_seconds
        self.first_step_logged = self.first_step_logged or first_step is not None
        return {
            "evaluation_seconds": self.clock.last_evaluation,
            "first_step_seconds": first_step,
        }


def read_epoch_records(work_dir: Path, skip: int = 0) -> list[EpochRecord]:
    """The complete records in work_dir's epochs file after the first `skip` (a line being written waits)."""
    try:
        lines = (Path(work_dir) / EPOCHS_FILE).read_text().split("\n")[:-1]
    except FileNotFoundError:
        return []
    return [EpochRecord.model_validate_json(line) for line in lines[skip:]]
