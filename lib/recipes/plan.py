"""Validate a run configuration before any work starts, and derive what the stages need from it."""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict
from transformers import ASTConfig

from lib.core.errors import CheckpointError
from lib.core.layout import WEIGHTS_FILE
from lib.model.checkpoint import config_for_frames, resolve_encoder_config
from lib.config import EncoderConfig, EnsembleConfig, FeatureConfig, FinetuneConfig
from lib.core.errors import ConfigError
from lib.data.features import FRAME_LENGTH_MS, FeatureParams, fbank_frames
from lib.core.runtime import Runtime, check_portable, resolve_runtime
from lib.train.arguments import check_tensorboard_installed
from lib.train.schedule import check_schedule_supported
from lib.train.workdir import RunOwner, check_work_dir
from lib.core.layout import check_member_destination

DATA_FOLDERS = ("train_dir", "validation_dir", "test_dir")  # test_dir is optional (None)


class RunPlan(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    config: FinetuneConfig
    feature_params: FeatureParams
    # None when planned for another machine (the parent of a scale-out): the member's own run resolves it
    runtime: Runtime | None
    fingerprint: str

    @property
    def work_dir(self) -> Path:
        return self.config.member_work_dir

    @property
    def best_root(self) -> Path:
        return self.config.output_dir / "best"

    @property
    def owner(self) -> RunOwner:
        """Whose work dir it is (run.json): a pretraining run's, or another member's, is refused."""
        return RunOwner(kind="finetune", name=self.config.name)


def check_work_dir_location(config: FinetuneConfig) -> None:
    """The work dir must neither hold, nor be, nor lie inside the SSL checkpoint or the data, and be ours.

    A run deletes checkpoint-* folders in its work dir (another config's, or ones interrupted while
    saving), and the SSL checkpoint is typically such a folder of the SSL run.
    """
    protected = {
        "model.ssl_checkpoint (--ssl-checkpoint)": config.model.ssl_checkpoint,
        "data.train_dir (--train-dir)": config.data.train_dir,
        "data.validation_dir (--validation-dir)": config.data.validation_dir,
        "data.test_dir (--test-dir)": config.data.test_dir,
        # published members: a link there could pass for an incomplete checkpoint-N and be removed
        "the published members, output_dir/best": config.output_dir / "best",
    }
    check_work_dir_apart(
        config.member_work_dir, config.work_dir is not None, protected, "<output_dir>/runs/<name>",
        RunOwner(kind="finetune", name=config.name),
    )


def check_work_dir_apart(
    work_dir: Path, given: bool, protected: dict[str, Path | None], default: str, owner: RunOwner
) -> None:
    """work_dir neither is, nor holds, nor lies in any protected folder (field label -> path), and is the owner's.

    given: whether --work-dir was passed (else it is `default`, and the fix is another --output-dir)."""
    work_dir = work_dir.resolve()
    for field, path in protected.items():
        if path is None:
            continue
        path = Path(path).resolve()
        relation = (
            "is" if work_dir == path
            else "is inside" if work_dir.is_relative_to(path)
            else "contains" if path.is_relative_to(work_dir)
            else None
        )
        if relation:
            fix = (
                f"leave it unset for {default}" if given
                else f"the default, {default}, lies there: pass --output-dir or --work-dir elsewhere"
            )
            raise ConfigError(
                f"work_dir (--work-dir) {work_dir} {relation} {field} ({path}); a run removes checkpoint-* "
                "folders and logs in its work dir and writes its own there. Pass a --work-dir outside the SSL "
                f"checkpoint, the data and the published models, or {fix}"
            )
    check_work_dir(work_dir, owner)


def plan_run(config: FinetuneConfig, trains_here: bool = True) -> RunPlan:
    """Fail fast on anything checkable without touching audio or weights; errors name the parameter.

    trains_here=False plans a run that another machine trains (a scale-out member): only what holds
    everywhere is checked, and the plan has no Runtime.
    """
    config = config.resolved()
    _check_checkpoint(config.model.ssl_checkpoint)
    for field in DATA_FOLDERS:
        folder = getattr(config.data, field)
        if folder is not None and not folder.is_dir():
            raise ConfigError(f"data.{field} (--{field.replace('_', '-')}) {folder}: no such folder")
    check_output_folders(
        {"output_dir (--output-dir)": config.output_dir, "data.cache_dir (--cache-dir)": config.data.cache_dir},
        {f"data.{field} (--{field.replace('_', '-')})": getattr(config.data, field) for field in DATA_FOLDERS},
    )
    check_member_destination(config.output_dir / "best" / config.name)
    check_work_dir_location(config)
    _check_clip_fills_one_window(config.features)
    encoder_config, source = _encoder_config(config.model, config.features.max_frames)
    check_clip_fits(config.features, encoder_config.max_length)
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
    return RunPlan(
        config=config,
        feature_params=FeatureParams(**config.features.model_dump() | fitted),
        runtime=runtime,
        fingerprint=config.fingerprint(),
    )


def plan_ensemble(config: EnsembleConfig, trains_here: bool = True) -> dict[str, RunPlan]:
    """Every member's plan, the sweep expanded against the encoder's layer count; before any work.

    trains_here=False: the members train elsewhere (scale-out), see plan_run."""
    num_layers = None
    if config.sweep_last_n:
        encoder_config, source = _encoder_config(config.model.resolved(), config.features.max_frames)
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


def _encoder_config(model: EncoderConfig, max_frames: int | None) -> tuple[ASTConfig, str]:
    """The encoder's config fitted to max_frames, and where it came from (a missing checkpoint is named first)."""
    _check_checkpoint(model.ssl_checkpoint)
    try:
        checkpoint_config, source = resolve_encoder_config(model.ssl_checkpoint, model.base_config)
        # The encoder is loaded for features of max_frames frames (positional embeddings fitted).
        return config_for_frames(checkpoint_config, max_frames), source
    except CheckpointError as error:
        raise ConfigError(str(error)) from error


def _check_checkpoint(checkpoint: Path) -> None:
    if not (checkpoint / WEIGHTS_FILE).is_file():
        raise ConfigError(
            f"model.ssl_checkpoint (--ssl-checkpoint) {checkpoint}: no {WEIGHTS_FILE} there; "
            "point it at the SSL checkpoint folder (e.g. .../checkpoint-33297/)"
        )


def check_output_folders(
    outputs: dict[str, Path], data_folders: dict[str, Path | None], written: str = "best/, runs/, features/"
) -> None:
    """The output folders (label -> path) must be (or become) folders, outside what the folder scan reads.

    written: the folders a run puts there, as the error names them (pretraining: ssl/, ssl-runs/, features/)."""
    for label, path in outputs.items():
        _check_can_be_folder(label, path)
        for data_label, data_dir in data_folders.items():
            if data_dir is not None and _seen_by_scan(path, data_dir):
                raise ConfigError(
                    f"{label} {path} is inside {data_label} {data_dir}: the next scan would read the folders "
                    f"written there ({written}) as part of the data; choose a folder outside the data folders"
                )


def _check_can_be_folder(label: str, path: Path) -> None:
    """The path is a folder, or its nearest existing parent is one (mkdir creates the rest)."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or existing.is_dir():
        return
    if existing == path:
        raise ConfigError(f"{label} {path} is a file, not a folder; pass a folder (it is created if missing)")
    raise ConfigError(
        f"{label} {path}: {existing} is a file, not a folder, so nothing can be created below it; "
        "pass a path whose parents are folders"
    )


def _seen_by_scan(path: Path, data_dir: Path) -> bool:
    """Whether the folder scan of data_dir would list path: inside it, with no hidden folder on the way."""
    if not path.is_relative_to(data_dir):
        return False
    return not any(part.startswith(".") for part in path.relative_to(data_dir).parts)


def check_clip_fits(features: FeatureConfig, max_frames: int) -> None:
    """A clip makes at least one fbank frame, and no more than max_frames (the encoder's input length)."""
    _check_clip_fills_one_window(features)
    clip_frames = fbank_frames(features.sample_rate_hz, features.clip_seconds)
    if clip_frames > max_frames:
        raise ConfigError(
            f"features.clip_seconds={features.clip_seconds} makes {clip_frames} frames but "
            f"features.max_frames is {max_frames}, which would cut the end of every clip; "
            f"set features.max_frames (--max-frames) to at least {clip_frames}, or shorten clip_seconds"
        )


def _check_clip_fills_one_window(features: FeatureConfig) -> None:
    """A clip shorter than one fbank window makes no frame at all: its features would be all padding."""
    if fbank_frames(features.sample_rate_hz, features.clip_seconds) > 0:
        return
    rate = features.sample_rate_hz
    samples = int(round(rate * features.clip_seconds))
    window = int(rate * FRAME_LENGTH_MS * 0.001)
    raise ConfigError(
        f"features.clip_seconds={features.clip_seconds} is {samples} samples at {rate} Hz, fewer than one "
        f"{FRAME_LENGTH_MS:g} ms fbank window ({window} samples); use at least {window / rate:g}"
    )
