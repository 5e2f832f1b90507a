"""What every config section shares: strict validation, location tags (resolved, left out of fingerprints), field types used by several sections."""

from __future__ import annotations

from functools import reduce
from operator import getitem
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
)

from lib.core.hashing import digest
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


def tagged(model: type[BaseModel], *tags: str) -> list[tuple[str, ...]]:
    """Key paths, through nested sections, of the fields that carry any of tags."""
    paths: list[tuple[str, ...]] = []
    for name, field in model.model_fields.items():
        if any(tag in field.metadata for tag in tags):
            paths.append((name,))
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            paths += [(name, *inner) for inner in tagged(field.annotation, *tags)]
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


class Section(BaseModel):
    # A typo in a preset must fail loudly instead of silently keeping a default; a NaN or infinite
    # float (YAML's .nan / .inf) would pass most bounds and e.g. turn every normalised feature into NaN.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, allow_inf_nan=False, json_schema_extra=_bounds_in_descriptions
    )

    def resolved(self) -> Self:
        """Same config with every LOCATION field made absolute, so tasks and caches agree on them."""
        data = self.model_dump()
        links = tagged(type(self), KEEP_LINK)
        for *sections, name in tagged(type(self), LOCATION):
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


class RunConfig(Section):
    """A whole run's parameters (a flow's one argument), whose fingerprint keys its checkpoints."""

    def fingerprint(self) -> str:
        """Hash of the settings that can change the trained weights (every field but LOCATION and NO_EFFECT_ON_WEIGHTS)."""
        payload = self.model_dump(mode="json")
        for *sections, name in tagged(type(self), LOCATION, NO_EFFECT_ON_WEIGHTS):
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
