"""Trainer assembly: device/precision choice, TrainingArguments, callbacks, resume, best model."""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from pydantic import BaseModel
from transformers import Trainer, TrainerCallback, TrainingArguments

from lib.config import ConfigError, TrainingConfig
from lib.metrics import compute_metrics

logger = logging.getLogger(__name__)

BEST_MODEL_DIR = "best-model"
RUN_FILE = "run.json"


@dataclass(frozen=True)
class Runtime:
    device: str  # "cpu" or "cuda"
    fp16: bool
    bf16: bool

    @property
    def precision(self) -> str:
        return "fp16" if self.fp16 else "bf16" if self.bf16 else "fp32"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.float16 if self.fp16 else torch.bfloat16 if self.bf16 else None


def resolve_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """Pick the device and mixed precision; refuse combinations that would silently do nothing."""
    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise ConfigError("training.device=cuda but no CUDA device is visible; use --device auto or cpu")
    resolved = "cuda" if device == "cuda" or (device == "auto" and has_cuda) else "cpu"
    if precision == "auto":
        if resolved == "cpu":
            return Runtime("cpu", fp16=False, bf16=False)
        bf16 = torch.cuda.is_bf16_supported()
        return Runtime("cuda", fp16=not bf16, bf16=bf16)
    if precision == "fp16" and resolved == "cpu":
        # transformers 5 silently trains in fp32 when fp16=True on CPU (the notebook's setting).
        raise ConfigError("training.precision=fp16 needs a CUDA device; on CPU use bf16 or fp32 (or auto)")
    if precision == "bf16" and resolved == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("training.precision=bf16 is not supported by this GPU; use fp16 or auto")
    return Runtime(resolved, fp16=precision == "fp16", bf16=precision == "bf16")


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


class EpochLogCallback(TrainerCallback):
    """One line per epoch in train_log<name>.txt: epoch, batch size, train loss, validation metrics."""

    def __init__(self, path: Path, total_epochs: int):
        self.path = Path(path)
        self.total_epochs = total_epochs

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        with self.path.open("a") as log:
            log.write(f"# run started: {self.total_epochs} epochs, output {args.output_dir}\n")

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero:
            return
        train_losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
        parts = [
            f"epoch {round(state.epoch or 0)}/{self.total_epochs}",
            f"batch_size {args.per_device_train_batch_size}",
            f"step {state.global_step}",
        ]
        if train_losses:
            parts.append(f"train_loss {train_losses[-1]:.4f}")
        for key, value in sorted((metrics or {}).items()):
            if key.startswith("eval_") and isinstance(value, (int, float)) and "runtime" not in key and "per_second" not in key:
                parts.append(f"{key[5:]} {value:.4f}")
        with self.path.open("a") as log:
            log.write("  ".join(parts) + "\n")


class TrainOutcome(BaseModel):
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


def build_training_arguments(config: TrainingConfig, work_dir: Path, runtime: Runtime) -> TrainingArguments:
    metric = config.metric_for_best_model
    return TrainingArguments(
        output_dir=str(work_dir),
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model=metric,
        greater_is_better=metric != "loss",
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup_steps,
        fp16=runtime.fp16,
        bf16=runtime.bf16,
        use_cpu=runtime.device == "cpu",
        seed=config.seed,
        dataloader_num_workers=config.dataloader_num_workers,
        report_to="none",  # TensorBoard is added explicitly below, with its own log dir
        disable_tqdm=False,
    )


def _tensorboard_callback(work_dir: Path) -> TrainerCallback:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ConfigError(
            "training.tensorboard=true needs the tensorboard package: pip install -e '.[tensorboard]'"
        ) from error
    from transformers.integrations import TensorBoardCallback

    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(work_dir / "tensorboard")))


def last_complete_checkpoint(work_dir: Path) -> str | None:
    """Newest checkpoint-N whose trainer_state.json (which Trainer writes last) is readable.

    A run killed while saving leaves a checkpoint without it; such leftovers are removed so that
    neither the resume nor Trainer's save_total_limit rotation picks them up.
    """
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


def prepare_work_dir(work_dir: Path, run_fingerprint: str) -> str | None:
    """Return the checkpoint to resume from, if the work dir holds one from this same run config.

    Checkpoints left by a run with a different config are removed, so they can neither be resumed
    by mistake nor compete with this run's checkpoints in save_total_limit rotation.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    run_file = work_dir / RUN_FILE
    previous = json.loads(run_file.read_text()).get("fingerprint") if run_file.is_file() else None
    last = last_complete_checkpoint(work_dir)
    if last and previous == run_fingerprint:
        return last
    if last:
        logger.warning("work dir %s holds checkpoints of another run config; starting fresh", work_dir)
    for stale in work_dir.glob("checkpoint-*"):
        shutil.rmtree(stale)
    shutil.rmtree(work_dir / BEST_MODEL_DIR, ignore_errors=True)
    run_file.write_text(json.dumps({"fingerprint": run_fingerprint}))
    return None


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
) -> TrainOutcome:
    """Fine-tune with HF Trainer, keep the best epoch by the chosen metric, save it to work_dir/best-model."""
    work_dir = Path(work_dir)
    resume_from = prepare_work_dir(work_dir, run_fingerprint)
    if resume_from:
        logger.info("resuming from %s", resume_from)
    callbacks: list[TrainerCallback] = [EpochLogCallback(train_log, config.epochs)]
    if config.tensorboard:
        callbacks.append(_tensorboard_callback(work_dir))
    trainer = Trainer(
        model=model,
        args=build_training_arguments(config, work_dir, runtime),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processing_class,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume_from)

    best_dir = work_dir / BEST_MODEL_DIR
    trainer.save_model(str(best_dir))  # load_best_model_at_end put the best epoch's weights back
    state = trainer.state
    (work_dir / "log_history.json").write_text(json.dumps(state.log_history, indent=2))
    best_epoch = None
    if state.best_model_checkpoint:
        best_step = int(Path(state.best_model_checkpoint).name.split("-")[-1])
        best_epoch = next(
            (entry["epoch"] for entry in state.log_history if entry.get("step") == best_step and "eval_loss" in entry),
            None,
        )
    return TrainOutcome(
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
    )
