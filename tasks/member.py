"""Member tasks: strip the SSL checkpoint, train, evaluate, publish. Thin wrappers around lib/."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from prefect import get_run_logger, task
from prefect.runtime import flow_run
from prefect.cache_policies import NO_CACHE

from lib.checkpoint import EncoderRef, export_encoder
from lib.config import ModelConfig
from lib.evaluation import CONFUSION_FILE, METRICS_FILE, PREDICTIONS_FILE, EvalResult, evaluate_model
from lib.features import FeatureCacheRef, load_split
from lib.guards import check_finite_folder
from lib.launch import PARAMETER_COUNTS_FILE, train_member_distributed
from lib.launch import train_member as train_member_in_process
from lib.plan import RunPlan
from lib.publish import publish_member
from lib.training import TrainOutcome


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
    logger = get_run_logger()
    processes = plan.config.training.num_processes
    if processes > 1:
        logger.info("training member %s on %d processes with torchrun", plan.config.name, processes)
        outcome = train_member_distributed(plan, features, encoder, processes)
    else:
        outcome = train_member_in_process(plan, features, encoder)
    counts = json.loads((plan.work_dir / PARAMETER_COUNTS_FILE).read_text())
    logger.info(
        "variant %s: %d of %d parameters trained (%.1f%%), %s on %s; best %s=%s at epoch %s",
        plan.config.model.freezing, counts["trainable"], counts["total"], 100 * counts["trainable"] / counts["total"],
        outcome.precision, outcome.device, outcome.metric, outcome.best_metric, outcome.best_epoch,
    )
    trunk = outcome.trunk_cache
    if trunk is not None:
        logger.info("trunk cache %s: %s", f"used (K={trunk.layers}, {trunk.dtype}, {trunk.path})" if trunk.used
                    else "not used", trunk.reason)
    return outcome


@task(name="evaluate-member", cache_policy=NO_CACHE)
def evaluate_member(plan: RunPlan, features: FeatureCacheRef, outcome: TrainOutcome) -> EvalResult:
    """Reload the best model and score it on validation: summary, per-class metrics, confusion matrix."""
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
    )
    get_run_logger().info("validation metrics: %s", result.metrics)
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
    config = plan.config
    work_dir = Path(outcome.work_dir)
    report_dir = Path(evaluation.report_dir)
    counts = json.loads((work_dir / PARAMETER_COUNTS_FILE).read_text())
    # Last line of defence: however it came about, a NaN member never replaces the published one.
    for folder in (Path(outcome.best_model_dir), report_dir):
        check_finite_folder(folder, f"member {config.name}", f"not published; {plan.best_root / config.name} is left as it was")
    destination = publish_member(
        plan.best_root,
        config.name,
        sources={
            "": Path(outcome.best_model_dir),
            METRICS_FILE: report_dir / METRICS_FILE,
            CONFUSION_FILE: report_dir / CONFUSION_FILE,
            PREDICTIONS_FILE: report_dir / PREDICTIONS_FILE,
            Path(outcome.train_log).name: Path(outcome.train_log),
        },
        json_files={
            "run_config.json": config.model_dump(mode="json"),
            "label_map.json": {
                "label2id": {name: i for i, name in enumerate(features.label_names)},
                "id2label": {str(i): name for i, name in enumerate(features.label_names)},
            },
            "member.json": {
                "name": config.name,
                "freezing": config.model.freezing,
                "parameters": counts,
                "feature_params": features.params.model_dump(),
                "feature_cache_key": features.key,
                "skipped_files": features.skipped,
                "encoder": encoder.report.model_dump(),
                "training": outcome.model_dump(),
                "run_fingerprint": plan.fingerprint,
                "trained_by": {
                    "host": socket.gethostname(),
                    # set by Prefect workers for the flow runs they start; None for local runs
                    "worker": os.environ.get("PREFECT__WORKER_NAME"),
                    "flow_run_id": str(flow_run.id) if flow_run.id else None,
                },
            },
        },
    )
    get_run_logger().info("published %s", destination)
    return str(destination)
