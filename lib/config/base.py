"""What every config section shares: strict validation, location tags (resolved, left out of fingerprints),
field types used by several sections."""

from __future__ import annotations

from functools import reduce
from operator import getitem
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from lib.core.hashing import digest
from lib.core.layout import RESERVED_MEMBER_NAMES

# AudioSet statistics used by the AST authors (and transformers' ASTFeatureExtractor defaults).
AUDIOSET_MEAN = -4.2677393


AUDIOSET_STD = 4.5689974


# What lib.evaluate.metrics.summary_metrics reports for every validation pass; any of them, or the loss,
# picks the best epoch.
SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "f1", "precision", "recall")


# A multi-label task's (model.task: multi_label): mean average precision over the classes, and F1 over every
# (clip, class) decision (micro) or averaged over the classes (macro), at the fitted thresholds.
MULTI_LABEL_METRICS = ("map", "micro_f1", "macro_f1")


MetricName = Literal[(*SUMMARY_METRICS, *MULTI_LABEL_METRICS, "loss")]


Task = Literal["single_label", "multi_label"]


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


# Field tags (Annotated metadata). Why: docs/decisions.md, "Locations are not part of the fingerprint".
LOCATION = "location"


# Changes how a run goes (its speed, its logs, which scan cache it uses), never the trained weights.
NO_EFFECT_ON_WEIGHTS = "no effect on weights"


# A field added after runs were made without it: at its default (what those runs did) it is left out of the
# fingerprint, so their work dirs stay resumable; its default must therefore never change.
OMITTED_AT_DEFAULT = "omitted from the fingerprint at its default"


def _empty_location_message(field: str | None) -> str:
    return (
        f"{field or 'a location'} must not be empty; pass a folder (or file) path: an empty one would silently "
        "mean the current folder"
    )


def _not_empty(value: object, info: ValidationInfo) -> object:
    """Refuse '' and whitespace, which Path() would take for the current folder ('--set data.train_dir=')."""
    if isinstance(value, str) and not value.strip():
        raise ValueError(_empty_location_message(info.field_name))
    return value


NOT_EMPTY = BeforeValidator(_not_empty)


Location = Annotated[Path, LOCATION, NOT_EMPTY]


# A location that may be a published link. Why: docs/decisions.md, "Published links are recorded by name".
KEEP_LINK = "keep link"


PublishedLocation = Annotated[Path, LOCATION, KEEP_LINK, NOT_EMPTY]


OptionalLocation = Annotated[Path | None, LOCATION, NOT_EMPTY]


# A list of locations (pretraining's data.data_dirs); Section also refuses empty items in any LOCATION list.
Locations = Annotated[list[Annotated[Path, NOT_EMPTY]], LOCATION]


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
    # why: docs/decisions.md, "Configs refuse unknown keys and non-finite floats"
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, allow_inf_nan=False, json_schema_extra=_bounds_in_descriptions
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_empty_location_in_lists(cls, value: object, info: ValidationInfo) -> object:
        """An empty item of a LOCATION list (data.data_dirs) is refused as the single locations are (NOT_EMPTY)."""
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and LOCATION in field.metadata and isinstance(value, list | tuple):
            for index, item in enumerate(value):
                if isinstance(item, str) and not item.strip():
                    raise ValueError(_empty_location_message(f"{info.field_name}[{index}]"))
        return value

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
        """Hash of the settings that can change the trained weights (all but LOCATION and NO_EFFECT_ON_WEIGHTS)."""
        payload = self.model_dump(mode="json")
        for *sections, name in tagged(type(self), LOCATION, NO_EFFECT_ON_WEIGHTS):
            del reduce(getitem, sections, payload)[name]
        for *sections, name in tagged(type(self), OMITTED_AT_DEFAULT):
            section = reduce(lambda model, key: model.model_fields[key].annotation, sections, type(self))
            values = reduce(getitem, sections, payload)
            if values[name] == section.model_fields[name].get_default(call_default_factory=True):
                del values[name]
        return digest(payload, 16)


# Field types that several sections share; why: docs/decisions.md, "Shared field types and default sources".
SkipBadFiles = Annotated[bool, Field(description=(
    "Skip unreadable or invalid clips (logged and counted) instead of stopping (default false: ours, so that no "
    "clip is left out unnoticed)."
))]


ScanFingerprint = Annotated[
    Literal["stat", "content"],
    NO_EFFECT_ON_WEIGHTS,
    Field(
        description=(
            "How the folder scan notices changed clips: 'stat' compares each clip's size and mtime (cheap), "
            "'content' also hashes every clip's bytes, catching edits that keep both (reads the whole dataset). "
            "Default 'stat': ours, cheap enough for every run."
        ),
    ),
]


# In data, not features: FeatureParams (every features field) is the feature cache's key.
FeatureWorkers = Annotated[int, NO_EFFECT_ON_WEIGHTS, Field(ge=0, le=1024, description=(
    "Processes that compute the feature cache, which is the same whatever the count; 0: one per usable CPU core "
    "(default 0: ours). Datasets under 256 clips are built in one process (at most one worker per 128 clips)."
))]


CacheDir = Annotated[Path, LOCATION, NOT_EMPTY, Field(description=(
    "Where folder scans, Arrow feature caches and stripped encoders are kept (default .astft-cache: ours, a "
    "hidden folder in the working directory)."
))]


# Bounds only: fine-tuning and pretraining default these differently, so each field describes itself.
Epochs = Annotated[int, Field(ge=1, le=100_000)]


LearningRate = Annotated[float, Field(gt=0, le=1)]


WeightDecay = Annotated[float, Field(ge=0, le=1)]


WarmupSteps = Annotated[float, Field(ge=0)]


GradientAccumulation = Annotated[int, Field(ge=1, le=4096)]


Precision = Annotated[Literal["auto", "fp32", "fp16", "bf16"], Field(description=(
    "'auto': bf16 (or fp16) mixed precision on CUDA, fp32 on CPU (default 'auto': ours; the notebook forced "
    "fp16, which transformers ignores on CPU)."
))]


Device = Annotated[Literal["auto", "cpu", "cuda"], Field(description=(
    "'auto' uses CUDA when available (default 'auto': as the notebook's Trainer did)."
))]


Seed = Annotated[int, Field(ge=0, le=2**32 - 1, description=(
    "Seed for weight init, shuffling, dropout and pretraining's masks (default 42: the notebook's random_seed)."
))]


Deterministic = Annotated[bool, Field(description=(
    "Deterministic cuDNN kernels, slower but reproducible (default true: the notebook's cudnn.deterministic)."
))]


# Speed settings. Why some are in the fingerprint: docs/decisions.md, "Speed settings and the fingerprint".
Attention = Annotated[Literal["sdpa", "eager"], Field(description=(
    "Attention kernel: 'sdpa' (torch's scaled_dot_product_attention, which picks a flash or memory-efficient "
    "kernel on CUDA) or 'eager' (matmul, softmax, matmul). Same function, different rounding (default 'sdpa': "
    "transformers' default for AST)."
))]


TF32 = Annotated[bool, Field(description=(
    "TF32 tensor-core matmuls for the float32 work on CUDA GPUs of the Ampere generation or newer; off on CPU "
    "and older GPUs whatever this says (default true: ours, the GPU speed-up HF Trainer users expect)."
))]


Optimizer = Annotated[Literal["auto", "adamw_torch_fused", "adamw_torch"], Field(description=(
    "AdamW implementation: 'auto' is the fused kernel (one launch per step on CUDA; torch has it on CPU too), "
    "'adamw_torch' the multi-tensor one (default 'auto': transformers' own default since torch 2.8, pinned here)."
))]


Compile = Annotated[bool, Field(description=(
    "torch.compile the model (Trainer's torch_compile): faster steps on a GPU after a compile of a minute or "
    "more, worth it for long runs (default false: Trainer's default)."
))]


PinMemory = Annotated[bool, NO_EFFECT_ON_WEIGHTS, Field(description=(
    "Page-locked DataLoader batches on CUDA, for faster copies to the GPU; off on CPU (default true: Trainer's "
    "dataloader_pin_memory default)."
))]


DataloaderWorkers = Annotated[
    Annotated[int, Field(ge=0, le=64)] | Literal["auto"],
    NO_EFFECT_ON_WEIGHTS,
    Field(description=(
        "DataLoader worker processes per training process. 'auto': none on CPU (training uses every core), on "
        "CUDA up to 4, one core per process left for the training loop (default 'auto': ours; the notebook "
        "used 4)."
    )),
]


SaveTotalLimit = Annotated[int, Field(ge=1, le=1000, description=(
    "Trainer checkpoints kept in the work dir (default 2: the notebook's save_total_limit)."
))]


WaitForWorkDir = Annotated[bool, NO_EFFECT_ON_WEIGHTS, Field(description=(
    "If another run is using this run's work dir (the same name), wait for it to end and then go on, instead of "
    "stopping with an error naming that run (default false: ours, a clash is usually a mistake)."
))]
Tensorboard = Annotated[bool, NO_EFFECT_ON_WEIGHTS, Field(description=(
    "Write TensorBoard logs, which need the 'tensorboard' extra (default false: the notebook's report_to='none')."
))]
