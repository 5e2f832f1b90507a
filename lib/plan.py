"""Validate a run configuration before any work starts, and derive what the stages need from it."""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict

from lib.checkpoint import (
    CheckpointError,
    WEIGHTS_FILE,
    architecture_dict,
    config_for_frames,
    resolve_encoder_config,
)
from lib.config import ConfigError, FinetuneConfig
from lib.features import FeatureParams, fbank_frames
from lib.training import Runtime, check_work_dir, resolve_runtime


class RunPlan(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    config: FinetuneConfig
    encoder_architecture: dict
    encoder_config_source: str
    feature_params: FeatureParams
    runtime: Runtime
    fingerprint: str

    @property
    def work_dir(self) -> Path:
        return self.config.member_work_dir

    @property
    def best_root(self) -> Path:
        return self.config.output_dir / "best"


def check_work_dir_location(config: FinetuneConfig) -> None:
    """The work dir must neither hold, nor be, nor lie inside the SSL checkpoint or the data, and be ours.

    A run deletes checkpoint-* folders in its work dir (another config's, or ones interrupted while
    saving), and the SSL checkpoint is typically such a folder of the SSL run.
    """
    work_dir = config.member_work_dir.resolve()
    protected = {
        "model.ssl_checkpoint (--ssl-checkpoint)": config.model.ssl_checkpoint,
        "data.train_dir (--train-dir)": config.data.train_dir,
        "data.validation_dir (--validation-dir)": config.data.validation_dir,
    }
    for field, path in protected.items():
        path = Path(path).resolve()
        relation = (
            "is" if work_dir == path
            else "is inside" if work_dir.is_relative_to(path)
            else "contains" if path.is_relative_to(work_dir)
            else None
        )
        if relation:
            raise ConfigError(
                f"work_dir (--work-dir) {work_dir} {relation} {field} ({path}); a run removes checkpoint-* "
                "folders and logs in its work dir and writes its own there. Pass a --work-dir outside the SSL "
                "checkpoint and the data, or leave it unset for <output_dir>/runs/<name>"
            )
    check_work_dir(work_dir)


def plan_run(config: FinetuneConfig) -> RunPlan:
    """Fail fast on anything checkable without touching audio or weights; errors name the parameter."""
    config = config.resolved()
    checkpoint = config.model.ssl_checkpoint
    if not (checkpoint / WEIGHTS_FILE).is_file():
        raise ConfigError(
            f"model.ssl_checkpoint (--ssl-checkpoint) {checkpoint}: no {WEIGHTS_FILE} there; "
            "point it at the SSL checkpoint folder (e.g. .../checkpoint-33297/)"
        )
    for field in ("train_dir", "validation_dir"):
        folder = getattr(config.data, field)
        if not folder.is_dir():
            raise ConfigError(f"data.{field} (--{field.replace('_', '-')}) {folder}: no such folder")
    check_work_dir_location(config)
    try:
        checkpoint_config, source = resolve_encoder_config(checkpoint, config.model.base_config)
        # The encoder is loaded for features of max_frames frames (positional embeddings fitted).
        encoder_config = config_for_frames(checkpoint_config, config.features.max_frames)
    except CheckpointError as error:
        raise ConfigError(str(error)) from error
    clip_frames = fbank_frames(config.features.sample_rate_hz, config.features.clip_seconds)
    if clip_frames > encoder_config.max_length:
        raise ConfigError(
            f"features.clip_seconds={config.features.clip_seconds} makes {clip_frames} frames but "
            f"features.max_frames is {encoder_config.max_length}, which would cut the end of every clip; "
            f"set features.max_frames (--max-frames) to at least {clip_frames}, or shorten clip_seconds"
        )
    layers = encoder_config.num_hidden_layers
    if config.model.train_last_n_layers > layers:
        raise ConfigError(
            f"model.train_last_n_layers (--train-last-n-layers) is {config.model.train_last_n_layers} "
            f"but the encoder ({source}) has {layers} layers; use 1..{layers}, or 0 for full fine-tuning"
        )
    masks = config.training.augmentation
    mel_bins, frames = encoder_config.num_mel_bins, encoder_config.max_length
    if masks.freq_mask_bins > mel_bins or masks.time_mask_frames > frames:
        raise ConfigError(
            f"training.augmentation: freq_mask_bins={masks.freq_mask_bins} and time_mask_frames="
            f"{masks.time_mask_frames} must not exceed the features' {mel_bins} mel bins and {frames} frames "
            "(features.max_frames); narrow the masks"
        )
    runtime = resolve_runtime(config.training.device, config.training.precision)
    processes = config.training.num_processes
    if processes > 1 and config.training.batch_sizes:
        raise ConfigError(
            "training.batch_sizes (a per-epoch schedule) works with one training process only; "
            "drop it or set training.num_processes (--num-processes) to 1"
        )
    if runtime.device == "cuda" and processes > torch.cuda.device_count():
        raise ConfigError(
            f"training.num_processes is {processes} but only {torch.cuda.device_count()} CUDA devices are "
            "visible; lower it (one process per GPU) or check CUDA_VISIBLE_DEVICES"
        )
    feature_params = FeatureParams(
        sample_rate_hz=config.features.sample_rate_hz,
        clip_seconds=config.features.clip_seconds,
        num_mel_bins=encoder_config.num_mel_bins,
        # Features are exactly as long as the (fitted) positional embeddings expect.
        max_frames=encoder_config.max_length,
        normalize=config.features.normalize,
        mean=config.features.mean,
        std=config.features.std,
    )
    return RunPlan(
        config=config,
        encoder_architecture=architecture_dict(encoder_config),
        encoder_config_source=source,
        feature_params=feature_params,
        runtime=runtime,
        fingerprint=config.fingerprint(),
    )
