"""TrainingArguments for each kind of run, the speed settings resolved per device, and the callbacks every run has."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from pydantic import BaseModel
from transformers import PretrainedConfig, TrainerCallback

from lib.config import PretrainTrainingConfig, TrainingConfig, TrainingSettings
from lib.core.errors import ConfigError
from lib.core.guards import NonFiniteLossCallback
from lib.core.layout import EPOCHS_FILE
from lib.core.runtime import Runtime, usable_cores
from lib.train.epochs import EpochLogCallback, EpochRecord, WarmupClock
from lib.train.schedule import epoch_batch_sizes

logger = logging.getLogger(__name__)


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


def speed_settings(
    settings: TrainingSettings, runtime: Runtime, attention: str | None = None, num_processes: int = 1
) -> SpeedSettings:
    """The speed settings of a training section on this runtime: the GPU-only ones are off on CPU."""
    return SpeedSettings(
        attention=attention,
        tf32=runtime.tf32,
        # transformers' own default since torch 2.8, on CPU too; named here so it never depends on its version
        optimizer="adamw_torch_fused" if settings.optimizer == "auto" else settings.optimizer,
        compile=settings.compile,
        pin_memory=settings.pin_memory and runtime.device == "cuda",
        dataloader_num_workers=dataloader_workers(settings.dataloader_num_workers, runtime, num_processes),
    )


def finetune_arguments(config: TrainingConfig, work_dir: Path, runtime: Runtime) -> dict:
    """TrainingArguments' keyword arguments for fine-tuning: a checkpoint per epoch, the best epoch by the chosen
    metric loaded back at the end, the first epoch's batch size (EpochBatchSizeTrainer sets the later ones)."""
    metric = config.metric_for_best_model
    arguments = shared_arguments(config, work_dir, runtime, config.num_processes)
    return arguments | {
        "save_strategy": "epoch",
        "load_best_model_at_end": True,
        "metric_for_best_model": metric,
        "greater_is_better": metric != "loss",
        "per_device_train_batch_size": epoch_batch_sizes(config)[0],
        # the schedule builds a new train loader every epoch, whose workers would otherwise linger
        "dataloader_persistent_workers": arguments["dataloader_persistent_workers"] and not config.batch_sizes,
    }


def pretrain_arguments(config: PretrainTrainingConfig, work_dir: Path, runtime: Runtime) -> dict:
    """TrainingArguments' keyword arguments for pretraining: checkpoints per epoch or every N steps, the last
    epoch kept (SSAST's choice: masked-patch scores choose no epoch)."""
    every = config.checkpoint_every_steps
    return shared_arguments(config, work_dir, runtime) | {
        **({"save_strategy": "steps", "save_steps": every} if every else {"save_strategy": "epoch"}),
        "label_names": ["labels"],  # the pseudo-class: present so that evaluation calls compute_metrics
    }


def shared_arguments(settings: TrainingSettings, work_dir: Path, runtime: Runtime, num_processes: int = 1) -> dict:
    """What every run shares: per-epoch evaluation and logging, cosine LR with warmup, the runtime's device and
    precision, the speed settings, no NaN filtering.

    A plain dict: what a CUDA runtime gets can be checked on a CPU, where TrainingArguments itself refuses tf32
    (it probes the GPU).
    """
    speed = speed_settings(settings, runtime, num_processes=num_processes)
    return {
        "output_dir": str(work_dir),
        "eval_strategy": "epoch",
        "logging_strategy": "epoch",
        "save_total_limit": settings.save_total_limit,
        "num_train_epochs": settings.epochs,
        "per_device_train_batch_size": settings.batch_size,
        "per_device_eval_batch_size": settings.batch_size,
        "gradient_accumulation_steps": settings.gradient_accumulation_steps,
        "learning_rate": settings.learning_rate,
        "weight_decay": settings.weight_decay,
        "lr_scheduler_type": "cosine",
        "warmup_steps": settings.warmup_steps,
        "fp16": runtime.fp16,
        "bf16": runtime.bf16,
        "use_cpu": runtime.device == "cpu",
        # None leaves the float32 matmul mode alone: TrainingArguments refuses tf32 where no GPU has it
        "tf32": runtime.tf32 if runtime.device == "cuda" else None,
        "optim": speed.optimizer,
        "torch_compile": speed.compile,
        "seed": settings.seed,
        "dataloader_num_workers": speed.dataloader_num_workers,
        "dataloader_pin_memory": speed.pin_memory,
        "dataloader_persistent_workers": speed.dataloader_num_workers > 0,  # kept between epochs and evaluations
        "report_to": "none",  # TensorBoard is added explicitly (run_callbacks), with its own log dir
        "logging_nan_inf_filter": False,  # a NaN loss must reach NonFiniteLossCallback, not be averaged away
        # the Trainer's one bar over the training steps: only with --progress (the CLI sets ASTFT_PROGRESS_BARS=1)
        "disable_tqdm": os.environ.get("ASTFT_PROGRESS_BARS") != "1",
    }


def run_callbacks(
    settings: TrainingSettings,
    work_dir: Path,
    train_log: Path,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    extra_callbacks: Sequence[TrainerCallback] = (),
    train_keys: Sequence[str] = (),
) -> list[TrainerCallback]:
    """The callbacks of every run: the warm-up clock, the NaN guard, the per-epoch log (train log, epochs file,
    on_epoch), extra_callbacks, and TensorBoard when asked for."""
    clock = WarmupClock()  # first: the epoch log reads the evaluation it has just timed
    callbacks: list[TrainerCallback] = [
        clock,
        NonFiniteLossCallback(),  # before the log: a NaN epoch stops before it is logged, evaluated or saved
        EpochLogCallback(train_log, settings.epochs, Path(work_dir) / EPOCHS_FILE, on_epoch, train_keys, clock),
        *extra_callbacks,
    ]
    if settings.tensorboard:
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


def log_speed_settings(speed: SpeedSettings) -> None:
    """One log line: what a run's speed settings resolved to on its device."""
    logger.info(
        "speed settings: attention %s, tf32 %s, %s, compile %s, pin_memory %s, %d DataLoader workers",
        speed.attention, "on" if speed.tf32 else "off", speed.optimizer, "on" if speed.compile else "off",
        "on" if speed.pin_memory else "off", speed.dataloader_num_workers,
    )
