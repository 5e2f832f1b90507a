"""Multi-label scores (model.task multi_label): sigmoid probabilities, mAP and per-class AP, thresholds fitted on
validation to the best F1, micro/macro F1 at them, and the loss greedy ensemble selection lowers (-mAP).

Labels are multi-hot rows (clips x classes of 0/1). scikit-learn gives average precision, the precision-recall
curve and F1; what it lacks is written here over numpy: fitting a threshold to a curve's best F1 (its
TunedThresholdClassifierCV refits an estimator, and fits one threshold for a binary task only).
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve

logger = logging.getLogger(__name__)

# A class without a positive validation clip has no curve to fit: it keeps the plain sigmoid's midpoint.
DEFAULT_THRESHOLD = 0.5
THRESHOLD_MODES = ("per_class", "global")
CALIBRATION_SKIPPED = (
    "temperature scaling calibrates one softmax over the classes, and a multi-label model has a sigmoid per class, "
    "whose probabilities the thresholds fitted on validation turn into labels"
)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def is_multi_label(labels: np.ndarray) -> bool:
    """Whether stored labels are multi-hot rows (clips x classes) rather than a class per clip."""
    return np.asarray(labels).ndim == 2


def average_precisions(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Each class's average precision; NaN for a class without a positive clip (it has no ranking to score)."""
    labels = np.asarray(labels) > 0.5
    scores = np.full(labels.shape[1], np.nan)
    for index in np.flatnonzero(labels.any(axis=0)):
        scores[index] = average_precision_score(labels[:, index], probabilities[:, index])
    return scores


def mean_average_precision(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """mAP: the mean of the per-class APs over the classes with a positive clip (AudioSet's figure); 0 if none has."""
    scores = average_precisions(labels, probabilities)
    return float(np.nanmean(scores)) if np.isfinite(scores).any() else 0.0


def chance_map(labels: np.ndarray) -> float:
    """The mAP of a ranking that knows nothing: each class's AP is then its share of positive clips."""
    labels = np.asarray(labels) > 0.5
    present = labels.any(axis=0)
    return float(labels.mean(axis=0)[present].mean()) if present.any() else 0.0


def _best_f1_threshold(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The probability threshold (predict positive at >= it) with the best F1 on these labels: halfway between the
    lowest score it keeps and the next lower one, so that a clip scored a hair lower elsewhere (another batch size,
    autocast) does not flip."""
    precision, recall, thresholds = precision_recall_curve(labels, probabilities)  # thresholds: increasing scores
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                   where=precision + recall > 0)[:-1]  # the curve's last point has no threshold
    if not len(thresholds):
        return DEFAULT_THRESHOLD
    best = int(np.argmax(f1))
    lower = thresholds[best - 1] if best else 0.0
    return float((thresholds[best] + lower) / 2)


def fit_thresholds(labels: np.ndarray, probabilities: np.ndarray, mode: str = "per_class") -> np.ndarray:
    """A threshold per class fitted on (validation) labels to the best F1: each class's own ('per_class'), or one
    for all, the best micro F1 ('global'). A class without a positive clip keeps DEFAULT_THRESHOLD (per_class)."""
    if mode not in THRESHOLD_MODES:
        raise ValueError(f"thresholds must be one of {THRESHOLD_MODES}, got {mode!r}")
    labels = np.asarray(labels) > 0.5
    if mode == "global":
        return np.full(labels.shape[1], _best_f1_threshold(labels.ravel(), probabilities.ravel()))
    return np.array([
        _best_f1_threshold(labels[:, index], probabilities[:, index]) if labels[:, index].any() else DEFAULT_THRESHOLD
        for index in range(labels.shape[1])
    ])


def predicted(probabilities: np.ndarray, thresholds: np.ndarray | float) -> np.ndarray:
    """The multi-hot predictions: each class at or above its threshold."""
    return np.asarray(probabilities) >= thresholds


def micro_point(labels: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray | float) -> tuple[float, float]:
    """(recall, precision) over every (clip, class) decision at the thresholds: a point on the micro curve."""
    truth, guesses = np.asarray(labels) > 0.5, predicted(probabilities, thresholds)
    hits = float((truth & guesses).sum())
    return hits / max(int(truth.sum()), 1), hits / max(int(guesses.sum()), 1)


def summary(labels: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray | float) -> dict[str, float]:
    """mAP, and micro/macro F1 at the thresholds: lib.config.MULTI_LABEL_METRICS. A class without a positive clip
    has no AP and no recall, so mAP and macro F1 both leave it out; micro F1 counts its false alarms."""
    truth, guesses = np.asarray(labels) > 0.5, predicted(probabilities, thresholds)
    present = truth.any(axis=0)
    return {
        "map": mean_average_precision(truth, probabilities),
        "micro_f1": float(f1_score(truth, guesses, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(truth[:, present], guesses[:, present], average="macro", zero_division=0))
        if present.any() else 0.0,
    }


def report(labels: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray, label_names: list[str]) -> dict:
    """summary, the chance mAP, the clip count, and per class: AP, threshold, precision, recall, F1, support (a class
    without a positive clip: AP, recall and F1 None, as are its precision where nothing was predicted either)."""
    truth, guesses = np.asarray(labels) > 0.5, predicted(probabilities, thresholds)
    scores = average_precisions(truth, probabilities)
    hits = (truth & guesses).sum(axis=0)
    per_class = {}
    for index, name in enumerate(label_names):
        chosen, support = int(guesses[:, index].sum()), int(truth[:, index].sum())
        precision = float(hits[index] / chosen) if chosen else 0.0
        recall = float(hits[index] / support) if support else None  # None: no positive clip, nothing to find
        per_class[name] = {
            "ap": None if np.isnan(scores[index]) else float(scores[index]),
            "threshold": float(thresholds[index]),
            "precision": precision if chosen or support else None,
            "recall": recall,
            "f1": None if recall is None else float(2 * precision * recall / (precision + recall))
            if precision + recall else 0.0,
            "support": support,
        }
    return {**summary(truth, probabilities, thresholds), "chance_map": chance_map(truth),
            "num_samples": int(len(truth)), "per_class": per_class}


def epoch_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The Trainer's per-epoch figures at the sigmoid's midpoint (thresholds are fitted once, after training)."""
    return summary(labels, sigmoid(logits), DEFAULT_THRESHOLD)


def negative_map(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The loss greedy selection (lib.evaluate.calibration.greedy_selection) lowers for a multi-label vote: -mAP."""
    return -mean_average_precision(labels, probabilities)
