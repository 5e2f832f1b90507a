"""Cross-validation: one fine-tune plan per fold, the folds already published (a rerun skips them), and the
protocol's figure: each fold's scores, and their mean and standard deviation over the folds (crossval.json)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from lib.config import CrossvalConfig
from lib.core.errors import ConfigError
from lib.core.layout import CROSSVAL_FILE, MEMBER_FILE, METRICS_FILE
from lib.data.features import FeatureCacheRef
from lib.data.folds import fold_split
from lib.data.layouts import dataset_folds
from lib.evaluate.metrics import headline_metric
from lib.recipes.finetune import FinetunePlan, plan_run

logger = logging.getLogger(__name__)

# The scores a fold reports, and that the protocol averages (a multi-label task's are map, micro_f1 and macro_f1).
FOLD_SCORES = ("accuracy", "balanced_accuracy", "f1", "precision", "recall", "map", "micro_f1", "macro_f1")


def plan_crossval(config: CrossvalConfig, trains_here: bool = True) -> dict[str, FinetunePlan]:
    """Fold split (fold-1, ...) -> its member's plan, for every fold of the dataset; before any work."""
    if config.data.fold is not None:
        raise ConfigError(
            f"data.fold (--fold) {config.data.fold}: cross-validation trains every fold in turn; remove data.fold "
            "(a single fold is astft finetune --fold N)"
        )
    resolved = config.resolved()
    folds = dataset_folds(resolved.data, warn=False, multi_label=resolved.model.multi_label)
    if folds is None:
        raise ConfigError(
            f"layout {config.data.layout} has no folds of its own: set data.folds (--set data.folds=5) to cut that "
            "many, stratified by class"
        )
    return {fold_split(number): plan_run(config.fold_config(number), trains_here) for number in folds.present}


def finished_fold(plan: FinetunePlan, features: FeatureCacheRef) -> dict | None:
    """The result of a fold whose member is published already from this very recipe and features, else None."""
    folder = plan.publish_root / plan.config.name
    try:
        member = json.loads((folder / MEMBER_FILE).read_text())
        metrics = json.loads((folder / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if member.get("run_fingerprint") != plan.fingerprint or member.get("feature_cache_key") != features.key:
        return None
    return fold_result(plan, folder, metrics)


def fold_result(plan: FinetunePlan, folder: Path, metrics: dict) -> dict:
    """A fold's line of crossval.json, from its member's metrics.json."""
    return {
        "name": plan.config.name, "published": str(folder), "fold": plan.config.data.fold,
        "best_epoch": metrics.get("best_epoch"), "temperature": metrics.get("temperature"),
        "metrics": {key: metrics[key] for key in FOLD_SCORES if key in metrics},
        "test_metrics": {key: metrics["test"][key] for key in FOLD_SCORES if key in metrics.get("test", {})},
        "num_samples": metrics.get("num_samples"),
    }


def read_fold(plan: FinetunePlan) -> dict:
    """A published fold's result (a fold trained by a deployment run, on another worker)."""
    folder = plan.publish_root / plan.config.name
    return fold_result(plan, folder, json.loads((folder / METRICS_FILE).read_text()))


def other_members(best_root: Path, name: str) -> list[str]:
    """The member folders in best/ that are not this cross-validation's folds (predict on best/ votes them all)."""
    if not best_root.is_dir():
        return []
    return sorted(entry.name for entry in best_root.iterdir()
                  if entry.is_dir() and not entry.name.startswith((".", f"{name}-fold-")))


def summarize(results: dict[str, dict], failed: dict[str, str], source: str, quick_subsample: bool = False) -> dict:
    """crossval.json's content: each fold's scores, then their mean and standard deviation (n - 1) over the folds
    that finished, on validation (each fold's held-out clips) and on test where there is one."""
    done = [results[fold] for fold in results]
    summary: dict = {"folds": {fold: result for fold, result in results.items()}, "failed": failed, "source": source,
                     "quick_subsample": quick_subsample}
    for split, key in (("validation", "metrics"), ("test", "test_metrics")):
        scores = {name: [fold[key][name] for fold in done if name in fold[key]] for name in FOLD_SCORES}
        summary[split] = {
            name: {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                   "folds": len(values)}
            for name, values in scores.items() if values
        }
    return summary


def write_summary(best_root: Path, summary: dict) -> Path:
    """best/crossval.json, renamed into place (a reader never sees half of it)."""
    best_root.mkdir(parents=True, exist_ok=True)
    staged = best_root / f".{CROSSVAL_FILE}.{os.getpid()}.tmp"
    staged.write_text(json.dumps(summary, indent=2))
    os.replace(staged, best_root / CROSSVAL_FILE)
    return best_root / CROSSVAL_FILE


def protocol_line(summary: dict) -> str:
    """One line with the protocol's figure: mean accuracy (a multi-label task's mAP) +- std over the folds (test too
    where there is one)."""
    parts = []
    for split in ("validation", "test"):
        name = headline_metric(summary[split])
        if figure := summary[split].get(name):
            parts.append(f"{split} {'mAP' if name == 'map' else name} {figure['mean']:.4f} +- {figure['std']:.4f}")
    folds = len(summary["folds"])
    failed = f"; {len(summary['failed'])} failed ({', '.join(summary['failed'])})" if summary["failed"] else ""
    subsample = " (quick subsample: every 10th clip)" if summary.get("quick_subsample") else ""
    return f"cross-validation over {folds} folds ({summary['source']}){subsample}: " + "; ".join(parts) + failed
