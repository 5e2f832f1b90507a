"""Trainer assembly: TrainingArguments, batch-size schedule, callbacks, work-dir ownership, resume."""

from __future__ import annotations

import inspect
import json
import logging
import math
import re
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch
import transformers
from datasets import Dataset
from pydantic import BaseModel
from transformers import PretrainedConfig, Trainer, TrainerCallback, TrainingArguments

from lib.data.augment import augmenting_trainer
from lib.config import PretrainTrainingConfig, TrainingConfig
from lib.core.errors import ConfigError
from lib.core.guards import NonFiniteLossCallback
from lib.evaluate.metrics import compute_metrics
from lib.core.runtime import Runtime, usable_cores
from lib.core.layout import BEST_MODEL_DIR, EPOCHS_FILE, LOG_HISTORY_FILE, PARTIAL_RUN_FILE, RUN_FILE

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
        return f"Trainer.set_initial_training_values returns {listed or 'undocumented values'}, expected {INITIAL_VALUES}"
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
        parts += [f"train_{key} {_figure(value)}" for key, value in self.train_metrics.items()]
        parts += [f"{key} {_figure(value)}" for key, value in self.metrics.items()]
        parts.append(f"seconds {self.seconds:.1f}")
        if self.resumed_at_step is not None:
            parts.append(f"(resumed mid-epoch: train figures of steps {self.resumed_at_step + 1}-{self.step} only)")
        return "  ".join(parts)


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


class EpochLogCallback(TrainerCallback):
    """Per epoch, on rank 0: a line in train_log<name>.txt, an EpochRecord in epochs.jsonl, and on_epoch(record).

    train_keys: figures besides the loss that the Trainer logs with it, copied into the record.
    """

    def __init__(
        self, path: Path, total_epochs: int, records: Path | None = None,
        on_epoch: Callable[[EpochRecord], None] | None = None, train_keys: Sequence[str] = (),
    ):
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
        )
        self.resumed_at_step = None
        with self.path.open("a") as log:
            log.write(record.line() + "\n")
        with self.records.open("a") as records:
            records.write(record.model_dump_json() + "\n")
        if self.on_epoch is not None:
            self.on_epoch(record)


def read_epoch_records(work_dir: Path, skip: int = 0) -> list[EpochRecord]:
    """The complete records in work_dir's epochs file after the first `skip` (a line being written is left for later)."""
    try:
        lines = (Path(work_dir) / EPOCHS_FILE).read_text().split("\n")[:-1]
    except FileNotFoundError:
        return []
    return [EpochRecord.model_validate_json(line) for line in lines[skip:]]


AUTO_WORKERS_MAX = 4  # dataloader_num_workers 'auto' on CUDA: 4 feed AST-base's step (see docs/gpu.md)


class SpeedSettings(BaseModel):
    """How a run's steps were computed and fed, resolved for its device from TrainingConfig; in member.json."""

    attention: str | None  # the kernel the model's attention layers called (its config's attn_implementation)
    tf32: bool  # TF32 matmuls for float32 work (CUDA, Ampere or newer)
    optimizer: str  # TrainingArguments.optim
    compile: bool  # torch.compile
    pin_memory: bool
    dataloader_num_workers: int


def dataloader_workers(setting: int | str, runtime: Runtime, num_processes: int = 1) -> int:
    """training.dataloader_num_workers resolved: 'auto' is 0 on CPU and up to AUTO_WORKERS_MAX per process on CUDA."""
    if setting != "auto":
        return int(setting)
    if runtime.device != "cuda":
        return 0  # training's own torch threads take every core: workers would only compete with them
    # one core per process stays with the training loop, which launches the GPU work
    return max(0, min(AUTO_WORKERS_MAX, usable_cores() // num_processes - 1))


def attention_implementation(model: torch.nn.Module) -> str | None:
    """The attention kernel a model's transformers layers call (a TrunkTail's is its classifier's)."""
    return next(
        (module.config._attn_implementation for module in model.modules()
         if isinstance(getattr(module, "config", None), PretrainedConfig)),
        None,
    )


def speed_settings(config: TrainingConfig | PretrainTrainingConfig, runtime: Runtime, attention: str | None = None) -> SpeedSettings:
    """The speed settings of config on this runtime: the GPU-only ones are off on CPU."""
    return SpeedSettings(
        attention=attention,
        tf32=runtime.tf32,
        # transformers' own default since torch 2.8, on CPU too; named here so it never depends on its version
        optimizer="adamw_torch_fused" if config.optimizer == "auto" else config.optimizer,
        compile=config.compile,
        pin_memory=config.pin_memory and runtime.device == "cuda",
        dataloader_num_workers=dataloader_workers(config.dataloader_num_workers, runtime, getattr(config, "num_processes", 1)),
    )


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


def training_arguments(config: TrainingConfig, work_dir: Path, runtime: Runtime) -> dict:
    """TrainingArguments' keyword arguments for fine-tuning this config on this runtime.

    A plain dict: what a CUDA runtime gets can be checked on a CPU, where TrainingArguments itself
    refuses tf32 (it probes the GPU).
    """
    metric = config.metric_for_best_model
    return trainer_kwargs(
        config,
        work_dir,
        runtime,
        save_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model=metric,
        greater_is_better=metric != "loss",
        per_device_train_batch_size=epoch_batch_sizes(config)[0],  # later epochs: EpochBatchSizeTrainer
    )


def build_training_arguments(config: TrainingConfig, work_dir: Path, runtime: Runtime) -> TrainingArguments:
    return TrainingArguments(**training_arguments(config, work_dir, runtime))


def trainer_kwargs(
    config: TrainingConfig | PretrainTrainingConfig, work_dir: Path, runtime: Runtime, **overrides
) -> dict:
    """What every run here shares (fine-tuning and pretraining): per-epoch evaluation and logging, cosine LR
    with warmup, the runtime's device and precision, the speed settings, no NaN filtering; `overrides` add
    or replace arguments."""
    speed = speed_settings(config, runtime)
    return {
        "output_dir": str(work_dir),
        "eval_strategy": "epoch",
        "logging_strategy": "epoch",
        "save_total_limit": config.save_total_limit,
        "num_train_epochs": config.epochs,
        "per_device_train_batch_size": config.batch_size,
        "per_device_eval_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "learning_rate": config.learning_rate,
        "weight_decay": config.weight_decay,
        "lr_scheduler_type": "cosine",
        "warmup_steps": config.warmup_steps,
        "fp16": runtime.fp16,
        "bf16": runtime.bf16,
        "use_cpu": runtime.device == "cpu",
        # None leaves the float32 matmul mode alone: TrainingArguments refuses tf32 where no GPU has it
        "tf32": runtime.tf32 if runtime.device == "cuda" else None,
        "optim": speed.optimizer,
        "torch_compile": speed.compile,
        "seed": config.seed,
        "dataloader_num_workers": speed.dataloader_num_workers,
        "dataloader_pin_memory": speed.pin_memory,
        # workers kept between epochs and evaluations; the per-epoch batch-size schedule builds a new
        # train loader every epoch, whose workers would otherwise linger until it is collected
        "dataloader_persistent_workers": speed.dataloader_num_workers > 0 and not getattr(config, "batch_sizes", None),
        "report_to": "none",  # TensorBoard is added explicitly (run_callbacks), with its own log dir
        "logging_nan_inf_filter": False,  # a NaN loss must reach NonFiniteLossCallback, not be averaged away
        "disable_tqdm": False,
        **overrides,
    }


def trainer_arguments(
    config: TrainingConfig | PretrainTrainingConfig, work_dir: Path, runtime: Runtime, **overrides
) -> TrainingArguments:
    return TrainingArguments(**trainer_kwargs(config, work_dir, runtime, **overrides))


def run_callbacks(
    config: TrainingConfig | PretrainTrainingConfig,
    work_dir: Path,
    train_log: Path,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    extra_callbacks: Sequence[TrainerCallback] = (),
    train_keys: Sequence[str] = (),
) -> list[TrainerCallback]:
    """The callbacks of every run: the NaN guard, the per-epoch log (train log, epochs file, on_epoch),
    extra_callbacks, and TensorBoard when asked for."""
    callbacks: list[TrainerCallback] = [
        NonFiniteLossCallback(),  # first: a NaN epoch stops before it is logged, evaluated or saved
        EpochLogCallback(train_log, config.epochs, Path(work_dir) / EPOCHS_FILE, on_epoch, train_keys),
        *extra_callbacks,
    ]
    if config.tensorboard:
        callbacks.append(_tensorboard_callback(Path(work_dir)))
    return callbacks


def _summary_writer_class() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ConfigError(
            "training.tensorboard=true (--tensorboard) needs the tensorboard package: pip install -e '.[tensorboard]', "
            "or turn it off"
        ) from error
    return SummaryWriter


def check_tensorboard_installed() -> None:
    """Refuse training.tensorboard early (plan_run) when the extra is missing, not after the scan and features."""
    _summary_writer_class()


def _tensorboard_callback(work_dir: Path) -> TrainerCallback:
    SummaryWriter = _summary_writer_class()  # noqa: N806 - a class
    from transformers.integrations import TensorBoardCallback

    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(work_dir / "tensorboard")))


RunKind = Literal["finetune", "pretrain"]
RUN_KINDS = {"finetune": "fine-tune run (astft finetune / ensemble)", "pretrain": "pretraining run (astft pretrain)"}


class RunOwner(BaseModel):
    """Whose work dir it is, as run.json records it: the kind of run and its name (--name).

    A run refuses a work dir that another kind of run or another name made: starting would remove
    that run's checkpoints. name None (a caller below the flows) checks the kind only."""

    kind: RunKind = "finetune"
    name: str | None = None


def _marker(work_dir: Path) -> dict | None:
    """run.json's content if it marks work_dir as an astft run's own: a JSON object with a fingerprint."""
    try:
        marker = json.loads((Path(work_dir) / RUN_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return marker if isinstance(marker, dict) and "fingerprint" in marker else None


def _write_marker(work_dir: Path, run_fingerprint: str | None, owner: RunOwner | None = None) -> None:
    # Written aside and renamed over, so a kill never leaves a half-written run.json, which would
    # make the run's own work dir look foreign.
    owner = owner or RunOwner()
    previous = _marker(work_dir) or {}
    name = owner.name or previous.get("name")  # a caller without a name keeps the one recorded
    marker = {"fingerprint": run_fingerprint, "kind": owner.kind, **({"name": name} if name else {})}
    partial = Path(work_dir) / PARTIAL_RUN_FILE
    partial.write_text(json.dumps(marker))
    partial.replace(Path(work_dir) / RUN_FILE)


def check_work_dir(work_dir: Path, owner: RunOwner | None = None) -> None:
    """Refuse a work dir that is not provably this run's: a run deletes checkpoints and logs in it.

    Ours is a folder that does not exist yet, an empty one, or one marked by run.json (written by
    claim_work_dir / prepare_work_dir) for the owner's kind of run and name; a run.json that records
    no kind (astft before pretraining) is a fine-tune's, one without a name takes any name.
    Reads only; plan_run and plan_pretrain call it before any work.
    """
    work_dir = Path(work_dir)
    if not work_dir.exists():
        return
    if not work_dir.is_dir():
        raise ConfigError(f"work_dir (--work-dir) {work_dir} is a file; pass a folder (a new one is created)")
    marker = _marker(work_dir)
    if marker is None and any(entry.name != PARTIAL_RUN_FILE for entry in work_dir.iterdir()):
        raise ConfigError(
            f"work_dir (--work-dir) {work_dir} is not empty and has no {RUN_FILE} marking it as an astft run's "
            "work dir; a run removes the checkpoint-* folders, best-model/ and training logs of its work dir, so "
            f"it only takes a folder it made. Pick a new or empty folder for --work-dir, or remove {work_dir} "
            "yourself if nothing in it is needed"
        )
    if marker is None or owner is None:
        return
    kind, name = marker.get("kind", "finetune"), marker.get("name")
    if kind == owner.kind and (name is None or owner.name is None or name == owner.name):
        return
    made_by = f"{RUN_KINDS.get(kind, kind)}" + (f" {name!r}" if name else "")
    this = f"{RUN_KINDS[owner.kind]}" + (f" {owner.name!r}" if owner.name else "")
    raise ConfigError(
        f"work_dir (--work-dir) {work_dir} belongs to another run: its {RUN_FILE} says the {made_by} made it, not "
        f"this {this}, which would remove that run's checkpoints and logs. Pick another --work-dir (or leave it "
        f"unset: each run gets its own folder under --output-dir), or remove {work_dir} yourself if that run's "
        "checkpoints are not needed"
    )


def claim_work_dir(work_dir: Path, owner: RunOwner | None = None) -> None:
    """Create work_dir (or take an empty one) and mark it as the owner's; a marked one is kept as it is.

    owner None: a fine-tune run whose name is not checked (RunOwner())."""
    work_dir = Path(work_dir)
    check_work_dir(work_dir, owner or RunOwner())
    work_dir.mkdir(parents=True, exist_ok=True)
    if _marker(work_dir) is None:
        _write_marker(work_dir, None, owner)  # no config's checkpoints yet: prepare_work_dir starts fresh


def last_complete_checkpoint(work_dir: Path) -> str | None:
    """Newest checkpoint-N whose trainer_state.json (which Trainer writes last) is readable.

    A run killed while saving leaves a checkpoint without it; such leftovers are removed so that
    neither the resume nor Trainer's save_total_limit rotation picks them up. Only in a work dir
    that is ours (check_work_dir): elsewhere a checkpoint-N without trainer_state.json may be
    someone's only copy of a model.
    """
    check_work_dir(work_dir)
    checkpoints = sorted(
        (p for p in Path(work_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for checkpoint in checkpoints:
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
        except (OSError, json.JSONDecodeError):
            logger.warning("removing incomplete checkpoint %s (interrupted while saving)", checkpoint)
            shutil.rmtree(checkpoint)
            continue
        return str(checkpoint)
    return None


def prepare_work_dir(work_dir: Path, run_fingerprint: str, owner: RunOwner | None = None) -> str | None:
    """Return the checkpoint to resume from, if the work dir holds one from this same run config.

    The work dir must be the owner's (claim_work_dir: new, empty or marked by run.json for the same
    kind of run and name), else ConfigError. Checkpoints left by a run with a different config are
    removed, so they can neither be resumed by mistake nor compete with this run's checkpoints in
    save_total_limit rotation.
    """
    work_dir = Path(work_dir)
    claim_work_dir(work_dir, owner)
    previous = _marker(work_dir)["fingerprint"]
    last = last_complete_checkpoint(work_dir)
    if last and previous == run_fingerprint:
        _drop_epoch_records_after(work_dir, int(Path(last).name.split("-")[-1]))
        return last
    if last:
        logger.warning("work dir %s holds checkpoints of another run config; starting fresh", work_dir)
    for stale in work_dir.glob("checkpoint-*"):
        shutil.rmtree(stale)
    shutil.rmtree(work_dir / BEST_MODEL_DIR, ignore_errors=True)
    # ... and the old run's logs, which would otherwise be published with the new member
    for old_log in [*work_dir.glob("train_log*.txt"), work_dir / LOG_HISTORY_FILE, work_dir / EPOCHS_FILE]:
        old_log.unlink(missing_ok=True)
    _write_marker(work_dir, run_fingerprint, owner)
    return None


def _drop_epoch_records_after(work_dir: Path, step: int) -> None:
    """Keep the epochs file's records up to the resumed checkpoint's step: an epoch logged after it (the run was
    killed between its evaluation and its checkpoint) is trained again, and logged again, by the resumed run."""
    records = read_epoch_records(work_dir)
    kept = [record for record in records if record.step <= step]
    if len(kept) < len(records):
        (Path(work_dir) / EPOCHS_FILE).write_text("".join(record.model_dump_json() + "\n" for record in kept))


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
