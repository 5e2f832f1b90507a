"""The sections of a run config: features, model (encoder + freezing), augmentation and training (fine-tuning's data
section is lib/config/data.py, pretraining's own sections lib/config/pretraining.py). Each default's description
says where it comes from.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from lib.config.base import (
    AUDIOSET_MEAN,
    AUDIOSET_STD,
    OMITTED_AT_DEFAULT,
    TF32,
    Attention,
    Compile,
    DataloaderWorkers,
    Deterministic,
    Device,
    Epochs,
    GradientAccumulation,
    LearningRate,
    MetricName,
    Optimizer,
    OptionalLocation,
    PinMemory,
    Precision,
    PublishedLocation,
    SaveTotalLimit,
    Section,
    Seed,
    Task,
    Tensorboard,
    WarmupSteps,
    WeightDecay,
)


class FeatureConfig(Section):
    """How clips become log-mel features (the feature cache's key, with the clips)."""

    sample_rate_hz: int = Field(
        16000, ge=8000, le=192000,
        description="Clips are resampled to this rate (default 16000: the notebook's and AST/SSAST's sample rate).",
    )
    clip_seconds: float = Field(
        1.0, gt=0, le=60,
        description=(
            "Clips are trimmed or zero-padded to this length (default 1.0: the notebook's 1 s clips; the dataset "
            "layouts bring their own: esc50 5.0, urbansound8k 4.0)."
        ),
    )
    normalize: bool = Field(
        True,
        description="Normalise log-mel features with mean/std (default true: as AST, and the notebook's processor).",
    )
    # Bounds: log-mel values lie within about -20..20, so statistics far outside are a typo (and would overflow).
    mean: float = Field(
        AUDIOSET_MEAN, ge=-1000, le=1000, description=(
            "Feature mean for normalisation (default -4.2677393: AST's AudioSet mean, ASTFeatureExtractor's default)."
        ),
    )
    std: float = Field(
        AUDIOSET_STD, ge=0.001, le=1000, description=(
            "Feature std for normalisation (default 4.5689974: AST's AudioSet std, ASTFeatureExtractor's default)."
        ),
    )
    max_frames: int | None = Field(
        128,
        ge=1,
        le=100_000,
        description=(
            "Frames per clip fed to the encoder (10 ms each; 1 s clips make 98), its positional embeddings cut or "
            "interpolated to fit; null: the encoder config's max_length. Default 128: ours, a 1 s clip without the "
            "notebook's padding to AST-base's 1024 (presets/notebook.yaml sets 1024); the dataset layouts bring "
            "their own: esc50 512, urbansound8k 400."
        ),
    )
    long_clips: Annotated[Literal["first", "crop"], OMITTED_AT_DEFAULT] = Field(
        "first",
        description=(
            "What is kept of a clip longer than clip_seconds: 'first' its start; 'crop' a window at a random offset "
            "in training (one per clip, fixed by its path: the cache stores one window) and the centre window in "
            "evaluation and prediction (default 'first': the notebook's trimming; the dataset layouts use 'crop')."
        ),
    )
    storage_dtype: Literal["float32", "float16"] = Field(
        "float32",
        description=(
            "How the feature cache stores values: float16 halves it on disk (the model still gets float32), values "
            "round to about 3 significant digits and a clip beyond float16's range is a bad file (default 'float32': "
            "ours, exact)."
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
            "config.json (default null: the folder's config.json, else the bundled architecture of "
            "MIT/ast-finetuned-audioset-10-10-0.4593, the notebook's base model)."
        ),
    )
    pooling: Literal["mean", "mean_patches"] = Field(
        "mean",
        description=(
            "'mean' averages all tokens; 'mean_patches' skips the cls/dist tokens (default 'mean': the notebook's "
            "x.mean(dim=1))."
        ),
    )
    classifier_dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout before the linear head (default 0: the notebook's head had none)."
    )


class Freezing(Section):
    """Which part of the network trains: the head, the last N encoder layers and the head, or all of it."""

    head_only: bool = Field(
        False,
        description=(
            "Train only the classifier head and final layernorm (default false: the notebook's b_train_just_last)."
        ),
    )
    train_last_n_layers: int = Field(
        0,
        ge=0,
        le=512,
        description=(
            "Train the last N encoder layers plus the head; 0 trains the full network (default 0: ours, full "
            "fine-tuning as AST and SSAST; the notebook's trainNlayers 3 is in presets/notebook.yaml)."
        ),
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


class TaskConfig(Section):
    """What the head predicts: one class per clip, or any number of them."""

    task: Annotated[Task, OMITTED_AT_DEFAULT] = Field(
        "single_label",
        description=(
            "'single_label': one class per clip, softmax and cross-entropy; 'multi_label': any number of classes per "
            "clip (a clip in several class folders, or several labels in a csv cell), sigmoid outputs and binary "
            "cross-entropy, scored by mAP (default 'single_label': the notebook's)."
        ),
    )
    thresholds: Annotated[Literal["per_class", "global"], OMITTED_AT_DEFAULT] = Field(
        "per_class",
        description=(
            "Multi-label: the probability at or above which a class is predicted, fitted on validation to the best F1, "
            "one per class or one for all (default 'per_class': ours, classes differ in how sure a model gets)."
        ),
    )

    @property
    def multi_label(self) -> bool:
        return self.task == "multi_label"


class ModelConfig(Freezing, TaskConfig, EncoderConfig):
    """The encoder, the task and the freezing variant (bases in this order list EncoderConfig's fields first)."""


class EnsembleModelConfig(TaskConfig, EncoderConfig):
    """An ensemble's encoder and task; each member adds its freezing variant."""


class AugmentationConfig(Section):
    """AST/SSAST-style augmentation of training batches (never of evaluation); everything off by default."""

    freq_mask_bins: int = Field(
        0, ge=0, le=128,
        description=(
            "SpecAugment: one frequency mask per sample, width uniform in 0..N-1 mel bins; 0 = off (default 0: "
            "the notebook had none; AST uses 48)."
        ),
    )
    time_mask_frames: int = Field(
        0, ge=0, le=1024,
        description=(
            "SpecAugment: one time mask per sample, width uniform in 0..N-1 frames; 0 = off (default 0: the "
            "notebook had none; AST uses 192 of 1024 on AudioSet, 48 on Speech Commands)."
        ),
    )
    mixup_probability: float = Field(
        0.0, ge=0, le=1,
        description=(
            "Chance that a training sample is mixed with another of its batch, with soft targets; 0 = off (default "
            "0: the notebook had none; AST uses 0.5 on AudioSet, 0.6 on Speech Commands)."
        ),
    )
    mixup_alpha: float = Field(
        10.0, gt=0, le=100,
        description="Each mixed sample's weight is drawn from Beta(alpha, alpha) (default 10: AST's Beta(10, 10)).",
    )
    noise_std: float = Field(
        0.0, ge=0, le=1, description=(
            "Std of zero-mean Gaussian noise added to the normalised features; 0 = off (default 0: the notebook had "
            "none)."
        ),
    )
    time_roll: bool = Field(
        False, description=(
            "Roll each sample by a random -10..9 frames along time, wrapping around, as AST does with its noise "
            "(default false: the notebook had none)."
        ),
    )
    background_noise_probability: Annotated[float, OMITTED_AT_DEFAULT] = Field(
        0.0, ge=0, le=1, description=(
            "Chance that a training clip gets a window of a background-noise recording mixed in (data.noise_dir, or "
            "Speech Commands' _background_noise_/); 0 = off (default 0: the notebook had none; TensorFlow's Speech "
            "Commands recipe uses 0.8)."
        ),
    )
    background_noise_volume: Annotated[float, OMITTED_AT_DEFAULT] = Field(
        0.1, gt=0, le=10, description=(
            "The mixed-in noise's amplitude is scaled by a factor drawn uniformly from 0..volume (default 0.1: "
            "TensorFlow's Speech Commands background_volume)."
        ),
    )

    @property
    def enabled(self) -> bool:
        return bool(
            self.freq_mask_bins or self.time_mask_frames or self.mixup_probability or self.noise_std or self.time_roll
            or self.background_noise_probability
        )


class TrainingSettings(Section):
    """What fine-tuning and pretraining train with alike: the schedule, device and precision, and the speed settings.
    Defaults are fine-tuning's; PretrainTrainingConfig re-declares six with SSAST's."""

    # The shared types' descriptions (base.py) name the sources of the defaults from precision on.
    epochs: Epochs = Field(50, description="Number of training epochs (default 50: the notebook's epoch_num).")
    batch_size: int = Field(
        8, ge=1, le=65_536, description=(
            "Per-device eval batch size, and train batch size unless batch_sizes is set (default 8: transformers' "
            "per_device_train_batch_size default; the notebook's 1 is in presets/notebook.yaml)."
        ),
    )
    learning_rate: LearningRate = Field(
        5e-5, description="Peak learning rate of the cosine schedule (default 5e-5: the notebook's learning_rate)."
    )
    weight_decay: WeightDecay = Field(
        0.0, description="AdamW weight decay (default 0: the notebook's, which kept TrainingArguments' default)."
    )
    warmup_steps: WarmupSteps = Field(
        3, description=(
            "Warmup optimizer steps; a value below 1 is a fraction of all steps (default 3: the notebook's "
            "warmup_steps)."
        ),
    )
    gradient_accumulation_steps: GradientAccumulation = Field(
        4, description="Batches per optimizer step (default 4: the notebook's gradient_accumulation_steps)."
    )
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
            "Per-epoch train batch sizes (the notebook's batch_sizes), e.g. [8, 16, 32]: epoch i uses entry i, "
            "the last entry repeats. Default null: batch_size every epoch, as the notebook in effect trained (its "
            "schedule never reached the dataloader)."
        ),
    )
    metric_for_best_model: MetricName = Field(
        "accuracy", description=(
            "Validation metric that picks the best epoch, 'loss' minimised; a multi-label task's are 'map', "
            "'micro_f1' and 'macro_f1' (default 'accuracy': the notebook's metric_for_best_model; 'map' for "
            "model.task multi_label)."
        ),
    )
    num_processes: int = Field(
        1, ge=1, le=64, description=(
            "Processes (one per GPU) that train one member together, via torchrun (default 1: ours, one process as "
            "the notebook)."
        ),
    )
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig)
    trunk_cache: bool = Field(
        True,
        description=(
            "Compute the frozen leading encoder layers once and train the rest on their cached outputs; used only "
            "when those layers are deterministic (no dropout) and augmentation is off (default true: ours, for speed)."
        ),
    )
