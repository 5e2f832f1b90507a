"""Member tasks: strip the SSL checkpoint, train, evaluate, publish. Thin wrappers around lib/."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.runtime import flow_run
from prefect.cache_policies import NO_CACHE

from lib.checkpoint import EncoderRef, export_encoder
from lib.config import ModelConfig
from lib.evaluation import EvalResult, evaluate_model
from lib.features import FeatureCacheRef, has_test_split, load_split
from lib.member import TrainOutcome
from lib.member import train_member as train_one_member
from lib.plan import RunPlan
from lib.scan import TEST_SPLIT
from lib.publish import publish_trained_member


@task(name="prepare-encoder", cache_policy=NO_CACHE)
def prepare_encoder(model: ModelConfig, cache_dir: Path, max_frames: int) -> EncoderRef:
    """Strip the SSL checkpoint's projector/decoder and fit its grid to max_frames, once per checkpoint."""
    ref, hit = export_encoder(model.ssl_checkpoint, model.base_config, Path(cache_dir), max_frames)
    grid = ref.report.position_grid
    get_run_logger().info(
        "%s encoder %s (config: %s; dropped SSL heads %s; patch grid %s -> %s for %d frames: %s)",
        "reused" if hit else "stripped", ref.path, ref.report.config_source, ref.report.dropped,
        grid.checkpoint, grid.encoder, grid.max_frames, grid.adaptation,
    )
    return ref


@task(name="train-member", cache_policy=NO_CACHE)
def train_member(plan: RunPlan, features: FeatureCacheRef, encoder: EncoderRef) -> TrainOutcome:
    """Attach the head, freeze per variant and fine-tune with HF Trainer; resumes an interrupted run."""
    return train_one_member(plan, features, encoder)


@task(name="evaluate-member", cache_policy=NO_CACHE)
def evaluate_member(plan: RunPlan, features: FeatureCacheRef, outcome: TrainOutcome) -> EvalResult:
    """Reload the best model, score it on validation (and test) and fit its temperature on validation."""
    result = evaluate_model(
        Path(outcome.best_model_dir),
        load_split(features, "validation"),
        features.label_names,
        plan.config.training.batch_size,
        plan.runtime,
        Path(outcome.work_dir) / "evaluation",
        extra={
            "best_epoch": outcome.best_epoch,
            "metric_for_best_model": outcome.metric,
            "skipped_files": len(features.skipped),
        },
        test_dataset=load_split(features, TEST_SPLIT) if has_test_split(features) else None,
    )
    logger = get_run_logger()
    logger.info("validation metrics: %s; temperature %.3f (fitted on validation)", result.metrics, result.temperature)
    if result.test_metrics is not None:
        logger.info("test metrics (reported only): %s", result.test_metrics)
    return result


def _retry_on_io_error(task, task_run, state) -> bool:
    try:
        state.result()
    except OSError:
        return True
    except Exception:  # noqa: BLE001 - anything else is not transient
        return False
    return False


@task(name="publish-member", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_on_io_error)
def publish(plan: RunPlan, features: FeatureCacheRef, encoder: EncoderRef, outcome: TrainOutcome, evaluation: EvalResult) -> str:
    """Copy model, feature-extractor config, metrics and run config to <output>/best/<name>/ atomically."""
    destination = publish_trained_member(
        plan, features, encoder, outcome, evaluation, str(flow_run.id) if flow_run.id else None
    )
    get_run_logger().info("published %s", destination)
    return str(destination)
