"""Pretraining's own sections of a run config: its unlabeled data, the encoder it builds, SSAST's masked-patch
objective and its training (the settings every run shares plus checkpoints every N steps). Each default's
description says where it comes from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from lib.config.base import (
    LOCATION,
    CacheDir,
    Epochs,
    FeatureWorkers,
    GradientAccumulation,
    LearningRate,
    OptionalLocation,
    ScanFingerprint,
    Section,
    SkipBadFiles,
    WarmupSteps,
    WeightDecay,
)
from lib.config.sections import TrainingSettings

# SSAST (Gong et al., AAAI 2022) masks 400 of the 512 16x16 patches of a 1024-frame, 128-bin input.
SSAST_MASK_RATIO = 400 / 512


class PretrainDataConfig(Section):
    data_dirs: Annotated[list[Path], LOCATION] = Field(
        min_length=1,
        max_length=64,
        description=(
            "Folders of .wav clips to pretrain on, searched at any depth; labels and subfolder names are ignored "
            "(the train folder of a labelled set works too)."
        ),
    )
    validation_dir: OptionalLocation = Field(
        None,
        description=(
            "Held-out clips (any depth) that score the masked-patch accuracy after each epoch, never trained on "
            "(default null: ours, holdout_fraction of the clips of data_dirs is held out instead)."
        ),
    )
    holdout_fraction: float = Field(
        0.1,
        gt=0,
        le=0.5,
        description=(
            "Without validation_dir: the share of clips held out for the masked-patch accuracy, chosen by a hash "
            "of each clip's path so a clip keeps its side (default 0.1: project default, reason not recorded)."
        ),
    )
    skip_bad_files: SkipBadFiles = False
    fingerprint: ScanFingerprint = "stat"
    cache_dir: CacheDir = Path(".astft-cache")
    feature_workers: FeatureWorkers = 0


class PretrainModelConfig(Section):
    """The encoder to pretrain: an AST architecture, its strides set to the patch size (16x16 patches, no overlap)."""

    base_config: OptionalLocation = Field(
        None,
        description=(
            "AST config.json to take the architecture from (hidden size, layers, heads, mel bins, patch size), "
            "which the fields below override (default null: the bundled AST-base of "
            "MIT/ast-finetuned-audioset-10-10-0.4593, the notebook's base model)."
        ),
    )
    hidden_size: int | None = Field(
        None, ge=8, le=8192, description="Override the token width (default null: base_config's; AST-base: 768)."
    )
    num_hidden_layers: int | None = Field(
        None, ge=1, le=128, description="Override the layer count (default null: base_config's; AST-base: 12)."
    )
    num_attention_heads: int | None = Field(
        None, ge=1, le=128, description=(
            "Override the attention heads; must divide hidden_size (default null: base_config's; AST-base: 12)."
        ),
    )
    intermediate_size: int | None = Field(
        None, ge=8, le=32768, description="Override the MLP width (default null: base_config's; AST-base: 3072)."
    )
    num_mel_bins: int | None = Field(
        None, ge=16, le=1024, description=(
            "Override the fbank's mel bins, used by fine-tuning too (default null: base_config's; AST-base: 128)."
        ),
    )


class ObjectiveConfig(Section):
    """SSAST's joint discriminative and generative masked patch modelling."""

    mask_ratio: float = Field(
        SSAST_MASK_RATIO,
        gt=0,
        lt=1,
        description=(
            "Share of each clip's patches that are masked, counted over the patches that hold audio (patches wholly "
            "in the zero-padding of a short clip are never masked). Default 0.78125: SSAST's 400 of 512 patches."
        ),
    )
    masking: Literal["random", "cluster"] = Field(
        "random",
        description=(
            "'random': masked patches drawn uniformly; 'cluster': SSAST's cluster masking, squares of 3x3 to 5x5 "
            "neighbouring patches (default 'random': project default, reason not recorded; SSAST uses 'cluster')."
        ),
    )
    generative_weight: float = Field(
        10.0,
        ge=0,
        le=1000,
        description=(
            "lambda in loss = InfoNCE + lambda * MSE; 0 trains the discriminative head alone (default 10: SSAST's "
            "weight)."
        ),
    )


class PretrainTrainingConfig(TrainingSettings):
    """Pretraining's training section: SSAST's defaults where they differ, and step checkpoints."""

    epochs: Epochs = Field(10, description="Number of training epochs (default 10: SSAST's pretraining epochs).")
    batch_size: int = Field(
        24, ge=1, le=65_536, description="Per-device train and eval batch size (default 24: SSAST's pretraining batch)."
    )
    learning_rate: LearningRate = Field(
        1e-4, description="Peak learning rate of the cosine schedule (default 1e-4: SSAST's pretraining lr)."
    )
    weight_decay: WeightDecay = Field(
        5e-7, description="AdamW weight decay (default 5e-7: SSAST's pretraining weight decay)."
    )
    warmup_steps: WarmupSteps = Field(
        1000, description=(
            "Warmup optimizer steps; a value below 1 is a fraction of all steps (default 1000: SSAST's warm-up)."
        ),
    )
    gradient_accumulation_steps: GradientAccumulation = Field(
        1, description="Batches per optimizer step (default 1: SSAST steps after every batch)."
    )
    checkpoint_every_steps: int = Field(
        0,
        ge=0,
        le=10_000_000,
        description=(
            "Save a Trainer checkpoint (what a killed run resumes from) every N optimizer steps; 0: at the end of "
            "each epoch (default 0: ours, as fine-tuning and the notebook's save_strategy 'epoch')."
        ),
    )



