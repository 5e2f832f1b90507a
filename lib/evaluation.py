"""Evaluate a saved member on the validation features and write its metrics beside it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from datasets import Dataset
from pydantic import BaseModel

from lib.guards import check_finite_logits, check_finite_tensors
from lib.inference import predict_logits
from lib.metrics import detailed_report, summary_metrics
from lib.model import ASTMeanPoolClassifier
from lib.runtime import Runtime

METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion_matrix.json"
PREDICTIONS_FILE = "validation_logits.npz"


class EvalResult(BaseModel):
    metrics: dict[str, float]
    num_samples: int
    report_dir: str


def evaluate_model(
    model_dir: Path,
    dataset: Dataset,
    label_names: list[str],
    batch_size: int,
    runtime: Runtime,
    report_dir: Path,
    extra: dict | None = None,
) -> EvalResult:
    """Reload the model from disk (so what is evaluated is what will be published) and score it."""
    model = ASTMeanPoolClassifier.from_pretrained(str(model_dir))
    saved_labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if saved_labels != list(label_names):
        raise ValueError(f"model {model_dir} has labels {saved_labels}, features have {label_names}")
    check_finite_tensors(
        model.named_parameters(), f"model {model_dir}", "training diverged; it is not evaluated or published"
    )
    logits = predict_logits(model, dataset, batch_size, runtime)
    check_finite_logits(logits, f"model {model_dir}")
    labels = np.asarray(dataset.with_format("numpy", columns=["label"])["label"][:])
    predictions = logits.argmax(axis=-1)
    metrics = summary_metrics(labels, predictions)
    report = detailed_report(labels, predictions, label_names)

    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    payload = {**metrics, "num_samples": int(len(labels)), "per_class": report["per_class"], **(extra or {})}
    (report_dir / METRICS_FILE).write_text(json.dumps(payload, indent=2))
    (report_dir / CONFUSION_FILE).write_text(json.dumps(report["confusion_matrix"], indent=2))
    np.savez_compressed(report_dir / PREDICTIONS_FILE, logits=logits, labels=labels)
    return EvalResult(metrics=metrics, num_samples=int(len(labels)), report_dir=str(report_dir))
