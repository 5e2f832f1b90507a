"""Fine-tuning recipe: one member from an SSL checkpoint, read top to bottom as transformers' run_audio_classification.

plan:     plan_run checks a FinetuneConfig before any work (plan_ensemble: each member of an ensemble)
train:    train_member builds the classifier from the stripped encoder, freezes per variant, and runs the
          shared Trainer loop (lib.train.engine) on the features or the frozen-trunk cache; in this process,
          or on N processes under torchrun (`python -m lib.recipes.finetune SPEC.json` on every rank)
publish:  lib.recipes.member_publish.publish_member puts the best model, its reports, manifest and model card
          under <output_dir>/best/<name>
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import torch
from pydantic import BaseModel
from transformers import ASTModel

from lib.config.data import DataConfig
from lib.config.runs import EnsembleConfig, FinetuneConfig
from lib.core.errors import ConfigError, ScanError
from lib.core.layout import (
    BEST_FOLDER,
    check_publish_destination,
    train_log_name,
)
from lib.core.runtime import apply_tf32, check_portable, resolve_runtime, seed_everything
from lib.data.features import FeatureCacheRef, FeatureParams, make_feature_extractor
from lib.data.layouts import default_fold
from lib.data.noise import background_noise, check_noise_folder, noise_folder
from lib.data.scan import check_distinct_splits, split_roots
from lib.model.checkpoint import EncoderRef
from lib.model.classifier import apply_freezing, build_classifier
from lib.model.trunk import TrainingInputs, TrunkCacheInfo, training_inputs
from lib.recipes.planning import (
    Plan,
    check_clip_fills_one_window,
    check_clip_fits,
    check_output_folders,
    check_ssl_checkpoint,
    check_work_dir_apart,
    checkpoint_encoder_config,
)
from lib.train.arguments import (
    SpeedSettings,
    attention_implementation,
    check_tensorboard_installed,
    log_speed_settings,
    speed_settings,
)
from lib.train.classifier import classifier_trainer_setup
from lib.train.engine import TrainerSetup, resume_key, run_trainer
from lib.train.epochs import EpochRecord
from lib.train.launch import launch_ranks
from lib.train.schedule import check_schedule_supported, epoch_batch_sizes
from lib.train.workdir import RunKind, RunOwner, claim_work_dir, prepare_work_dir

logger = logging.getLogger(__name__)

EpochHook = Callable[[EpochRecord], None]


# --- plan ------------------------------------------------------------------------------------------------------

DATA_FOLDERS = ("train_dir", "validation_dir", "test_dir")  # layout folders; test_dir is optional (None)


def data_folders(data: DataConfig) -> dict[str, Path | None]:
    """Parameter (as errors name it) -> each folder the scan reads: the split folders, or a dataset's root (a csv
    manifest's clips are read by path, never listed, so its folder is not one)."""
    if data.layout == "folders":
        return {f"data.{field} (--{field.replace('_', '-')})": getattr(data, field) for field in DATA_FOLDERS}
    return {"data.root (--root)": data.root if data.layout != "csv" else None}


class FinetunePlan(Plan):
    """A checked FinetuneConfig: the feature parameters fitted to the encoder, the runtime, the fingerprint."""

    kind: ClassVar[RunKind] = "finetune"
    published_folder: ClassVar[str] = BEST_FOLDER

    config: FinetuneConfig


def check_work_dir_location(config: FinetuneConfig) -> None:
    """The work dir must neither hold, nor be, nor lie inside the SSL checkpoint or the data, and be ours.

    A run deletes checkpoint-* folders in its work dir (another config's, or ones interrupted while
    saving), and the SSL checkpoint is typically such a folder of the SSL run.
    """
    protected = {
        "model.ssl_checkpoint (--ssl-checkpoint)": config.model.ssl_checkpoint,
        **data_folders(config.data),
        # published members: a link there could pass for an incomplete checkpoint-N and be removed
        "the published members, output_dir/best": config.output_dir / BEST_FOLDER,
    }
    check_work_dir_apart(
        config.run_work_dir, config.work_dir is not None, protected, "<output_dir>/runs/<name>",
        RunOwner(kind=FinetunePlan.kind, name=config.name),
    )


def plan_run(config: FinetuneConfig, trains_here: bool = True) -> FinetunePlan:
    """Fail fast on anything checkable without touching audio or weights; errors name the parameter.

    trains_here=False plans a run that another machine trains (a scale-out member): only what holds
    everywhere is checked, and the plan has no Runtime.
    """
    config = config.resolved()
    check_ssl_checkpoint(config.model.ssl_checkpoint)
    if config.data.layout != "folders" or config.data.folds:
        # the fold validated on, named in run_config.json and the card; a dataset's own files give its default
        try:
            config.data.fold = default_fold(config.data, config.model.multi_label)
        except ScanError as error:
            raise ConfigError(str(error)) from error
    for label, folder in data_folders(config.data).items():
        if folder is not None and not folder.is_dir():
            raise ConfigError(f"{label} {folder}: no such folder")
    if config.data.layout == "csv" and not config.data.root.exists():
        raise ConfigError(f"data.root (--root) {config.data.root}: no such CSV file or folder")
    if config.data.layout == "folders":
        try:  # CLI, UI and deployment runs alike: a split that is another split measures nothing
            check_distinct_splits(split_roots(config.data.train_dir, config.data.validation_dir, config.data.test_dir))
        except ScanError as error:
            raise ConfigError(str(error)) from error
    check_output_folders(
        {"output_dir (--output-dir)": config.output_dir, "data.cache_dir (--cache-dir)": config.data.cache_dir},
        data_folders(config.data),
    )
    check_publish_destination(config.output_dir / BEST_FOLDER / config.name)
    check_work_dir_location(config)
    check_clip_fills_one_window(config.features)
    encoder_config, source = checkpoint_encoder_config(config.model, config.features.max_frames)
    check_clip_fits(config.features, encoder_config.max_length)
    layers = encoder_config.num_hidden_layers
    if config.model.train_last_n_layers > layers:
        raise ConfigError(
            f"model.train_last_n_layers (--train-last-n-layers) is {config.model.train_last_n_layers} "
            f"but the encoder ({source}) has {layers} layers; use 1..{layers}, or 0 for full fine-tuning"
        )
    masks = config.training.augmentation
    check_noise_folder(config.data, masks.background_noise_probability)
    mel_bins, frames = encoder_config.num_mel_bins, encoder_config.max_length
    if masks.freq_mask_bins > mel_bins or masks.time_mask_frames > frames:
        raise ConfigError(
            f"training.augmentation: freq_mask_bins={masks.freq_mask_bins} and time_mask_frames="
            f"{masks.time_mask_frames} must not exceed the features' {mel_bins} mel bins and {frames} frames "
            "(features.max_frames); narrow the masks"
        )
    # Device and precision are facts of the machine that trains: resolved here only if that is this one.
    if trains_here:
        runtime = resolve_runtime(config.training.device, config.training.precision, config.training.tf32)
    else:
        check_portable(config.training.device, config.training.precision)
        runtime = None
    processes = config.training.num_processes
    if processes > 1 and config.training.batch_sizes:
        raise ConfigError(
            "training.batch_sizes (a per-epoch schedule) works with one training process only; "
            "drop it or set training.num_processes (--num-processes) to 1"
        )
    if config.training.batch_sizes:
        check_schedule_supported()
    if config.training.tensorboard:
        check_tensorboard_installed()
    if runtime is not None and runtime.device == "cuda" and processes > torch.cuda.device_count():
        raise ConfigError(
            f"training.num_processes is {processes} but only {torch.cuda.device_count()} CUDA devices are "
            "visible; lower it (one process per GPU) or check CUDA_VISIBLE_DEVICES"
        )
    # Features are exactly as long as the (fitted) positional embeddings expect.
    fitted = {"max_frames": encoder_config.max_length, "num_mel_bins": encoder_config.num_mel_bins}
    plan = FinetunePlan(
        config=config,
        feature_params=FeatureParams(**config.features.model_dump() | fitted),
        runtime=runtime,
        fingerprint=config.fingerprint(),
    )
    plan.check_unlocked()  # last: no other run is using its work dir or publishing to its name now
    return plan


def plan_ensemble(config: EnsembleConfig, trains_here: bool = True) -> dict[str, FinetunePlan]:
    """Every member's plan, the sweep expanded against the encoder's layer count; before any work.

    trains_here=False: the members train elsewhere (scale-out), see plan_run."""
    num_layers = None
    if config.sweep_last_n:
        encoder_config, source = checkpoint_encoder_config(config.model.resolved(), config.features.max_frames)
        num_layers = encoder_config.num_hidden_layers
        too_deep = sorted({n for n in config.sweep_last_n if n > num_layers})
        if too_deep:
            raise ConfigError(
                f"sweep_last_n (--sweep-last-n) has {too_deep} but the encoder ({source}) has {num_layers} layers; "
                f"use 0 (head only) to {num_layers} (full fine-tuning)"
            )
    return {
        variant.name: plan_run(config.member_config(variant), trains_here) for variant in config.variants(num_layers)
    }


# --- train -----------------------------------------------------------------------------------------------------

class TrainOutcome(BaseModel):
    """A member's training: where its best model is, how it was chosen, how the run went, what trained."""

    work_dir: str
    best_model_dir: str
    best_checkpoint: str | None
    metric: str
    best_metric: float | None
    best_epoch: int | None
    epochs_run: float
    resumed_from: str | None
    train_log: str
    precision: str
    device: str
    batch_sizes: list[int]  # train batch size of each epoch
    optimizer_steps: int
    speed: SpeedSettings
    parameters: dict[str, int]  # trainable, total, frozen
    trunk_cache: TrunkCacheInfo
    phases: dict[str, float] = {}  # the Trainer run's, in seconds (TrainerRun.phases): member.json's "phases"


class MemberSpec(BaseModel):
    """What each torchrun rank needs to train a member (written to a file by the launching process)."""

    plan: FinetunePlan
    features: FeatureCacheRef
    encoder: EncoderRef
    outcome_file: str


def member_resume_key(plan: FinetunePlan, features: FeatureCacheRef, encoder: EncoderRef) -> str:
    """The resume key of a member: its config, its features and the stripped encoder's cache key."""
    return resume_key(plan.fingerprint, features.key, Path(encoder.path).name)


def earlier_member_resume_keys(plan: FinetunePlan, features: FeatureCacheRef, encoder: EncoderRef) -> tuple[str, ...]:
    """The resume key astft 0.1.0 recorded for this member (its encoder keyed by path and mtime)."""
    return (resume_key(plan.fingerprint, features.key, encoder.legacy_key),) if encoder.legacy_key else ()


def train_member(
    plan: FinetunePlan, features: FeatureCacheRef, encoder: EncoderRef, on_epoch: EpochHook | None = None
) -> TrainOutcome:
    """Train one member on training.num_processes processes (torchrun), or in this one; log how it went.

    on_epoch(record) is called in this process after each epoch's validation, either way.
    """
    config = plan.config
    processes = config.training.num_processes
    if processes > 1:
        logger.info("training member %s on %d processes with torchrun", config.name, processes)
        outcome = train_member_distributed(plan, features, encoder, processes, on_epoch)
    else:
        outcome = train_member_in_process(plan, features, encoder, on_epoch)
    counts, trunk = outcome.parameters, outcome.trunk_cache
    logger.info(
        "variant %s: %d of %d parameters trained (%.1f%%), %s on %s; best %s=%s at epoch %s",
        config.model.freezing, counts["trainable"], counts["total"], 100 * counts["trainable"] / counts["total"],
        outcome.precision, outcome.device, outcome.metric,
        "n/a" if outcome.best_metric is None else f"{outcome.best_metric:.4f}", outcome.best_epoch,
    )
    logger.info("trunk cache %s: %s", f"used (K={trunk.layers}, {trunk.dtype}, {trunk.path})" if trunk.used
                else "not used", trunk.reason)
    log_speed_settings(outcome.speed)
    return outcome


def train_member_distributed(
    plan: FinetunePlan, features: FeatureCacheRef, encoder: EncoderRef, num_processes: int,
    on_epoch: EpochHook | None = None,
) -> TrainOutcome:
    """train_member_in_process on num_processes torchrun ranks (this module's main); rank 0's outcome."""
    # resume-or-fresh decided once, before the ranks start, so they never race on the work dir
    prepare_work_dir(
        plan.work_dir, member_resume_key(plan, features, encoder), plan.owner,
        earlier_member_resume_keys(plan, features, encoder),
    )
    spec = MemberSpec(plan=plan, features=features, encoder=encoder, outcome_file="")
    outcome = launch_ranks(__name__, spec, num_processes, plan.work_dir, f"member {plan.config.name}", on_epoch)
    return TrainOutcome.model_validate_json(outcome)


def train_member_in_process(
    plan: FinetunePlan, features: FeatureCacheRef, encoder: EncoderRef, on_epoch: EpochHook | None = None
) -> TrainOutcome:
    """seed -> model (classifier from the stripped encoder, frozen per variant) -> data -> Trainer."""
    config, training = plan.config, plan.config.training
    # seed -> model
    seed_everything(training.seed, training.deterministic)
    model = build_classifier(
        ASTModel.from_pretrained(encoder.path),
        features.label_names,
        pooling=config.model.pooling,
        classifier_dropout=config.model.classifier_dropout,
        attention=training.attention,
        multi_label=config.model.multi_label,
    )
    counts = apply_freezing(model, config.model.head_only, config.model.train_last_n_layers)
    # before the trunk cache is built: a work dir we did not make is refused first
    claim_work_dir(plan.work_dir, plan.owner)
    apply_tf32(plan.runtime)  # the trunk cache is computed before Trainer would set it
    # data: the features, or (frozen, deterministic leading layers) their cached outputs with only the tail training
    inputs = training_inputs(model, config, features, plan.runtime)
    # train
    run = run_trainer(member_trainer_setup(plan, features, encoder, inputs, on_epoch))
    return TrainOutcome(
        work_dir=run.work_dir,
        best_model_dir=run.model_dir,
        best_checkpoint=run.best_checkpoint,
        metric=training.metric_for_best_model,
        best_metric=run.best_metric,
        best_epoch=run.best_epoch,
        epochs_run=run.epochs_run,
        resumed_from=run.resumed_from,
        train_log=str(member_train_log(plan)),
        precision=plan.runtime.precision,
        device=plan.runtime.device,
        batch_sizes=epoch_batch_sizes(training),
        optimizer_steps=run.optimizer_steps,
        speed=speed_settings(training, plan.runtime, attention_implementation(inputs.model), training.num_processes),
        parameters=counts,
        trunk_cache=inputs.trunk,
        phases=run.phases,
    )


def member_train_log(plan: FinetunePlan) -> Path:
    return plan.work_dir / train_log_name(plan.config.name)


def member_trainer_setup(
    plan: FinetunePlan, features: FeatureCacheRef, encoder: EncoderRef, inputs: TrainingInputs,
    on_epoch: EpochHook | None = None,
) -> TrainerSetup:
    """A member's Trainer: the classifier (or its tail on the trunk cache) on this plan's work dir and features."""
    config, training = plan.config, plan.config.training
    return classifier_trainer_setup(
        inputs.model, inputs.train, inputs.validation, training, plan.work_dir, plan.runtime,
        # tail checkpoints hold the tail's state dict: never resumed as the classifier's, or back
        member_resume_key(plan, features, encoder) + inputs.fingerprint_suffix,
        owner=plan.owner,
        train_log=member_train_log(plan),
        describe=(
            f"member {config.name} (per-device batch size {training.batch_sizes or training.batch_size}, "
            f"{features.params.max_frames} frames, variant {config.model.freezing}, {plan.runtime.precision})"
        ),
        processing_class=make_feature_extractor(features.params),
        data_collator=inputs.data_collator,  # the trunk cache's; else Trainer's default
        after_save=inputs.save_best,  # a trunk tail also saves its full classifier
        on_epoch=on_epoch,
        background_noise=background_noise(noise_folder(config.data), features.params)
        if training.augmentation.background_noise_probability else None,
        earlier_resume_keys=tuple(
            key + inputs.fingerprint_suffix for key in earlier_member_resume_keys(plan, features, encoder)
        ),
    )


def main(argv: list[str] | None = None) -> int:
    """One torchrun rank: train the member of the spec file; rank 0 writes the outcome."""
    argv = sys.argv[1:] if argv is None else argv
    spec = MemberSpec.model_validate_json(Path(argv[0]).read_text())
    outcome = train_member_in_process(spec.plan, spec.features, spec.encoder)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(spec.outcome_file).write_text(outcome.model_dump_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
