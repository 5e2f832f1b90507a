"""Member tasks: strip the SSL checkpoint, train, evaluate, publish. Thin wrappers around lib/."""

from __future__ import annotations

import re
import time
from pathlib import Path
from uuid import UUID

from httpx import HTTPError
from prefect import get_client, get_run_logger, task
from prefect.artifacts import (
    TableArtifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.actions import ArtifactUpdate
from prefect.runtime import flow_run

from lib.core.layout import (
    AVERAGE_PRECISION_PLOT_FILE,
    CONFUSION_PLOT_FILE,
    EVALUATION_DIR,
    PRECISION_RECALL_PLOT_FILE,
    THRESHOLDS_FILE,
    TRAINING_CURVES_FILE,
)
from lib.core.timing import format_phases, phase, record, recorded
from lib.data.features import FeatureCacheRef, has_test_split, load_split
from lib.data.scan import TEST_SPLIT
from lib.evaluate.evaluation import EvalResult, evaluate_model
from lib.evaluate.metrics import format_metrics
from lib.evaluate.plots import png_data_uri
from lib.model.checkpoint import EncoderRef, export_encoder, heads_text
from lib.recipes import finetune, member_publish
from lib.recipes.finetune import FinetunePlan, TrainOutcome
from lib.train.epochs import EpochRecord


def artifact_key(kind: str, name: str) -> str:
    """Prefect artifact keys allow only lowercase letters, digits and dashes."""
    return f"{kind}-" + (re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "unnamed")


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)  # None: not measured (pretraining: no masked patch scored)


class EpochReporter:
    """Shows a training member (or a pretraining encoder: kind="encoder") in the Prefect UI: a log line per
    epoch, its percent done (progress artifact) and a table artifact of its epochs so far, updated in place."""

    def __init__(self, name: str, kind: str = "member"):
        self.name, self.kind = name, kind
        # an encoder's artifacts are keyed apart from a member's of the same name
        self.key_name = name if kind == "member" else f"{kind}-{name}"
        self.logger = get_run_logger()
        self.rows: list[dict] = []
        self.progress: UUID | None = None
        self.table: UUID | None = None
        self._show(0.0)

    def __call__(self, record: EpochRecord) -> None:
        self.logger.info("%s %s: %s", self.kind, self.name, record.line())
        self.rows.append({
            "epoch": record.epoch, "batch_size": record.batch_size, "step": record.step,
            "train_loss": None if record.train_loss is None else round(record.train_loss, 4),
            **{f"train_{key}": _rounded(value) for key, value in record.train_metrics.items()},
            **{f"validation_{key}": _rounded(value) for key, value in record.metrics.items()},
            "seconds": round(record.seconds, 1),
        })
        self._show(100.0 * record.epoch / record.epochs)

    def _show(self, percent: float) -> None:
        try:  # the UI is a view: an API hiccup must not end hours of training
            if self.progress is None:
                self.progress = create_progress_artifact(
                    percent, key=artifact_key("progress", self.key_name),
                    description=f"Epochs of {self.kind} {self.name} done",
                )
            else:
                update_progress_artifact(self.progress, percent)
            if self.rows and self.table is None:
                self.table = create_table_artifact(
                    self.rows, key=artifact_key("epochs", self.key_name),
                    description=f"Epochs of {self.kind} {self.name} so far (validation metrics after each)",
                )
            elif self.rows:
                get_client(sync_client=True).update_artifact(
                    self.table, ArtifactUpdate(data=TableArtifact(table=self.rows).format(_sync=True))
                )
        except HTTPError as error:
            self.logger.warning("could not update the progress artifacts of %s %s: %s", self.kind, self.name, error)


def member_markdown(plan: FinetunePlan, published: Path, outcome: TrainOutcome, evaluation: EvalResult) -> str:
    """The member-<name> artifact: where it went, its validation (and test) metrics and its two plots (data URIs)."""
    test = evaluation.test_metrics
    rows = "\n".join(
        f"| {key} | {value:.4f} |" + (f" {test[key]:.4f} |" if test else "")
        for key, value in evaluation.metrics.items()
    )
    multi_label = plan.config.model.multi_label
    fitted = (f"thresholds ({plan.config.model.thresholds}) fitted on validation, in {THRESHOLDS_FILE}" if multi_label
              else f"temperature {evaluation.temperature:.3f} fitted on validation")
    figures = ((("Average precision per class (validation)", AVERAGE_PRECISION_PLOT_FILE),
                ("Precision-recall (validation)", PRECISION_RECALL_PLOT_FILE)) if multi_label
               else (("Confusion matrix (validation)", CONFUSION_PLOT_FILE),))
    return (
        f"## Member `{plan.config.name}` ({plan.config.model.freezing})\n\n"
        f"Published to `{published}` (best epoch {outcome.best_epoch}, {fitted}).\n\n"
        "| metric | validation |" + (" test |" if test else "") + "\n|---|---|" + ("---|" if test else "")
        + f"\n{rows}\n\n"
        f"### Training curves\n\n![training curves]({png_data_uri(published / TRAINING_CURVES_FILE)})\n\n"
        + "".join(f"### {title}\n\n![{title}]({png_data_uri(published / file)})\n\n" for title, file in figures)
    )


@task(name="prepare-encoder", cache_policy=NO_CACHE)
def prepare_encoder(plan: FinetunePlan) -> EncoderRef:
    """Strip the SSL checkpoint's projector/decoder and fit its grid to max_frames, once per checkpoint."""
    model = plan.config.model
    with phase("encoder"):
        ref, hit = export_encoder(
            model.ssl_checkpoint, model.base_config, plan.config.data.cache_dir, plan.feature_params.max_frames
        )
    grid = ref.report.position_grid
    get_run_logger().info(
        "%s encoder %s (config: %s; dropped SSL heads %s; patch grid %s -> %s for %d frames: %s)",
        "reused" if hit else "stripped", ref.path, ref.report.config_source, heads_text(ref.report.dropped),
        grid.checkpoint, grid.encoder, grid.max_frames, grid.adaptation,
    )
    return ref


@task(name="train-member", cache_policy=NO_CACHE)
def train_member(plan: FinetunePlan, features: FeatureCacheRef, encoder: EncoderRef) -> TrainOutcome:
    """Attach the head, freeze per variant and fine-tune with HF Trainer; resumes an interrupted run."""
    started = time.perf_counter()
    outcome = finetune.train_member(plan, features, encoder, on_epoch=EpochReporter(plan.config.name))
    # the classifier, its freezing and the trunk cache: what the Trainer's own phases leave of the task's time
    record("model set-up", time.perf_counter() - started - sum(outcome.phases.values()))
    for name, seconds in outcome.phases.items():
        record(name, seconds)
    return outcome


@task(name="evaluate-member", cache_policy=NO_CACHE)
def evaluate_member(plan: FinetunePlan, features: FeatureCacheRef, outcome: TrainOutcome) -> EvalResult:
    """Reload the best model, score it on validation (and test) and fit its temperature on validation."""
    with phase("evaluation"):
        result = evaluate_model(
            Path(outcome.best_model_dir),
            load_split(features, "validation"),
            features.label_names,
            plan.config.training.batch_size,
            plan.runtime,
            Path(outcome.work_dir) / EVALUATION_DIR,
            extra={
                "best_epoch": outcome.best_epoch,
                "metric_for_best_model": outcome.metric,
                "skipped_files": len(features.skipped),
            },
            test_dataset=load_split(features, TEST_SPLIT) if has_test_split(features) else None,
            thresholds=plan.config.model.thresholds,
        )
    logger = get_run_logger()
    if features.multi_label:
        logger.info("validation %s; thresholds fitted on validation (%s)", format_metrics(result.metrics),
                    plan.config.model.thresholds)
    else:
        logger.info("validation %s; temperature %.3f (fitted on validation)", format_metrics(result.metrics),
                    result.temperature)
    if result.test_metrics is not None:
        logger.info("test %s (reported only)", format_metrics(result.test_metrics))
    return result


def retry_on_io_error(task, task_run, state) -> bool:
    """Retry a publish only on an I/O error (a full disk, a network share): anything else is not transient."""
    try:
        state.result()
    except OSError:
        return True
    except Exception:  # noqa: BLE001 - anything else is not transient
        return False
    return False


@task(
    name="publish-member", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=retry_on_io_error
)
def publish_member(
    plan: FinetunePlan, features: FeatureCacheRef, encoder: EncoderRef, outcome: TrainOutcome, evaluation: EvalResult
) -> str:
    """Copy model, reports, plots and run config to <output>/best/<name>/ atomically; show them in the UI."""
    destination = member_publish.publish_member(
        plan, features, encoder, outcome, evaluation, str(flow_run.id) if flow_run.id else None
    )
    logger = get_run_logger()
    logger.info("published %s", destination)
    logger.info("where the time went: %s", format_phases(recorded()))
    try:  # the member is published: a failing view of it must not fail it
        create_markdown_artifact(
            markdown=member_markdown(plan, destination, outcome, evaluation),
            key=artifact_key("member", plan.config.name),
            description="Validation metrics and plots of the published member",
        )
    except HTTPError as error:
        logger.warning("could not create the artifact of member %s: %s", plan.config.name, error)
    return str(destination)
