"""Per-epoch batch-size schedule: a Trainer whose train dataloader follows training.batch_sizes."""

from __future__ import annotations

import inspect
import logging
import math
import re

import transformers
from transformers import Trainer

from lib.config import TrainingConfig
from lib.core.errors import ConfigError

logger = logging.getLogger(__name__)


def epoch_batch_sizes(config: TrainingConfig) -> list[int]:
    """The train batch size of each epoch: batch_sizes (its last entry repeated), else batch_size."""
    schedule = config.batch_sizes or [config.batch_size]
    return [schedule[min(epoch, len(schedule) - 1)] for epoch in range(config.epochs)]


def batches_per_epoch(num_examples: int, batch_size: int, drop_last: bool = False) -> int:
    """Length of a DataLoader over num_examples (the last batch is partial unless dropped)."""
    return num_examples // batch_size if drop_last else math.ceil(num_examples / batch_size)


def optimizer_steps_per_epoch(
    num_examples: int, batch_sizes: list[int], gradient_accumulation_steps: int, drop_last: bool = False
) -> list[int]:
    """Optimizer steps of each epoch: ceil(batches / accumulation), as Trainer steps through an epoch."""
    return [
        max(math.ceil(batches_per_epoch(num_examples, size, drop_last) / gradient_accumulation_steps), 1)
        for size in batch_sizes
    ]


# The private Trainer hooks EpochBatchSizeTrainer overrides, as transformers 5.24 defines them.
# transformers is pinned; this check turns a silent mis-training after an upgrade into a clear error.
SCHEDULE_HOOKS = {
    "_run_epoch": (
        "self", "model", "epoch", "train_dataloader", "steps_in_epoch", "num_update_steps_per_epoch", "trial",
        "ignore_keys_for_eval", "start_time", "resume_from_checkpoint", "epochs_trained",
        "steps_trained_in_current_epoch",
    ),
    "_init_training_state": (
        "self", "max_steps", "num_update_steps_per_epoch", "num_train_epochs", "resume_from_checkpoint", "trial",
    ),
    "set_initial_training_values": ("self", "args", "dataloader"),
}


# set_initial_training_values returns these seven values, which the schedule unpacks by position.
INITIAL_VALUES = (
    "num_train_epochs", "num_update_steps_per_epoch", "num_examples", "num_train_samples",
    "total_train_batch_size", "steps_in_epoch", "max_steps",
)


SCHEDULE_TESTED_WITH = "transformers 5.24.0"


def schedule_hooks_problem(trainer_class: type = Trainer) -> str | None:
    """Why EpochBatchSizeTrainer cannot work with this Trainer, or None if its hooks are as expected."""
    for name, expected in SCHEDULE_HOOKS.items():
        method = getattr(trainer_class, name, None)
        if method is None:
            return f"Trainer.{name} does not exist"
        found = tuple(inspect.signature(method).parameters)
        if found != expected:
            return f"Trainer.{name} takes {found}, expected {expected}"
    doc = inspect.getdoc(trainer_class.set_initial_training_values) or ""
    listed = tuple(re.findall(r"^- `(\w+)`", doc, flags=re.MULTILINE))
    if listed != INITIAL_VALUES:
        found = listed or "undocumented values"
        return f"Trainer.set_initial_training_values returns {found}, expected {INITIAL_VALUES}"
    return None


def check_schedule_supported() -> None:
    """Refuse training.batch_sizes early when the installed Trainer's private hooks have changed."""
    problem = schedule_hooks_problem()
    if problem:
        raise ConfigError(
            f"training.batch_sizes needs the private Trainer hooks of {SCHEDULE_TESTED_WITH} "
            f"(installed: transformers {transformers.__version__}): {problem}. Install the pinned version "
            "(pip install -e .) or train with one --batch-size"
        )


class EpochBatchSizeTrainer(Trainer):
    """HF Trainer whose train batch size follows a per-epoch schedule.

    Stock Trainer builds the train dataloader once and derives from its length the length of every
    epoch, the total number of optimizer steps (which the LR schedule spans) and the position to
    resume from; editing args.per_device_train_batch_size from a callback, as the notebook did,
    changes none of them. Here each epoch gets a dataloader of its own batch size and those three
    come from the whole schedule. It hooks transformers 5.24's epoch loop (`_run_epoch`,
    `_init_training_state`, both private: transformers is pinned) and supports one process, with
    DataParallel over local GPUs as stock Trainer does.
    """

    def __init__(self, *args, epoch_batch_sizes: list[int], **kwargs):
        check_schedule_supported()
        super().__init__(*args, **kwargs)
        if len(epoch_batch_sizes) != math.ceil(self.args.num_train_epochs) or self.args.max_steps > 0:
            raise ValueError(
                f"epoch_batch_sizes has {len(epoch_batch_sizes)} entries for num_train_epochs="
                f"{self.args.num_train_epochs} (max_steps={self.args.max_steps}); give one per epoch and no max_steps"
            )
        if self.args.world_size > 1:
            raise ValueError("a per-epoch batch-size schedule needs a single training process (no torchrun/DDP)")
        self.epoch_batch_sizes = list(epoch_batch_sizes)
        # DataParallel splits each batch over the local GPUs, as args.train_batch_size does.
        self._loader_sizes = [size * max(1, self.args.n_gpu) for size in epoch_batch_sizes]
        self.epoch_steps = optimizer_steps_per_epoch(
            len(self.train_dataset), self._loader_sizes, self.args.gradient_accumulation_steps,
            self.args.dataloader_drop_last,
        )

    def _batches_in_epoch(self, epoch: int) -> int:
        return batches_per_epoch(len(self.train_dataset), self._loader_sizes[epoch], self.args.dataloader_drop_last)

    def set_initial_training_values(self, args, dataloader):
        epochs, _, examples, _, total_batch_size, _, _ = super().set_initial_training_values(args, dataloader)
        # max_steps is what the LR scheduler is built for: the sum over the real epoch lengths.
        return (
            epochs, self.epoch_steps[0], examples, examples * epochs, total_batch_size,
            self._batches_in_epoch(0), sum(self.epoch_steps),
        )

    def _init_training_state(self, *args, **kwargs):
        epochs_trained, batches_to_skip = super()._init_training_state(*args, **kwargs)
        if self.state.global_step > 0:  # resuming: the stock code divides by one fixed epoch length
            epochs_trained, steps_into_epoch = self.epoch_position(self.state.global_step)
            accumulation = self.args.gradient_accumulation_steps
            batches_to_skip = 0 if self.args.ignore_data_skip else steps_into_epoch * accumulation
        return epochs_trained, batches_to_skip

    def epoch_position(self, global_step: int) -> tuple[int, int]:
        """(epochs completed, optimizer steps into the next epoch) after global_step steps."""
        for epoch, steps in enumerate(self.epoch_steps):
            if global_step < steps:
                return epoch, global_step
            global_step -= steps
        return len(self.epoch_steps), 0

    def _run_epoch(self, **kwargs):
        epoch = kwargs["epoch"]
        self._train_batch_size = self._loader_sizes[epoch]  # get_train_dataloader batches by this
        self.state.train_batch_size = self._train_batch_size  # what EpochLogCallback reports
        dataloader = self.get_train_dataloader()
        if len(dataloader) != self._batches_in_epoch(epoch):
            raise RuntimeError(
                f"epoch {epoch}: the train dataloader has {len(dataloader)} batches, the schedule expected "
                f"{self._batches_in_epoch(epoch)}; EpochBatchSizeTrainer supports one process only"
            )
        self.callback_handler.train_dataloader = dataloader
        kwargs.update(
            train_dataloader=dataloader,
            steps_in_epoch=len(dataloader),
            num_update_steps_per_epoch=self.epoch_steps[epoch],
        )
        return super()._run_epoch(**kwargs)
