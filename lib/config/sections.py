"""The sections of a run config: data, features, model (encoder + freezing), augmentation, training, pretraining's own."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from lib.config.base import (
    AUDIOSET_MEAN,
    AUDIOSET_STD,
    LOCATION,
    TF32,
    Attention,
    CacheDir,
    Compile,
    DataloaderWorkers,
    Deterministic,
    Device,
    Epochs,
    FeatureWorkers,
    GradientAccumulation,
    LearningRate,
    Location,
    MetricName,
    Optimizer,
    OptionalLocation,
    PinMemory,
    Precision,
    PublishedLocation,
    SaveTotalLimit,
    ScanFingerprint,
    Section,
    Seed,
    SkipBadFiles,
    Tensorboard,
    WarmupSteps,
    WeightDecay,
)


class DataConfig(Section):
    train_dir: Location = Field(description="Folder with one subfolder of .wav clips per class.")
    validation_dir: Location = Field(description="Folder with the same class subfolders as train_dir.")
    test_dir: OptionalLocation = Field(
        None,
        description=(
            "Optional held-out folder with the same layout: every member and the ensemble are also scored on it. "
            "Only reported: validation alone chooses epochs, temperatures, members and weights."
        ),
    )
    quick_subsample: bool = Field(
        False,
        description="Keep every 10th clip of each class (the notebook's b_just_test) for a dry run.",
    )
    skip_bad_files: SkipBadFiles = False
    fingerprint: ScanFingerprint = "stat"
    cache_dir: CacheDir = Path(".astft-cache")
    feature_workers: FeatureWorkers = 0


class FeatureConfig(Section):
    sample_rate_hz: int = Field(16000, ge=8000, le=192000, description="Clips are resampled to this rate.")
    clip_seconds: float = Field(1.0, gt=0, le=60, description="Clips are trimmed or zero-padded to this length.")
    normalize: bool = Field(True, description="Normalise log-mel features with mean/std (as AST does).")
    # Log-mel values lie within about -20..20: statistics far outside that are a typo, and would
    # overflow the normalised features (then blamed on the clips).
    mean: float = Field(
        AUDIOSET_MEAN, ge=-1000, le=1000, description="Feature mean for normalisation (AudioSet default)."
    )
    std: float = Field(
        AUDIOSET_STD, ge=0.001, le=1000, description="Feature std for normalisation (AudioSet default)."
    )
    max_frames: int | None = Field(
        128,
        ge=1,
        le=100_000,
        description=(
            "Frames per clip fed to the encoder (10 ms each; 1 s clips make 98). The encoder's positional "
            "embeddings are cut or interpolated to fit. 1024 reproduces the notebook (AST-base's length); "
            "null uses the encoder config's max_length."
        ),
    )
    storage_dtype: Literal["float32", "float16"] = Field(
        "float32",
        description=(
            "How the feature cache stores values: float16 halves it on disk (the model still gets float32); "
            "values round to about 3 significant digits, and a clip whose features exceed float16's range is a bad file."
        ),
    )


class EncoderConfig(Section):
    ssl_checkpoint: PublishedLocation = Field(
        description="Folder holding the SSL model.safetensors (e.g. an HF Trainer checkpoint-N/ folder)."
    )
    base_config: OptionalLocation = Field(
        None,
        description=(
            "AST config.json describing the encoder; when set it takes precedence over the checkpoint folder's "
            "config.json. Unset: the folder's config.json, else the bundled "
            "MIT/ast-finetuned-audioset-10-10-0.4593 architecture."
        ),
    )
    pooling: Literal["mean", "mean_patches"] = Field(
        "mean",
        description="'mean' averages all tokens (as the notebook); 'mean_patches' skips the cls/dist tokens.",
    )
    classifier_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout before the linear head.")


class Freezing(Section):
    """Which part of the network trains: the head, the last N encoder layers and the head, or all of it."""

    head_only: bool = Field(False, description="Train only the classifier head (and final layernorm).")
    train_last_n_layers: int = Field(
        0,
        ge=0,
        le=512,
        description="Train the last N encoder layers plus the head; 0 trains the full network.",
    )

    @model_validator(mode="after")
    def _one_freezing_mode(self) -> Self:
        if self.head_only and self.train_last_n_layers > 0:
            raise ValueError(
                "head_only and train_last_n_layers are exclusive: set head_only=false to train the last "
                f"{self.train_last_n_layers} layers, or train_last_n_layers=0 for head only"
            )
        return self

    @property
    def freezing(self) -> str:
        if self.head_only:
            return "head_only"
        return f"last_{self.train_last_n_layers}_layers" if self.train_last_n_layers else "full"


class ModelConfig(Freezing, EncoderConfig):
    """The encoder and its freezing variant (bases in this order list EncoderConfig's fields first)."""


class AugmentationConfig(Section):
    """AST/SSAST-style augmentation of training batches (never of evaluation); everything off by default."""

    freq_mask_bins: int = Field(
        0, ge=0, le=128,
        description=(
            "SpecAugment: one frequency mask per sample, width uniform in 0..N-1 mel bins (AST AudioSet: 48; 0 = off)."
        ),
    )
    time_mask_frames: int = Field(
        0, ge=0, le=1024,
        description=(
            "SpecAugment: one time mask per sample, width uniform in 0..N-1 frames (AST AudioSet: 192 of 1024; 0 = off)."
        ),
    )
    mixup_probability: float = Field(
        0.0, ge=0, le=1,
        description=(
            "Chance that a training sample is mixed with another of its batch, with soft targets (AST: 0.5; 0 = off)."
        ),
    )
    mixup_alpha: float = Field(
        10.0, gt=0, le=100, description="Each mixed sample's weight is drawn from Beta(alpha, alpha) (AST: 10)."
    )
    noise_std: float = Field(
        0.0, ge=0, le=1, description="Std of zero-mean Gaussian noise added to the normalised features (0 = off)."
    )
    time_roll: bool = Field(
        False, description="Roll each sample by a random -10..9 frames along time, wrapping around (AST, with its noise)."
    )

    @property
    def enabled(self) -> bool:
        return bool(
            self.freq_mask_bins or self.time_mask_frames or self.mixup_probability or self.noise_std or self.time_roll
        )


class TrainingSettings(Section):
    """What fine-tuning and pretraining train with alike: the schedule, device and precision, and the speed settings.

    Defaults are fine-tuning's (the notebook's); PretrainTrainingConfig re-declares the six whose SSAST defaults
    differ, which keeps their place in the form.
    """

    epochs: Epochs = 50
    batch_size: int = Field(
        8, ge=1, le=65_536, description="Per-device eval batch size, and train batch size unless batch_sizes is set."
    )
    learning_rate: LearningRate = 5e-5
    weight_decay: WeightDecay = 0.0
    warmup_steps: WarmupSteps = 3
    gradient_accumulation_steps: GradientAccumulation = 4
    precision: Precision = "auto"
    device: Device = "auto"
    seed: Seed = 42
    deterministic: Deterministic = True
    save_total_limit: SaveTotalLimit = 2
    tensorboard: Tensorboard = False
    attention: Attention = "sdpa"
    tf32: TF32 = True
    optimizer: Optimizer = "auto"
    compile: Compile = False
    pin_memory: PinMemory = True
    dataloader_num_workers: DataloaderWorkers = "auto"


class TrainingConfig(TrainingSettings):
    """Fine-tuning's training section: the shared settings plus the batch-size schedule, the best-epoch metric,
    processes per member, augmentation and the frozen-trunk cache."""

    batch_sizes: list[Annotated[int, Field(ge=1, le=65_536)]] | None = Field(
        None,
        min_length=1,
        description=(
            "Per-epoch train batch sizes (the notebook's batch_sizes), e.g. [8, 16, 32]: epoch i uses entry i; "
            "epochs past the end of the list repeat its last entry. null: batch_size every epoch."
        ),
    )
    metric_for_best_model: MetricName = Field(
        "accuracy", description="Validation metric that picks the best epoch ('loss' is minimised)."
    )
    num_processes: int = Field(
        1, ge=1, le=64, description="Processes (one per GPU) that train one member together, via torchrun."
    )
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig)
    trunk_cache: bool = Field(
        True,
        description=(
            "Compute the frozen leading encoder layers once and train the rest on their cached outputs; "
            "used only when those layers are deterministic (no dropout) and augmentation is off."
        ),
    )


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
            "Held-out clips (any depth) that score the masked-patch accuracy after each epoch, never trained on. "
            "Unset: holdout_fraction of the clips of data_dirs is held out instead."
        ),
    )
    holdout_fraction: float = Field(
        0.1,
        gt=0,
        le=0.5,
        description=(
            "Without validation_dir: the share of clips held out for the masked-patch accuracy, chosen by a hash "
            "of each clip's path (a clip keeps its side when others are added)."
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
            "AST config.json to take the architecture from (hidden size, layers, heads, mel bins, patch size); "
            "unset: the bundled AST-base (MIT/ast-finetuned-audioset-10-10-0.4593). The fields below override it."
        ),
    )
    hidden_size: int | None = Field(None, ge=8, le=8192, description="Override the token width (AST-base: 768).")
    num_hidden_layers: int | None = Field(None, ge=1, le=128, description="Override the layer count (AST-base: 12).")
    num_attention_heads: int | None = Field(
        None, ge=1, le=128, description="Override the attention heads; must divide hidden_size (AST-base: 12)."
    )
    intermediate_size: int | None = Field(None, ge=8, le=32768, description="Override the MLP width (AST-base: 3072).")
    num_mel_bins: int | None = Field(
        None, ge=16, le=1024, description="Override the fbank's mel bins (AST-base: 128); fine-tuning uses the same."
    )


class ObjectiveConfig(Section):
    """SSAST's joint discriminative and generative masked patch modelling."""

    mask_ratio: float = Field(
        SSAST_MASK_RATIO,
        gt=0,
        lt=1,
        description=(
            "Share of each clip's patches that are masked, counted over the patches that hold audio (patches wholly "
            "in the zero-padding of a short clip are never masked). Default 0.78125: SSAST's 400 of 512."
        ),
    )
    masking: Literal["random", "cluster"] = Field(
        "random",
        description=(
            "'random': masked patches drawn uniformly; 'cluster': SSAST's cluster masking, squares of 3x3 to 5x5 "
            "neighbouring patches (SSAST's choice for 16x16 patches)."
        ),
    )
    generative_weight: float = Field(
        10.0,
        ge=0,
        le=1000,
        description="lambda in loss = InfoNCE + lambda * MSE (SSAST: 10); 0 trains the discriminative head alone.",
    )


class PretrainTrainingConfig(TrainingSettings):
    """Pretraining's training section: SSAST's defaults where they differ, and step checkpoints."""

    epochs: Epochs = 10
    batch_size: int = Field(24, ge=1, le=65_536, description="Per-device train and eval batch size (SSAST: 24).")
    learning_rate: LearningRate = 1e-4
    weight_decay: WeightDecay = 5e-7
    warmup_steps: WarmupSteps = 1000
    gradient_accumulation_steps: GradientAccumulation = 1
    checkpoint_every_steps: int = Field(
        0,
        ge=0,
        le=10_000_000,
        description=(
            "Save a Trainer checkpoint (what a killed run resumes from) every N optimizer steps; 0: at the end of "
            "each epoch."
        ),
    )



