"""Publishing a fine-tuned member: the best model, its reports and plots, its manifest (member.json, the label map,
the run config) and its model card, to <output_dir>/best/<name> (lib.publish.folder does the atomic switch).

The last stage of the fine-tuning recipe (lib.recipes.finetune), kept apart: what a member says about itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lib.core.layout import (
    AVERAGE_PRECISION_PLOT_FILE,
    CARD_FILE,
    CONFUSION_FILE,
    CONFUSION_PLOT_FILE,
    LABEL_MAP_FILE,
    LOG_HISTORY_FILE,
    MEMBER_FILE,
    METRICS_FILE,
    PRECISION_RECALL_PLOT_FILE,
    PREDICTIONS_FILE,
    REPORT_FILES,
    RUN_CONFIG_FILE,
    TRAINING_CURVES_FILE,
)
from lib.core.timing import phase, recorded
from lib.data.features import FeatureCacheRef
from lib.evaluate.evaluation import EvalResult
from lib.evaluate.multilabel import micro_point, sigmoid
from lib.evaluate.plots import average_precision_plot, confusion_matrix_plot, precision_recall_plot, training_curves
from lib.model.checkpoint import EncoderRef
from lib.publish.card import member_card
from lib.publish.folder import PublishSpec, publish_folder, trained_by
from lib.recipes.finetune import FinetunePlan, TrainOutcome


def publish_member(
    plan: FinetunePlan,
    features: FeatureCacheRef,
    encoder: EncoderRef,
    outcome: TrainOutcome,
    evaluation: EvalResult,
    flow_run_id: str | None = None,
) -> Path:
    """Publish the best model, its evaluation reports, train log, plots and manifest to <output_dir>/best/<name>."""
    report_dir = Path(evaluation.report_dir)
    sources = {
        "": Path(outcome.best_model_dir),
        **{report: report_dir / report for report in REPORT_FILES if (report_dir / report).is_file()},
        Path(outcome.train_log).name: Path(outcome.train_log),
    }
    with phase("plots"):
        plots = member_plots(outcome, report_dir)
    manifest = member_manifest(plan, features, encoder, outcome, flow_run_id)
    card = member_card(plan.config.name, report_dir, manifest[RUN_CONFIG_FILE], manifest[MEMBER_FILE],
                       features.label_names, features.num_clips, plan.publish_slot)
    with phase("publish"):
        return publish_folder(PublishSpec(
            root=plan.publish_root,
            name=plan.config.name,
            kind="member",
            sources=sources | plots,
            json_files=manifest,
            text_files={CARD_FILE: card},
            finite=(Path(outcome.best_model_dir), report_dir),
        ))


def member_plots(outcome: TrainOutcome, report_dir: Path) -> dict[str, Path]:
    """training_curves.png (from the work dir's log_history.json) and confusion_matrix.png, or a multi-label
    member's average_precision.png and precision_recall.png, written into report_dir."""
    report_dir = Path(report_dir)
    history = json.loads((Path(outcome.work_dir) / LOG_HISTORY_FILE).read_text())
    plots = {TRAINING_CURVES_FILE: training_curves(
        history, outcome.metric, outcome.best_epoch, report_dir / TRAINING_CURVES_FILE
    )}
    metrics = json.loads((report_dir / METRICS_FILE).read_text())
    if metrics.get("task") == "multi_label":  # no confusion matrix: a figure per class instead
        return plots | multi_label_plots(report_dir, metrics)
    confusion = json.loads((report_dir / CONFUSION_FILE).read_text())
    return plots | {
        CONFUSION_PLOT_FILE: confusion_matrix_plot(
            confusion["matrix"], confusion["labels"], report_dir / CONFUSION_PLOT_FILE
        ),
    }


def multi_label_plots(report_dir: Path, metrics: dict) -> dict[str, Path]:
    """Validation's per-class AP bars and precision-recall curve, the point the fitted thresholds operate at on it."""
    stored = np.load(report_dir / PREDICTIONS_FILE)
    per_class = metrics["per_class"]
    probabilities, labels = sigmoid(stored["logits"]), stored["labels"]
    operating = {"at the fitted thresholds": micro_point(
        labels, probabilities, np.array([entry["threshold"] for entry in per_class.values()])
    )}
    return {
        AVERAGE_PRECISION_PLOT_FILE: average_precision_plot(
            per_class, report_dir / AVERAGE_PRECISION_PLOT_FILE,
            f"average precision per class (validation; mAP {metrics['map']:.4f}, chance {metrics['chance_map']:.4f})",
        ),
        PRECISION_RECALL_PLOT_FILE: precision_recall_plot(
            {"validation": (probabilities, labels)}, report_dir / PRECISION_RECALL_PLOT_FILE,
            operating,
        ),
    }


def member_manifest(
    plan: FinetunePlan, features: FeatureCacheRef, encoder: EncoderRef, outcome: TrainOutcome, flow_run_id: str | None
) -> dict[str, dict]:
    """The JSON files a member describes itself with: run config, label map, and member.json (how it was made)."""
    config, labels = plan.config, features.label_names
    return {
        RUN_CONFIG_FILE: config.model_dump(mode="json"),
        LABEL_MAP_FILE: {
            "label2id": {label: i for i, label in enumerate(labels)},
            "id2label": {str(i): label for i, label in enumerate(labels)},
        },
        MEMBER_FILE: {
            "name": config.name,
            "freezing": config.model.freezing,
            "parameters": outcome.parameters,
            "feature_params": features.params.model_dump(),
            "feature_cache_key": features.key,
            "skipped_files": features.skipped,
            "encoder": encoder.report.model_dump(),
            # what the checkpoint held, by content (its files' stats), since its folder may be re-published
            "encoder_cache_key": Path(encoder.path).name,
            "training": outcome.model_dump(exclude={"parameters", "phases"}),
            # seconds per phase up to the plots (lib.core.timing); publishing and exit are in the run's log
            "phases": recorded(),
            "run_fingerprint": plan.fingerprint,
            "trained_by": trained_by(flow_run_id),
        },
    }
