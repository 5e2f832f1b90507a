"""Pretrain an AST encoder on unlabeled clips (SSAST masked patches) and publish it where fine-tuning loads it.

plan_pretrain checks a PretrainConfig before any work; pretrain_encoder trains a MaskedPatchModel
(lib.model.masked_patches) with HF Trainer on the same Arrow feature cache fine-tuning uses, resuming a
killed run from its last checkpoint; publish_encoder puts the final weights under
<output_dir>/ssl/<name>/ with one rename (lib.publish.folder), in the SSL checkpoint layout that
``--ssl-checkpoint`` takes unchanged: ``encoder.*`` (an ASTModel) beside ``projector.*``,
``decoder.*`` and ``mask_embedding``, plus ``config.json`` and ``pretrain.json``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import torch
from datasets import Dataset
from pydantic import BaseModel
from transformers import (
    ASTConfig,
    TrainerCallback,
    default_data_collator,
)

from lib.config.pretraining import PretrainModelConfig
from lib.config.runs import PretrainConfig
from lib.core.errors import CheckpointError, ConfigError, ScanError
from lib.core.hashing import digest
from lib.core.layout import (
    BEST_FOLDER,
    FINAL_MODEL_DIR,
    LOG_HISTORY_FILE,
    PRETRAIN_CURVES_FILE,
    PRETRAIN_FILE,
    SSL_FOLDER,
    check_publish_destination,
    train_log_name,
)
from lib.core.runtime import Runtime, resolve_runtime, seed_everything
from lib.data.audio import source_frames
from lib.data.features import (
    FRAME_SHIFT_MS,
    FeatureCacheRef,
    FeatureParams,
    fbank_frames,
    load_split,
    make_feature_extractor,
)
from lib.data.scan import SPLITS, Clip, Manifest
from lib.data.unlabeled import check_unlabeled_roots, unlabeled_roots
from lib.evaluate.plots import training_curves
from lib.model.checkpoint import (
    BUNDLED_CONFIG,
    architecture_dict,
    patch_grid,
    read_ast_config,
)
from lib.model.masked_patches import (
    MaskedPatchModel,
    maskable_patches,
    masked_counts,
)
from lib.publish.folder import PublishSpec, publish_folder, trained_by
from lib.recipes.planning import (
    Plan,
    check_clip_fits,
    check_output_folders,
    check_work_dir_apart,
)
from lib.train.arguments import (
    SpeedSettings,
    attention_implementation,
    check_tensorboard_installed,
    log_speed_settings,
    pretrain_arguments,
    run_callbacks,
    speed_settings,
)
from lib.train.engine import TrainerSetup, resume_key, run_trainer
from lib.train.epochs import EpochRecord, read_epoch_records
from lib.train.masked import MaskedPatchTrainer, masked_patch_metrics
from lib.train.workdir import RunKind, RunOwner

logger = logging.getLogger(__name__)

METRICS = ("nce", "mse", "total", "accuracy")  # what lib.model.masked_patches.summarise reports, per epoch


class PretrainPlan(Plan):
    """A checked PretrainConfig: the encoder's architecture (strides = patch size, max_length = frames) and the
    feature parameters fitted to it, the runtime, the fingerprint."""

    kind: ClassVar[RunKind] = "pretrain"
    published_folder: ClassVar[str] = SSL_FOLDER

    config: PretrainConfig
    runtime: Runtime
    encoder: dict  # architecture_dict of the encoder's ASTConfig
    encoder_source: str

    @property
    def encoder_config(self) -> ASTConfig:
        # the attention kernel is a training choice (training.attention), not part of the saved architecture
        return ASTConfig(**self.encoder, attn_implementation=self.config.training.attention)

    @property
    def grid(self) -> tuple[int, int]:
        return patch_grid(self.encoder_config)

    @property
    def masked_per_clip(self) -> int:
        """Patches masked in a clip that fills all max_frames (shorter clips: fewer)."""
        frequency, time = self.grid
        return max(1, round(self.config.objective.mask_ratio * frequency * time))


def encoder_config(model: PretrainModelConfig, max_frames: int | None) -> tuple[ASTConfig, str]:
    """The architecture to pretrain: base config, overridden fields, strides = patch size, max_length = max_frames."""
    source = model.base_config or BUNDLED_CONFIG
    try:
        base = read_ast_config(source, "pass --base-config (model.base_config) an AST config.json, or leave it unset")
    except CheckpointError as error:
        raise ConfigError(str(error)) from error
    overrides = {
        name: getattr(model, name)
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "num_mel_bins")
        if getattr(model, name) is not None
    }
    patch = base.patch_size
    values = architecture_dict(base) | overrides | {
        "frequency_stride": patch, "time_stride": patch, "max_length": max_frames or base.max_length,
    }
    return ASTConfig(**values), str(source) + (f" with {overrides}" if overrides else "")


def plan_pretrain(config: PretrainConfig) -> PretrainPlan:
    """Fail fast on anything checkable without touching audio or weights; errors name the parameter."""
    config = config.resolved()
    folders = unlabeled_roots(config.data.data_dirs, config.data.validation_dir)
    try:  # missing, a file, twice or one inside another: the scan would refuse them after the server started
        check_unlabeled_roots(folders)
    except ScanError as error:
        raise ConfigError(str(error)) from error
    check_output_folders(
        {"output_dir (--output-dir)": config.output_dir, "data.cache_dir (--cache-dir)": config.data.cache_dir},
        folders,
        written="ssl/, ssl-runs/, features/",
    )
    check_publish_destination(config.output_dir / SSL_FOLDER / config.name, "encoder")
    check_work_dir_apart(
        config.run_work_dir,
        config.work_dir is not None,
        {**folders, "the published encoders, output_dir/ssl": config.output_dir / SSL_FOLDER,
         "the published members, output_dir/best": config.output_dir / BEST_FOLDER},
        "<output_dir>/ssl-runs/<name>",
        RunOwner(kind=PretrainPlan.kind, name=config.name),
    )
    encoder, source = encoder_config(config.model, config.features.max_frames)
    check_clip_fits(config.features, encoder.max_length)
    if encoder.hidden_size % encoder.num_attention_heads:
        raise ConfigError(
            f"model.num_attention_heads={encoder.num_attention_heads} does not divide model.hidden_size="
            f"{encoder.hidden_size} ({source}); pick heads that divide it (e.g. {math.gcd(encoder.hidden_size, 12)})"
        )
    for field, size in (("model.num_mel_bins", encoder.num_mel_bins), ("features.max_frames", encoder.max_length)):
        if size < encoder.patch_size:
            raise ConfigError(
                f"{field} is {size}, less than one {encoder.patch_size}x{encoder.patch_size} patch; use at least "
                f"{encoder.patch_size} (128 suits 1 s clips)"
            )
    fitted = {"max_frames": encoder.max_length, "num_mel_bins": encoder.num_mel_bins}
    feature_params = FeatureParams(**config.features.model_dump() | fitted)
    check_masking(config.objective.mask_ratio, encoder, feature_params)
    runtime = resolve_runtime(config.training.device, config.training.precision, config.training.tf32)
    if config.training.tensorboard:
        check_tensorboard_installed()
    plan = PretrainPlan(
        config=config,
        encoder=architecture_dict(encoder),
        encoder_source=source,
        feature_params=feature_params,
        runtime=runtime,
        fingerprint=config.fingerprint(),
    )
    plan.check_unlocked()  # last: no other run is using its work dir or publishing to its name now
    return plan


def longest_clip_masking(mask_ratio: float, encoder: ASTConfig, params: FeatureParams) -> tuple[int, int]:
    """(patches holding audio, patches masked) in the longest clip there is: features.clip_seconds of audio at
    the feature rate (a longer clip is trimmed to it), counted as MaskedPatchModel.sample_masks counts them."""
    rate = params.sample_rate_hz
    clip = Clip(path="", label=0, sample_rate_hz=rate, num_samples=int(round(rate * params.clip_seconds)), channels=1)
    maskable = maskable_patches(torch.tensor([content_frames(clip, params)]), patch_grid(encoder), encoder.time_stride)
    return int(maskable.sum()), int(masked_counts(maskable, mask_ratio)[0])


def check_masking(mask_ratio: float, encoder: ASTConfig, params: FeatureParams) -> None:
    """Even the longest clip must have at least 2 masked patches (InfoNCE picks each among the others) and at
    least 1 visible (the encoder predicts the masked ones from it)."""
    available, masked = longest_clip_masking(mask_ratio, encoder, params)
    frequency, time = patch_grid(encoder)
    size = encoder.patch_size
    clip = (
        f"a {params.clip_seconds:g} s clip (features.clip_seconds), which fills {available} of the patch grid's "
        f"{frequency} x {time} patches of {size}x{size} (model.num_mel_bins={encoder.num_mel_bins} mel bins x "
        f"features.max_frames={encoder.max_length} frames)"
    )
    if available < 3:
        raise ConfigError(
            f"the patch grid is too small for masked patch modelling: {clip}; at least 3 patches must hold audio (2 "
            "masked, InfoNCE picks each among the others, and 1 left visible). Raise features.clip_seconds and "
            "features.max_frames (--max-frames), or model.num_mel_bins"
        )
    if masked < 2:
        lowest = math.ceil(2 / available * 10**4) / 10**4
        raise ConfigError(
            f"objective.mask_ratio (--mask-ratio) {mask_ratio:g} masks {masked} patch of {clip}; InfoNCE picks each "
            "masked patch out among the clip's other masked patches, so with fewer than 2 no clip is scored and the "
            f"discriminative head never trains. Raise --mask-ratio to at least {lowest:g}"
        )
    if masked >= available:
        highest = math.floor((available - 1) / available * 10**4) / 10**4
        raise ConfigError(
            f"objective.mask_ratio (--mask-ratio) {mask_ratio:g} masks all {available} patches of {clip}, leaving "
            f"none visible to predict them from; lower --mask-ratio to at most {highest:g}"
        )


# --- data: the feature cache, with how many frames of each clip hold audio -----------------------------------

def content_frames(clip: Clip, params: FeatureParams) -> int:
    """Frames of the clip's features that hold audio; the rest is the zero-padding of a short clip.

    Follows the clip through lib.data.audio.load_clip (the frames read, resampled length as torchaudio
    makes it, trimmed to clip_seconds) and the fbank (a frame every FRAME_SHIFT_MS; frame i holds
    audio when it starts before the audio ends), then the padding or cut to max_frames.
    """
    rate = params.sample_rate_hz
    read = min(clip.num_samples, source_frames(clip.sample_rate_hz, rate, params.clip_seconds))
    resampled = -(-read * rate // clip.sample_rate_hz)  # torchaudio.functional.resample: ceil(n * new / old)
    samples = min(resampled, int(round(rate * params.clip_seconds)))
    shift = int(rate * FRAME_SHIFT_MS * 0.001)
    return min(-(-samples // shift), fbank_frames(rate, params.clip_seconds), params.max_frames)


def pretraining_split(features: FeatureCacheRef, manifest: Manifest, split: str) -> Dataset:
    """One split of the feature cache with a content_frames column (from the scan's headers), as the model takes it."""
    frames = {clip.path: content_frames(clip, features.params) for clip in manifest.split(split)}
    dataset = load_split(features, split)
    column = [frames[path] for path in dataset.data.column("path").to_pylist()]
    # a fingerprint given: datasets would otherwise hash the whole column to make one
    dataset = dataset.add_column("content_frames", column, new_fingerprint=f"{features.key}-{split}-content-frames")
    return dataset.with_format("torch", columns=["input_values", "content_frames", "label"])


# --- training --------------------------------------------------------------------------------------------------


class PretrainOutcome(BaseModel):
    """What a pretraining run left: the final model, its epochs, how the run went."""

    work_dir: str
    model_dir: str
    train_log: str
    resumed_from: str | None
    epochs: list[EpochRecord]
    optimizer_steps: int
    precision: str
    device: str
    speed: SpeedSettings
    parameters: dict[str, int]


def encoder_resume_key(plan: PretrainPlan, features: FeatureCacheRef) -> str:
    """The resume key of a pretraining run: its config, its features and the encoder's architecture."""
    return resume_key(plan.fingerprint, features.key, digest(plan.encoder, 12))


def pretrain_encoder(
    plan: PretrainPlan,
    manifest: Manifest,
    features: FeatureCacheRef,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    extra_callbacks: Sequence[TrainerCallback] = (),
) -> PretrainOutcome:
    """Train a fresh encoder and SSAST's heads on the features' train split, scored on validation each epoch.

    on_epoch(record) runs after each epoch's validation (e.g. to report progress); extra_callbacks observe the run."""
    config, training = plan.config, plan.config.training
    # seed -> model
    seed_everything(training.seed, training.deterministic)
    objective = config.objective
    model = MaskedPatchModel(
        plan.encoder_config,
        objective.mask_ratio,
        objective.masking,
        objective.generative_weight,
        eval_seed=training.seed,
    )
    # data
    train, validation = (pretraining_split(features, manifest, split) for split in SPLITS)
    frequency, time = plan.grid
    logger.info(
        "pretraining %s (%s): %d train / %d validation clips, %d x %d patches of %dx%d, %s masking of %.4g "
        "(%d patches of a full clip), loss = InfoNCE + %g x MSE",
        config.name, plan.encoder_source, len(train), len(validation), frequency, time, plan.encoder["patch_size"],
        plan.encoder["patch_size"], objective.masking, objective.mask_ratio, plan.masked_per_clip,
        objective.generative_weight,
    )
    # train (resuming the work dir's last checkpoint of this same run); SSAST keeps the last epoch
    train_log = plan.work_dir / train_log_name(config.name)
    run = run_trainer(TrainerSetup(
        trainer_class=MaskedPatchTrainer,
        trainer_options={"generative_weight": objective.generative_weight},
        model=model,
        arguments=pretrain_arguments(training, plan.work_dir, plan.runtime),
        train_dataset=train,
        eval_dataset=validation,
        work_dir=plan.work_dir,
        resume_key=encoder_resume_key(plan, features),
        owner=plan.owner,
        model_dir=plan.work_dir / FINAL_MODEL_DIR,
        describe=(
            f"encoder {config.name} (per-device batch size {training.batch_size}, "
            f"{plan.feature_params.max_frames} frames, {plan.runtime.precision})"
        ),
        processing_class=make_feature_extractor(features.params),  # saved beside each checkpoint
        data_collator=default_data_collator,
        compute_metrics=masked_patch_metrics(objective.generative_weight),
        callbacks=run_callbacks(training, plan.work_dir, train_log, on_epoch, extra_callbacks, train_keys=METRICS),
    ))
    speed = speed_settings(training, plan.runtime, attention_implementation(model))
    log_speed_settings(speed)
    return PretrainOutcome(
        work_dir=run.work_dir,
        model_dir=run.model_dir,
        train_log=str(train_log),
        resumed_from=run.resumed_from,
        epochs=read_epoch_records(plan.work_dir),
        optimizer_steps=run.optimizer_steps,
        precision=plan.runtime.precision,
        device=plan.runtime.device,
        speed=speed,
        parameters={
            "encoder": sum(p.numel() for p in model.encoder.parameters()),
            "heads": sum(p.numel() for name, p in model.named_parameters() if not name.startswith("encoder.")),
        },
    )


# --- publish ---------------------------------------------------------------------------------------------------

def epoch_table(records: list[EpochRecord]) -> list[dict]:
    """pretrain.json's epochs: train and validation nce, mse, total, accuracy (and Trainer's mean batch loss; None:
    not measured), and the optimizer steps the train figures cover: all of the epoch's, or after a mid-epoch
    resume (resumed_mid_epoch) only those after the checkpoint it resumed from."""
    table, previous = [], 0
    for record in records:
        first = previous + 1 if record.resumed_at_step is None else record.resumed_at_step + 1
        table.append({
            "epoch": record.epoch,
            "step": record.step,
            "train": {"loss": record.train_loss, **record.train_metrics},
            "train_steps": [first, record.step],
            "resumed_mid_epoch": record.resumed_at_step is not None,
            "validation": record.metrics,
            "seconds": round(record.seconds, 2),
        })
        previous = record.step
    return table


def pretrain_record(
    plan: PretrainPlan, features: FeatureCacheRef, outcome: PretrainOutcome, flow_run_id: str | None = None
) -> dict:
    """pretrain.json: the objective, per-epoch losses and masked-patch accuracy, data, config and runtime."""
    config, objective = plan.config, plan.config.objective
    epochs = epoch_table(outcome.epochs)
    frequency, time = plan.grid
    return {
        "name": config.name,
        "objective": {
            "method": "SSAST joint discriminative and generative masked patch modelling (Gong et al., AAAI 2022)",
            "loss": f"InfoNCE + {objective.generative_weight:g} x MSE",
            "masking": objective.masking,
            "mask_ratio": objective.mask_ratio,
            "patch_grid": [frequency, time],
            "masked_patches_of_a_full_clip": plan.masked_per_clip,
            "heads": "projector (InfoNCE) and decoder (MSE): Linear(hidden, hidden), ReLU, Linear(hidden, 256)",
        },
        "accuracy_on": (
            f"the clips of data.validation_dir ({config.data.validation_dir})" if config.data.validation_dir
            else f"a held-out {config.data.holdout_fraction:g} of the clips of data.data_dirs (by a hash of each path)"
        ),
        "epochs": epochs,
        "final": epochs[-1]["validation"] if epochs else {},
        "encoder_config": plan.encoder,
        "encoder_source": plan.encoder_source,
        "feature_params": features.params.model_dump(),
        "feature_cache_key": features.key,
        "clips": features.num_clips,
        "skipped_files": features.skipped,
        "training": outcome.model_dump(exclude={"epochs"}),
        "config": config.model_dump(mode="json"),
        "run_fingerprint": plan.fingerprint,
        "trained_by": trained_by(flow_run_id),
    }


def publish_encoder(
    plan: PretrainPlan, features: FeatureCacheRef, outcome: PretrainOutcome, flow_run_id: str | None = None
) -> Path:
    """Publish the final model to <output_dir>/ssl/<name>/ with one rename: the SSL checkpoint, its config,
    the feature extractor's parameters, pretrain.json, the train log and the curves."""
    model_dir, work_dir = Path(outcome.model_dir), Path(outcome.work_dir)
    history = json.loads((work_dir / LOG_HISTORY_FILE).read_text())
    curves = training_curves(history, "accuracy", None, work_dir / PRETRAIN_CURVES_FILE)
    return publish_folder(PublishSpec(
        root=plan.publish_root,
        name=plan.config.name,
        kind="encoder",
        sources={"": model_dir, Path(outcome.train_log).name: Path(outcome.train_log), PRETRAIN_CURVES_FILE: curves},
        json_files={PRETRAIN_FILE: pretrain_record(plan, features, outcome, flow_run_id)},
        finite=(model_dir,),
    ))
