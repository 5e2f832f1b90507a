"""Typed run configuration.

One nested pydantic model per flow: Prefect renders it as a validated form in the UI, the CLI
loads it from a YAML preset plus flag overrides, and it is written beside every published member.
Every knob of the original notebook's first cell has a field here (see README, "Configuration").
"""

from __future__ import annotations

import re
from functools import reduce
from operator import getitem
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from lib.core.hashing import digest
from lib.core.errors import ConfigError
from lib.core.layout import RESERVED_MEMBER_NAMES

# AudioSet statistics used by the AST authors (and transformers' ASTFeatureExtractor defaults).
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974

# What lib.evaluate.metrics.summary_metrics reports for every validation pass; any of them, or the loss, picks the best epoch.
SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "f1", "precision", "recall")
MetricName = Literal[(*SUMMARY_METRICS, "loss")]
MEMBER_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$"


def _not_reserved(name: str) -> str:
    if name.lower() in RESERVED_MEMBER_NAMES:
        raise ValueError(
            f"{name!r} is the name of a file written under <output_dir>/best/ beside the members "
            f"(reserved: {sorted(RESERVED_MEMBER_NAMES)}); choose another member name"
        )
    return name


# The pattern already refuses path separators, '.', '..' and leading dots (hidden publish backups).
MemberName = Annotated[str, Field(pattern=MEMBER_NAME_PATTERN, max_length=128), AfterValidator(_not_reserved)]


# Field tags (Annotated metadata), so that resolved() and fingerprint() never list fields by name.
# Where something is, not what it is: resolved() makes it absolute, and fingerprint() leaves it out,
# since what lies there is identified by content (the feature cache and encoder keys that resume_key
# adds to the fingerprint), so a moved cache, dataset or checkpoint is still the same run.
LOCATION = "location"
# Changes how a run goes (its speed, its logs, which scan cache it uses), never the trained weights.
NO_EFFECT_ON_WEIGHTS = "no effect on weights"
Location = Annotated[Path, LOCATION]
# A location that may be a published link (<output_dir>/best/<name>, <output_dir>/ssl/<name>): resolved()
# keeps its last component, so what a run records (member.json, run_config.json) is the stable name, not
# the version folder behind it, which the next publish deletes. Content is still identified by the
# files' own stats (lib.model.checkpoint.checkpoint_fingerprint follows the link).
KEEP_LINK = "keep link"
PublishedLocation = Annotated[Path, LOCATION, KEEP_LINK]
OptionalLocation = Annotated[Path | None, LOCATION]


def _tagged(model: type[BaseModel], *tags: str) -> list[tuple[str, ...]]:
    """Key paths, through nested sections, of the fields that carry any of tags."""
    paths: list[tuple[str, ...]] = []
    for name, field in model.model_fields.items():
        if any(tag in field.metadata for tag in tags):
            paths.append((name,))
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            paths += [(name, *inner) for inner in _tagged(field.annotation, *tags)]
    return paths


def _bounds_in_descriptions(schema: dict) -> None:
    """Name each field's bounds in its JSON-schema description: the Prefect UI's run form shows the
    description but not minimum/maximum (it only enforces them when the form is submitted)."""
    words = {"exclusiveMinimum": "above", "minimum": "at least", "exclusiveMaximum": "below", "maximum": "at most"}
    for field in schema.get("properties", {}).values():
        number = next((option for option in [field, *field.get("anyOf", [])] if words.keys() & option.keys()), None)
        if number is None or "description" not in field:
            continue
        bounds = [f"{word} {number[key]:{'d' if isinstance(number[key], int) else 'g'}}"
                  for key, word in words.items() if key in number]
        field["description"] += f" Allowed: {', '.join(bounds)}."


class _Section(BaseModel):
    # A typo in a preset must fail loudly instead of silently keeping a default; a NaN or infinite
    # float (YAML's .nan / .inf) would pass most bounds and e.g. turn every normalised feature into NaN.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, allow_inf_nan=False, json_schema_extra=_bounds_in_descriptions
    )

    def resolved(self) -> Self:
        """Same config with every LOCATION field made absolute, so tasks and caches agree on them."""
        data = self.model_dump()
        links = _tagged(type(self), KEEP_LINK)
        for *sections, name in _tagged(type(self), LOCATION):
            parent = reduce(getitem, sections, data)
            absolute = _absolute_keeping_link if (*sections, name) in links else _absolute
            if isinstance(parent[name], list):
                parent[name] = [absolute(path) for path in parent[name]]
            elif parent[name] is not None:
                parent[name] = absolute(parent[name])
        return self.model_validate(data)


def _absolute(path: Path | str) -> Path:
    return Path(path).expanduser().resolve()


def _absolute_keeping_link(path: Path | str) -> Path:
    path = Path(path).expanduser()
    return path.absolute().parent.resolve() / path.name if path.is_symlink() else path.resolve()


class _RunConfig(_Section):
    """A whole run's parameters (a flow's one argument), whose fingerprint keys its checkpoints."""

    def fingerprint(self) -> str:
        """Hash of the settings that can change the trained weights (every field but LOCATION and NO_EFFECT_ON_WEIGHTS)."""
        payload = self.model_dump(mode="json")
        for *sections, name in _tagged(type(self), LOCATION, NO_EFFECT_ON_WEIGHTS):
            del reduce(getitem, sections, payload)[name]
        return digest(payload, 16)


# Fields that several sections share, declared once: each section still lists them in its own order,
# with its own default (so the CLI help and the UI form read as before).
SkipBadFiles = Annotated[bool, Field(description="Skip unreadable or invalid clips (logged and counted) instead of stopping.")]
ScanFingerprint = Annotated[
    Literal["stat", "content"],
    NO_EFFECT_ON_WEIGHTS,
    Field(
        description=(
            "How the folder scan notices changed clips: 'stat' compares each clip's size and mtime (cheap), "
            "'content' also hashes every clip's bytes, catching edits that keep both (reads the whole dataset)."
        ),
    ),
]
# In data, not features: FeatureParams (every features field) is the feature cache's key.
FeatureWorkers = Annotated[int, NO_EFFECT_ON_WEIGHTS, Field(ge=0, le=1024, description=(
    "Processes that compute the feature cache; 0: one per usable CPU core. Datasets under 256 clips are built in "
    "one process (at most one worker per 128 clips). The cache is the same whatever the count."
))]
CacheDir = Annotated[Path, LOCATION, Field(description="Where folder scans, Arrow feature caches and stripped encoders are kept.")]
Epochs = Annotated[int, Field(ge=1, le=100_000, description="Number of training epochs.")]
LearningRate = Annotated[float, Field(gt=0, le=1, description="Peak learning rate (cosine schedule).")]
WeightDecay = Annotated[float, Field(ge=0, le=1, description="AdamW weight decay.")]
WarmupSteps = Annotated[float, Field(ge=0, description="Warmup optimizer steps; a value below 1 is a fraction of all steps.")]
GradientAccumulation = Annotated[int, Field(ge=1, le=4096, description="Batches per optimizer step.")]
Precision = Annotated[
    Literal["auto", "fp32", "fp16", "bf16"], Field(description="'auto': bf16 (or fp16) mixed precision on CUDA, fp32 on CPU.")
]
Device = Annotated[Literal["auto", "cpu", "cuda"], Field(description="'auto' uses CUDA when available.")]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1, description="Seed for weight init, shuffling, dropout (and pretraining's masks).")]
Deterministic = Annotated[bool, Field(description="Deterministic cuDNN kernels (slower, reproducible).")]
# How the steps are computed and fed: the speed settings users of HF Trainer expect on a GPU. Each
# costs nothing on CPU (it is off there, or the same as before), and member.json / pretrain.json record
# what each resolved to (lib.train.engine.SpeedSettings). attention, tf32, optimizer and compile change which
# kernels do the arithmetic, so the weights differ by rounding: they stay in the fingerprint, and a
# run is never resumed under other kernels. pin_memory and the worker count only change how batches
# reach the device (workers load rows; the sampler and augmentation draw in the main process).
Attention = Annotated[Literal["sdpa", "eager"], Field(description=(
    "Attention kernel: 'sdpa' (torch's scaled_dot_product_attention, which picks a flash or memory-efficient "
    "kernel on CUDA) or 'eager' (matmul, softmax, matmul). Same function, different rounding."
))]
TF32 = Annotated[bool, Field(description=(
    "TF32 tensor-core matmuls for the float32 work on CUDA GPUs of the Ampere generation or newer; off on CPU "
    "and older GPUs whatever this says."
))]
Optimizer = Annotated[Literal["auto", "adamw_torch_fused", "adamw_torch"], Field(description=(
    "AdamW implementation: 'auto' is the fused kernel (one launch per step on CUDA; torch has it on CPU too, "
    "and it is transformers' own default there); 'adamw_torch' the multi-tensor one."
))]
Compile = Annotated[bool, Field(description=(
    "torch.compile the model (Trainer's torch_compile): faster steps on a GPU after a compile of a minute or "
    "more, worth it for long runs."
))]
PinMemory = Annotated[bool, NO_EFFECT_ON_WEIGHTS, Field(
    description="Page-locked DataLoader batches on CUDA, for faster copies to the GPU; off on CPU."
)]
DataloaderWorkers = Annotated[Annotated[int, Field(ge=0, le=64)] | Literal["auto"], NO_EFFECT_ON_WEIGHTS, Field(description=(
    "DataLoader worker processes per training process. 'auto': none on CPU (training uses every core), on "
    "CUDA up to 4, one core per process left for the training loop."
))]
SaveTotalLimit = Annotated[int, Field(ge=1, le=1000, description="Trainer checkpoints kept in the work dir.")]
Tensorboard = Annotated[bool, NO_EFFECT_ON_WEIGHTS, Field(description="Write TensorBoard logs (needs the 'tensorboard' extra).")]


class DataConfig(_Section):
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


class FeatureConfig(_Section):
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


class EncoderConfig(_Section):
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


class Freezing(_Section):
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


class AugmentationConfig(_Section):
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


class TrainingConfig(_Section):
    epochs: Epochs = 50
    batch_size: int = Field(
        8, ge=1, le=65_536, description="Per-device eval batch size, and train batch size unless batch_sizes is set."
    )
    batch_sizes: list[Annotated[int, Field(ge=1, le=65_536)]] | None = Field(
        None,
        min_length=1,
        description=(
            "Per-epoch train batch sizes (the notebook's batch_sizes), e.g. [8, 16, 32]: epoch i uses entry i; "
            "epochs past the end of the list repeat its last entry. null: batch_size every epoch."
        ),
    )
    learning_rate: LearningRate = 5e-5
    weight_decay: WeightDecay = 0.0
    warmup_steps: WarmupSteps = 3
    gradient_accumulation_steps: GradientAccumulation = 4
    metric_for_best_model: MetricName = Field(
        "accuracy", description="Validation metric that picks the best epoch ('loss' is minimised)."
    )
    precision: Precision = "auto"
    device: Device = "auto"
    seed: Seed = 42
    deterministic: Deterministic = True
    num_processes: int = Field(
        1, ge=1, le=64, description="Processes (one per GPU) that train one member together, via torchrun."
    )
    save_total_limit: SaveTotalLimit = 2
    tensorboard: Tensorboard = False
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig)
    trunk_cache: bool = Field(
        True,
        description=(
            "Compute the frozen leading encoder layers once and train the rest on their cached outputs; "
            "used only when those layers are deterministic (no dropout) and augmentation is off."
        ),
    )
    attention: Attention = "sdpa"
    tf32: TF32 = True
    optimizer: Optimizer = "auto"
    compile: Compile = False
    pin_memory: PinMemory = True
    dataloader_num_workers: DataloaderWorkers = "auto"


class FinetuneConfig(_RunConfig):
    name: MemberName = Field(
        description="Member name (the notebook's postfix): published to OUTPUT_DIR/best/NAME/.",
    )
    output_dir: Location = Field(Path("ensemble"), description="Root of published members (OUTPUT_DIR/best/).")
    work_dir: OptionalLocation = Field(
        None, description="Trainer checkpoints and logs; default OUTPUT_DIR/runs/NAME/."
    )
    data: DataConfig
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    model: ModelConfig
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    @property
    def member_work_dir(self) -> Path:
        return self.work_dir if self.work_dir is not None else self.output_dir / "runs" / self.name


class MemberVariant(Freezing):
    """One ensemble member: a freezing variant plus optional training overrides."""

    name: MemberName = Field(description="Member name (folder under best/).")
    learning_rate: float | None = Field(None, gt=0, le=1, description="Override training.learning_rate.")
    epochs: int | None = Field(None, ge=1, le=100_000, description="Override training.epochs.")
    batch_size: int | None = Field(
        None, ge=1, le=65_536, description="Override training.batch_size (a constant size: replaces batch_sizes)."
    )
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Override training.seed.")
    weight: float | None = Field(
        None,
        gt=0,
        le=1000,
        description=(
            "Fixed weight of this member in the soft vote. When any member sets one, these weights replace "
            "the selection (members without one weigh 1); unset everywhere: ensemble.selection decides."
        ),
    )


class EnsembleConfig(_Section):
    output_dir: Location = Field(Path("ensemble"), description="Members go to OUTPUT_DIR/best/MEMBER/.")
    data: DataConfig
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    model: EncoderConfig
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    members: list[MemberVariant] = Field(
        default_factory=list, max_length=256, description="The variants to train (sweep_last_n and seeds add more)."
    )
    sweep_last_n: list[Annotated[int, Field(ge=0, le=512)]] = Field(
        default_factory=list,
        max_length=256,
        description=(
            "One member per value N, named last-N: 0 trains the head only, N the last N encoder layers and the "
            "head, and the encoder's layer count L the full network (e.g. 0,2,4,6,12 for AST-base, L = 12). "
            "Checked against the encoder's layer count before any work."
        ),
    )
    seeds: list[Annotated[int, Field(ge=0, le=2**32 - 1)]] = Field(
        default_factory=list,
        max_length=256,
        description=(
            "Train every member that sets no seed of its own once per seed, named NAME-sSEED (e.g. last-4-s2). "
            "Empty: each member trains once, with training.seed."
        ),
    )
    selection: Literal["all", "greedy"] = Field(
        "greedy",
        description=(
            "How members are weighted in the soft vote of temperature-calibrated probabilities: 'all' equally; "
            "'greedy' by forward selection with replacement on validation NLL (Caruana et al., 2004), the "
            "counts becoming the weights. Member weights given in the config replace either."
        ),
    )
    dispatch: Literal["in_process", "deployments"] = Field(
        "in_process",
        description=(
            "'in_process' trains members one after another in this flow run; 'deployments' starts each "
            "member as a run of member_deployment on the work pool, in parallel across its workers."
        ),
    )
    member_deployment: str = Field(
        "astft-finetune/member", description="Deployment (flow-name/deployment-name) that trains one member."
    )

    @model_validator(mode="after")
    def _unique_member_names(self) -> EnsembleConfig:
        names = [variant.name for variant in self.variants()]
        if not names:
            raise ValueError("members: no member to train; list members, or give sweep_last_n (--sweep-last-n)")
        if len(names) > 256:
            raise ValueError(
                f"members: {len(names)} members after expanding sweep_last_n and seeds, more than 256; "
                "sweep fewer values or seeds"
            )
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(
                f"members: names must be unique (they are folder names), repeated: {duplicates} "
                "(after expanding sweep_last_n into last-N and seeds into NAME-sSEED)"
            )
        return self

    def variants(self, num_layers: int | None = None) -> list[MemberVariant]:
        """Every member to train: the listed ones, then last-N per sweep value, each once per seed.

        Sweep value 0 is head only and num_layers (the encoder's layer count) full fine-tuning; without
        num_layers a sweep value is taken as last-N (lib.recipes.plan.plan_ensemble passes it, after checking the bound).
        """
        swept = [
            MemberVariant(name=f"last-{n}", head_only=n == 0, train_last_n_layers=0 if n in (0, num_layers) else n)
            for n in self.sweep_last_n
        ]
        expanded = []
        for variant in [*self.members, *swept]:
            if not self.seeds or variant.seed is not None:
                expanded.append(variant)
                continue
            expanded += [  # validated: the derived name must be a valid member name too
                MemberVariant.model_validate({**variant.model_dump(), "name": f"{variant.name}-s{seed}", "seed": seed})
                for seed in self.seeds
            ]
        return expanded

    def member_config(self, variant: MemberVariant) -> FinetuneConfig:
        overrides = {
            key: getattr(variant, key)
            for key in ("learning_rate", "epochs", "batch_size", "seed")
            if getattr(variant, key) is not None
        }
        if variant.batch_size is not None:
            overrides["batch_sizes"] = None  # the member asked for one constant size
        return FinetuneConfig(
            name=variant.name,
            output_dir=self.output_dir,
            data=self.data,
            features=self.features,
            model=ModelConfig(**self.model.model_dump(), **variant.model_dump(include=set(Freezing.model_fields))),
            training=self.training.model_copy(update=overrides),
        )

    @property
    def weights(self) -> dict[str, float] | None:
        """Soft-vote weights given in the config (members without one weigh 1), or None: none given."""
        variants = self.variants()
        if all(variant.weight is None for variant in variants):
            return None
        return {variant.name: 1.0 if variant.weight is None else variant.weight for variant in variants}


# SSAST (Gong et al., AAAI 2022) masks 400 of the 512 16x16 patches of a 1024-frame, 128-bin input.
SSAST_MASK_RATIO = 400 / 512


class PretrainDataConfig(_Section):
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


class PretrainModelConfig(_Section):
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


class ObjectiveConfig(_Section):
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


class PretrainTrainingConfig(_Section):
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


class PretrainConfig(_RunConfig):
    name: MemberName = Field(description="Encoder name: published to OUTPUT_DIR/ssl/NAME/, the --ssl-checkpoint to fine-tune from.")
    output_dir: Location = Field(
        Path("ensemble"), description="Root of published encoders (OUTPUT_DIR/ssl/), beside the members' best/."
    )
    work_dir: OptionalLocation = Field(
        None, description="Trainer checkpoints and logs; default OUTPUT_DIR/ssl-runs/NAME/."
    )
    data: PretrainDataConfig
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    model: PretrainModelConfig = Field(default_factory=PretrainModelConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    training: PretrainTrainingConfig = Field(default_factory=PretrainTrainingConfig)

    @property
    def run_work_dir(self) -> Path:
        return self.work_dir if self.work_dir is not None else self.output_dir / "ssl-runs" / self.name


class PredictConfig(_Section):
    model_path: PublishedLocation = Field(description="A published member folder, or an ensemble folder (OUTPUT_DIR/best/).")
    input_path: Location = Field(description="A .wav file, or a folder searched recursively for .wav files.")
    output_csv: Location = Field(Path("predictions.csv"), description="Where to write the predictions.")
    batch_size: int = Field(32, ge=1, le=65_536, description="Clips per forward pass.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' uses CUDA when available.")
    skip_bad_files: bool = Field(False, description="Skip unreadable clips (logged) instead of stopping.")


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_preset(path: Path) -> dict[str, Any]:
    """Read a YAML (or JSON) preset into a plain dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file; pass a YAML preset such as deployments/presets/notebook.yaml")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"--config {path}: not valid YAML ({error})") from error
    if not isinstance(loaded, dict):
        raise ConfigError(f"--config {path}: expected a mapping of sections at the top level, got {type(loaded).__name__}")
    return loaded


def load_config(
    config_class: type[ConfigT], preset: Path | None = None, overrides: dict[str, Any] | None = None
) -> ConfigT:
    """Build a config from an optional preset plus overrides; errors name the parameter."""
    raw = read_preset(preset) if preset is not None else {}
    raw = deep_merge(raw, overrides or {})
    try:
        return config_class.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source=str(preset) if preset else "arguments")) from error


def load_finetune_config(preset: Path | None = None, overrides: dict[str, Any] | None = None) -> FinetuneConfig:
    return load_config(FinetuneConfig, preset, overrides)


# pydantic names the member of a union that refused a value in the error's location ('constrained-int',
# "literal['auto']", 'int', ...); field names here are plain identifiers, so these tell them apart.
_UNION_MEMBER = re.compile(r"[\[\]'-]|^(int|float|str|bool|none|list|dict)$")


def format_validation_error(error: ValidationError, source: str) -> str:
    """One line per field: the refusals of a union's members (e.g. an int >= 0 or 'auto') are joined with 'or'."""
    fields: dict[str, tuple[list[str], str]] = {}
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"] if not _UNION_MEMBER.search(str(part))) or "(top level)"
        found = f" (got {item['input']!r})" if "input" in item and not isinstance(item["input"], dict) else ""
        messages, _ = fields.setdefault(where, ([], found))
        messages.append(item["msg"])
    lines = [f"invalid configuration ({source}):"]
    lines += [f"  - {where}: {', or '.join(messages)}{found}" for where, (messages, found) in fields.items()]
    return "\n".join(lines)
