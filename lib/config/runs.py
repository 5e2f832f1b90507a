"""Whole-run configs, one per flow (a flow's one argument): fine-tune, ensemble, pretrain, predict."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from lib.config.base import (
    MULTI_LABEL_METRICS,
    SUMMARY_METRICS,
    Location,
    MemberName,
    OptionalLocation,
    PublishedLocation,
    RunConfig,
    Section,
    WaitForWorkDir,
)
from lib.config.data import DataConfig, with_dataset_features
from lib.config.pretraining import ObjectiveConfig, PretrainDataConfig, PretrainModelConfig, PretrainTrainingConfig
from lib.config.sections import (
    EncoderConfig,
    EnsembleModelConfig,
    FeatureConfig,
    Freezing,
    ModelConfig,
    TrainingConfig,
)
from lib.core.layout import RUNS_FOLDER, SSL_RUNS_FOLDER


def with_task_metric(raw: object) -> object:
    """A run config's raw input with the best-epoch metric a multi-label task is judged by, mAP, where it names none
    (a single-label run keeps the default, accuracy). Before validation: nothing the caller passed is changed."""
    if not isinstance(raw, dict):
        return raw
    model, training = raw.get("model"), raw.get("training", {})
    task = model.get("task") if isinstance(model, dict) else getattr(model, "task", None)
    if task != "multi_label":
        return raw
    if isinstance(training, dict) and "metric_for_best_model" not in training:
        return {**raw, "training": {**training, "metric_for_best_model": "map"}}
    if isinstance(training, TrainingConfig) and "metric_for_best_model" not in training.model_fields_set:
        return {**raw, "training": training.model_copy(update={"metric_for_best_model": "map"})}
    return raw


def check_task_settings(config: FinetuneConfig | EnsembleConfig) -> FinetuneConfig | EnsembleConfig:
    """The best-epoch metric and the thresholds must be the task's, and mixup is single-label only."""
    model, training = config.model, config.training
    metric = training.metric_for_best_model
    if model.multi_label and metric in SUMMARY_METRICS:
        raise ValueError(
            f"training.metric_for_best_model {metric!r} is a single-label metric, and model.task is multi_label: "
            f"use one of {', '.join(MULTI_LABEL_METRICS)} or loss"
        )
    if model.multi_label and training.augmentation.mixup_probability:
        raise ValueError(
            "training.augmentation.mixup_probability: mixup is not supported with model.task multi_label yet; set it "
            "to 0"
        )
    if not model.multi_label and model.thresholds != "per_class":
        raise ValueError(
            f"model.thresholds {model.thresholds!r}: thresholds are a multi-label task's (a single-label model "
            "predicts its most probable class): set model.task to multi_label, or remove model.thresholds"
        )
    if not model.multi_label and metric in MULTI_LABEL_METRICS:
        raise ValueError(
            f"training.metric_for_best_model {metric!r} is a multi-label metric: set model.task to multi_label, or "
            f"use one of {', '.join(SUMMARY_METRICS)} or loss"
        )
    return config


class FinetuneConfig(RunConfig):
    name: MemberName = Field(
        description="Member name (the notebook's postfix): published to OUTPUT_DIR/best/NAME/.",
    )
    output_dir: Location = Field(
        Path("ensemble"),
        description="Root of published members, OUTPUT_DIR/best/ (default ensemble: the notebook's output_path).",
    )
    work_dir: OptionalLocation = Field(
        None, description="Trainer checkpoints and logs (default null: ours, OUTPUT_DIR/runs/NAME/)."
    )
    wait_for_work_dir: WaitForWorkDir = False
    data: DataConfig
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    model: ModelConfig
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    _dataset_features = model_validator(mode="before")(with_dataset_features)
    _task_metric = model_validator(mode="before")(with_task_metric)
    _task_settings = model_validator(mode="after")(check_task_settings)

    @property
    def run_work_dir(self) -> Path:
        return self.work_dir if self.work_dir is not None else self.output_dir / RUNS_FOLDER / self.name


class CrossvalConfig(FinetuneConfig):
    """One member per fold of the dataset with one recipe: the protocol's mean and spread over the folds."""

    name: MemberName = Field(
        description="Cross-validation name: fold N's member is published to OUTPUT_DIR/best/NAME-fold-N/.",
    )
    output_dir: Location = Field(
        Path("crossval"),
        description=(
            "Root of the fold members, OUTPUT_DIR/best/, and crossval.json (default crossval: ours, apart from the "
            "ensemble's folder, so that predict on OUTPUT_DIR/best/ votes the fold members alone)."
        ),
    )
    dispatch: Literal["in_process", "deployments"] = Field(
        "in_process",
        description=(
            "'in_process' trains the folds one after another in this flow run, on one scan and one feature cache; "
            "'deployments' starts each fold as a run of member_deployment on the work pool, which scans and builds "
            "the features of its fold itself (default 'in_process': ours, it needs no deployed member flow)."
        ),
    )
    member_deployment: str = Field(
        "astft-finetune/member", description=(
            "Deployment (flow-name/deployment-name) that trains one fold (default: the member deployment of "
            "deployments/prefect.yaml)."
        ),
    )

    def fold_config(self, number: int) -> FinetuneConfig:
        """Fold number's member: validated on that fold, trained on the others, in a work dir of its own."""
        values = self.model_dump(exclude={"dispatch", "member_deployment"})
        values["name"] = f"{self.name}-fold-{number}"
        values["data"]["fold"] = number
        if self.work_dir is not None:
            values["work_dir"] = self.work_dir / f"fold-{number}"
        return FinetuneConfig.model_validate(values)


class MemberVariant(Freezing):
    """One ensemble member: a freezing variant plus optional training overrides."""

    name: MemberName = Field(description="Member name (folder under best/).")
    learning_rate: float | None = Field(
        None, gt=0, le=1, description="Override training.learning_rate (default null: the ensemble's)."
    )
    epochs: int | None = Field(
        None, ge=1, le=100_000, description="Override training.epochs (default null: the ensemble's)."
    )
    batch_size: int | None = Field(
        None, ge=1, le=65_536, description=(
            "Override training.batch_size with a constant size that replaces batch_sizes (default null: the "
            "ensemble's)."
        ),
    )
    seed: int | None = Field(
        None, ge=0, le=2**32 - 1, description="Override training.seed (default null: the ensemble's, or its seeds)."
    )
    weight: float | None = Field(
        None,
        gt=0,
        le=1000,
        description=(
            "Fixed weight of this member in the soft vote: when any member sets one, these weights replace the "
            "selection, members without one weighing 1 (default null: ensemble.selection decides)."
        ),
    )


class EnsembleConfig(Section):
    output_dir: Location = Field(
        Path("ensemble"),
        description="Members go to OUTPUT_DIR/best/MEMBER/ (default ensemble: the notebook's output_path).",
    )
    data: DataConfig
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    model: EnsembleModelConfig
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    _dataset_features = model_validator(mode="before")(with_dataset_features)
    _task_metric = model_validator(mode="before")(with_task_metric)
    _task_settings = model_validator(mode="after")(check_task_settings)
    members: list[MemberVariant] = Field(
        default_factory=list,
        max_length=256,
        description=(
            "The variants to train; sweep_last_n and seeds add more (default empty: ours, list members here or "
            "give sweep_last_n)."
        ),
    )
    sweep_last_n: list[Annotated[int, Field(ge=0, le=512)]] = Field(
        default_factory=list,
        max_length=256,
        description=(
            "One member per value N, named last-N: 0 trains the head only, N the last N encoder layers and the "
            "head, and the encoder's layer count L the full network (e.g. 0,2,4,6,12 for AST-base, L = 12), "
            "checked before any work (default empty: ours, no sweep)."
        ),
    )
    seeds: list[Annotated[int, Field(ge=0, le=2**32 - 1)]] = Field(
        default_factory=list,
        max_length=256,
        description=(
            "Train every member that sets no seed of its own once per seed, named NAME-sSEED (e.g. last-4-s2) "
            "(default empty: ours, each member trains once, with training.seed)."
        ),
    )
    selection: Literal["all", "greedy"] = Field(
        "greedy",
        description=(
            "How members are weighted in the soft vote of temperature-calibrated probabilities: 'all' equally; "
            "'greedy' by forward selection with replacement on validation NLL (Caruana et al., 2004), the "
            "counts becoming the weights; member weights given in the config replace either (default 'greedy': "
            "ours, so a member that does not lower the NLL gets no weight)."
        ),
    )
    dispatch: Literal["in_process", "deployments"] = Field(
        "in_process",
        description=(
            "'in_process' trains members one after another in this flow run; 'deployments' starts each "
            "member as a run of member_deployment on the work pool, in parallel across its workers (default "
            "'in_process': ours, it needs no deployed member flow)."
        ),
    )
    member_deployment: str = Field(
        "astft-finetune/member", description=(
            "Deployment (flow-name/deployment-name) that trains one member (default: the member deployment of "
            "deployments/prefect.yaml)."
        ),
    )

    @field_validator("model", mode="before")
    @classmethod
    def _encoder_config(cls, value: object) -> object:
        # an EncoderConfig, as this field took before it had the task: its fields, with the default task
        return value.model_dump() if isinstance(value, EncoderConfig) else value

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
        num_layers a sweep value is taken as last-N (lib.recipes.finetune.plan_ensemble passes it, after checking
        the bound).
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


class PretrainConfig(RunConfig):
    name: MemberName = Field(
        description="Encoder name: published to OUTPUT_DIR/ssl/NAME/, the --ssl-checkpoint to fine-tune from."
    )
    output_dir: Location = Field(
        Path("ensemble"), description=(
            "Root of published encoders, OUTPUT_DIR/ssl/ (default ensemble: ours, the fine-tuning default, so "
            "encoders sit beside the members' best/)."
        ),
    )
    work_dir: OptionalLocation = Field(
        None, description="Trainer checkpoints and logs (default null: ours, OUTPUT_DIR/ssl-runs/NAME/)."
    )
    wait_for_work_dir: WaitForWorkDir = False
    data: PretrainDataConfig
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    model: PretrainModelConfig = Field(default_factory=PretrainModelConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    training: PretrainTrainingConfig = Field(default_factory=PretrainTrainingConfig)

    @property
    def run_work_dir(self) -> Path:
        return self.work_dir if self.work_dir is not None else self.output_dir / SSL_RUNS_FOLDER / self.name


class PredictConfig(Section):
    model_path: PublishedLocation = Field(
        description="A published member folder, or an ensemble folder (OUTPUT_DIR/best/)."
    )
    input_path: Location = Field(description="A .wav file, or a folder searched recursively for .wav files.")
    output_csv: Location = Field(
        Path("predictions.csv"),
        description="Where to write the predictions (default predictions.csv: ours, in the working directory).",
    )
    batch_size: int = Field(
        32, ge=1, le=65_536, description="Clips per forward pass (default 32: project default, reason not recorded)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto' uses CUDA when available (default 'auto': ours, as training.device's)."
    )
    backend: Literal["torch", "onnxruntime"] = Field(
        "torch",
        description="'onnxruntime' runs the graph that astft export wrote into the model folder (probabilities.onnx) "
        "instead of PyTorch; the same labels (default 'torch': ours).",
    )
    skip_bad_files: bool = Field(
        False, description=(
            "Skip unreadable clips (logged) instead of stopping (default false: ours, so that no clip goes "
            "unpredicted unnoticed)."
        ),
    )
