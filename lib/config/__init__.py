"""Typed run configuration: one nested pydantic model per flow, which Prefect renders as the run form.

The CLI builds it from a YAML preset plus flag overrides (loading), and it is written beside every published
model. Import from here; base holds what sections share, sections the parts, runs the whole-run configs.
"""

from lib.config.base import (
    LOCATION,
    MULTI_LABEL_METRICS,
    SUMMARY_METRICS,
    MemberName,
    RunConfig,
    Section,
    tagged,
)
from lib.config.data import DataConfig
from lib.config.loading import deep_merge, format_validation_error, load_config, read_preset
from lib.config.pretraining import (
    SSAST_MASK_RATIO,
    ObjectiveConfig,
    PretrainDataConfig,
    PretrainModelConfig,
    PretrainTrainingConfig,
)
from lib.config.runs import (
    CrossvalConfig,
    EnsembleConfig,
    FinetuneConfig,
    MemberVariant,
    PredictConfig,
    PretrainConfig,
)
from lib.config.sections import (
    AugmentationConfig,
    EncoderConfig,
    EnsembleModelConfig,
    FeatureConfig,
    Freezing,
    ModelConfig,
    TaskConfig,
    TrainingConfig,
    TrainingSettings,
)

__all__ = [
    "LOCATION", "MULTI_LABEL_METRICS", "SSAST_MASK_RATIO", "SUMMARY_METRICS", "AugmentationConfig", "CrossvalConfig",
    "DataConfig", "EncoderConfig", "EnsembleConfig", "EnsembleModelConfig", "FeatureConfig", "FinetuneConfig",
    "Freezing", "MemberName", "MemberVariant", "ModelConfig", "ObjectiveConfig", "PredictConfig", "PretrainConfig",
    "PretrainDataConfig", "PretrainModelConfig", "PretrainTrainingConfig", "RunConfig", "Section", "TaskConfig",
    "TrainingConfig", "TrainingSettings", "deep_merge", "format_validation_error", "load_config",
    "read_preset", "tagged",
]
