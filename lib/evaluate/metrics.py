"""Classification metrics (scikit-learn): the Trainer's per-epoch metrics and the final report (a multi-label
task's are lib.evaluate.multilabel's)."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)

from lib.evaluate import multilabel


def summary_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Accuracy, weighted precision/recall/F1 and balanced accuracy: lib.config.SUMMARY_METRICS."""
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predictions, average="weighted", zero_division=0
    )
    with warnings.catch_warnings():
        # A split without some class (a small fold): balanced accuracy averages the recall of the classes it has,
        # which is the figure wanted; scikit-learn's warning about the others would only reach the terminal.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced = float(balanced_accuracy_score(labels, predictions))
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "balanced_accuracy": balanced,
    }


def compute_metrics(eval_prediction) -> dict[str, float]:
    """Trainer hook: logits -> summary metrics (a multi-label task's, for multi-hot labels)."""
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    if multilabel.is_multi_label(labels):
        return multilabel.epoch_metrics(logits, labels)
    return summary_metrics(np.asarray(labels), np.argmax(logits, axis=-1))


def detailed_report(labels: np.ndarray, predictions: np.ndarray, label_names: list[str]) -> dict:
    """Per-class precision/recall/F1/support and the confusion matrix (rows: true, columns: predicted)."""
    indices = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=indices, average=None, zero_division=0
    )
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(label_names)
    }
    matrix = confusion_matrix(labels, predictions, labels=indices)
    return {"per_class": per_class, "confusion_matrix": {"labels": list(label_names), "matrix": matrix.tolist()}}


def headline_metric(metrics: dict) -> str:
    """The figure a task is compared by: accuracy, or a multi-label task's mAP (its metrics have a 'map')."""
    return "map" if "map" in metrics else "accuracy"


def format_metrics(metrics: dict) -> str:
    """The top-level scores of a metrics dict as one line, four decimals each: "accuracy 0.9500  f1 0.9487"."""
    return "  ".join(f"{key} {value:.4f}" for key, value in metrics.items() if isinstance(value, int | float))
