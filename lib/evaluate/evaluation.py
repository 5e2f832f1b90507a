"""Evaluate a saved member on validation (and test), fit its temperature on validation, write its reports.

The reports are written beside the model, where publishing copies them from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from datasets import Dataset
from pydantic import BaseModel

from lib.config import MULTI_LABEL_METRICS, SUMMARY_METRICS
from lib.core.guards import check_finite_logits, check_finite_tensors
from lib.core.layout import (
    CALIBRATION_FILE,
    CONFUSION_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    TEST_PREDICTIONS_FILE,
    THRESHOLDS_FILE,
)
from lib.core.runtime import Runtime
from lib.core.timing import phase
from lib.evaluate import multilabel
from lib.evaluate.calibration import calibrate_member
from lib.evaluate.inference import predict_logits
from lib.evaluate.metrics import detailed_report, summary_metrics
from lib.model.classifier import MULTI_LABEL, ASTMeanPoolClassifier


class EvalResult(BaseModel):
    metrics: dict[str, float]  # validation
    num_samples: int
    report_dir: str
    temperature: float = 1.0
    test_metrics: dict[str, float] | None = None


def evaluate_model(
    model_dir: Path,
    dataset: Dataset,
    label_names: list[str],
    batch_size: int,
    runtime: Runtime,
    report_dir: Path,
    extra: dict | None = None,
    test_dataset: Dataset | None = None,
    thresholds: str = "per_class",
) -> EvalResult:
    """Reload the model from disk (so what is evaluated is what will be published), score it on validation
    (and test), and fit its temperature on the validation logits alone; a multi-label model's thresholds instead
    (per_class or global, lib.evaluate.multilabel)."""
    model = ASTMeanPoolClassifier.from_pretrained(str(model_dir))
    saved_labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if saved_labels != list(label_names):
        raise ValueError(f"model {model_dir} has labels {saved_labels}, features have {label_names}")
    check_finite_tensors(
        model.named_parameters(), f"model {model_dir}", "training diverged; it is not evaluated or published"
    )
    splits = {"validation": dataset} | ({"test": test_dataset} if test_dataset is not None else {})
    scored = {}
    for split, data in splits.items():
        logits = predict_logits(model, data, batch_size, runtime)
        check_finite_logits(logits, f"model {model_dir}")
        scored[split] = (logits, np.asarray(data.with_format("numpy", columns=["label"])["label"][:]))
    if model.config.problem_type == MULTI_LABEL:
        return evaluate_multi_label(scored, label_names, Path(report_dir), extra, thresholds)
    reports = {split: split_report(logits, labels, label_names) for split, (logits, labels) in scored.items()}
    with phase("calibration"):
        calibration = calibrate_member(scored)

    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    validation = reports["validation"]
    # Validation stays at the top level (what readers of older members expect); test is apart.
    payload = {key: value for key, value in validation.items() if key != "confusion_matrix"}
    payload |= {**(extra or {}), "temperature": calibration["temperature"]}
    if "test" in reports:
        payload["test"] = reports["test"]
    (report_dir / METRICS_FILE).write_text(json.dumps(payload, indent=2))
    (report_dir / CONFUSION_FILE).write_text(json.dumps(validation["confusion_matrix"], indent=2))
    (report_dir / CALIBRATION_FILE).write_text(json.dumps(calibration, indent=2))
    (report_dir / THRESHOLDS_FILE).unlink(missing_ok=True)  # a multi-label run's, earlier in this report dir
    save_scored(report_dir, scored)
    return EvalResult(
        metrics=summary_of(validation),
        num_samples=validation["num_samples"],
        report_dir=str(report_dir),
        temperature=calibration["temperature"],
        test_metrics=summary_of(reports["test"]) if "test" in reports else None,
    )


def evaluate_multi_label(
    scored: dict[str, tuple[np.ndarray, np.ndarray]], label_names: list[str], report_dir: Path, extra: dict | None,
    mode: str,
) -> EvalResult:
    """A multi-label member's reports: thresholds fitted on validation to the best F1, mAP, per-class AP and F1 at
    them on every split; calibration skipped, and why."""
    probabilities = {split: multilabel.sigmoid(logits) for split, (logits, _) in scored.items()}
    thresholds = multilabel.fit_thresholds(scored["validation"][1], probabilities["validation"], mode)
    reports = {split: multilabel.report(labels, probabilities[split], thresholds, label_names)
               for split, (_, labels) in scored.items()}
    report_dir.mkdir(parents=True, exist_ok=True)
    payload = {**reports["validation"], **(extra or {}), "task": "multi_label", "temperature": 1.0}
    if "test" in reports:
        payload["test"] = reports["test"]
    (report_dir / METRICS_FILE).write_text(json.dumps(payload, indent=2))
    (report_dir / THRESHOLDS_FILE).write_text(json.dumps(threshold_file(thresholds, label_names, mode), indent=2))
    (report_dir / CALIBRATION_FILE).write_text(json.dumps(
        {"temperature": 1.0, "warning": None, "fitted_on": "validation", "skipped": multilabel.CALIBRATION_SKIPPED},
        indent=2))
    (report_dir / CONFUSION_FILE).unlink(missing_ok=True)  # a single-label run's, earlier in this report dir
    save_scored(report_dir, scored)
    return EvalResult(
        metrics=multi_label_summary(reports["validation"]),
        num_samples=reports["validation"]["num_samples"],
        report_dir=str(report_dir),
        test_metrics=multi_label_summary(reports["test"]) if "test" in reports else None,
    )


def save_scored(report_dir: Path, scored: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Each split's logits and labels (validation_logits.npz, test_logits.npz), what ensembles vote on."""
    for split, file in (("validation", PREDICTIONS_FILE), ("test", TEST_PREDICTIONS_FILE)):
        if split in scored:
            np.savez_compressed(report_dir / file, logits=scored[split][0], labels=scored[split][1])
        else:  # an earlier run's, with a test folder this run does not have: it must not be published
            (report_dir / file).unlink(missing_ok=True)


def threshold_file(thresholds: np.ndarray, label_names: list[str], mode: str) -> dict:
    """thresholds.json: how they were fitted, and class -> the probability at or above which it is predicted."""
    return {"mode": mode, "fitted_on": "validation", "rule": "a class is predicted at probability >= its threshold",
            "thresholds": {name: float(value) for name, value in zip(label_names, thresholds, strict=True)}}


def multi_label_summary(report: dict) -> dict[str, float]:
    return {key: report[key] for key in (*MULTI_LABEL_METRICS, "chance_map")}


def split_report(logits: np.ndarray, labels: np.ndarray, label_names: list[str]) -> dict:
    """Summary metrics, clip count, per-class report and confusion matrix of one split's logits."""
    predictions = logits.argmax(axis=-1)
    return {**summary_metrics(labels, predictions), "num_samples": int(len(labels)),
            **detailed_report(labels, predictions, label_names)}


def summary_of(report: dict) -> dict[str, float]:
    return {key: report[key] for key in SUMMARY_METRICS}
