"""Ensembles of published members: soft vote, greedy or weighted selection on validation, calibration, leaderboard
and plots. Reading the members themselves (their files, an ensemble folder) is lib.evaluate.members.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from lib.core.errors import EnsembleError
from lib.core.layout import (
    AVERAGE_PRECISION_PLOT_FILE,
    LEADERBOARD_PLOT_FILE,
    PRECISION_RECALL_PLOT_FILE,
    PREDICTIONS_FILE,
    RELIABILITY_PLOT_FILE,
    TEST_PREDICTIONS_FILE,
)
from lib.evaluate.calibration import (
    calibration_report,
    fit_temperature,
    greedy_selection,
    softmax,
)
from lib.evaluate.evaluation import split_report
from lib.evaluate.members import MemberInfo, check_compatible, member_version
from lib.evaluate.metrics import summary_metrics
from lib.evaluate.plots import leaderboard_plot, reliability_plot


def soft_vote(probabilities: list[np.ndarray], weights: list[float] | None = None) -> np.ndarray:
    """Weighted mean of per-member class probabilities (clips x classes)."""
    weights = np.ones(len(probabilities)) if weights is None else np.asarray(weights, dtype=np.float64)
    stacked = np.stack(probabilities).astype(np.float64)
    return np.tensordot(weights / weights.sum(), stacked, axes=1)


def weighted_mean(probabilities: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """soft_vote over the named members in `weights` (the same vote predict casts)."""
    return soft_vote([probabilities[name] for name in weights], list(weights.values()))


def _stored_logits(members: list[MemberInfo]) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """split -> member -> logits, and split -> labels: validation always, test when every member has it."""
    files = {"validation": PREDICTIONS_FILE, "test": TEST_PREDICTIONS_FILE}
    if not all((Path(member.path) / TEST_PREDICTIONS_FILE).is_file() for member in members):
        del files["test"]
    logits: dict[str, dict[str, np.ndarray]] = {split: {} for split in files}
    labels: dict[str, np.ndarray] = {}
    for split, file in files.items():
        for member in members:
            stored = np.load(Path(member.path) / file)
            labels.setdefault(split, stored["labels"])
            if not np.array_equal(labels[split], stored["labels"]):
                raise EnsembleError(
                    f"member {member.name} was scored on {split} clips in another order than {members[0].name}; "
                    "re-run the ensemble so every member is evaluated on the same feature cache"
                )
            logits[split][member.name] = stored["logits"]
    return logits, labels


def _scores(probabilities: np.ndarray, uncalibrated: np.ndarray, labels: np.ndarray) -> dict:
    """Summary metrics of calibrated probabilities, and NLL/Brier/ECE before and after calibration."""
    return {
        **summary_metrics(labels, probabilities.argmax(axis=-1)),
        "calibration": {
            "before": calibration_report(uncalibrated, labels),
            "after": calibration_report(probabilities, labels),
        },
    }


def evaluate_ensemble(
    members: list[MemberInfo],
    output_file: Path,
    failed: dict[str, str] | None = None,
    selection: str = "greedy",
    weights: dict[str, float] | None = None,
    thresholds: str = "per_class",
) -> dict:
    """Calibrate, select and soft-vote the members' stored logits; write ensemble.json and its figures.

    Temperatures, the selection and the weights come from validation alone; test (when the members
    have it) is only scored. weights (given in the config) replace the selection. Multi-label members are
    lib.evaluate.multilabel_ensemble's (thresholds: how the vote's are fitted).
    """
    check_compatible(members, same_validation_set=True)
    logits, labels = _stored_logits(members)
    splits, names = list(logits), [member.name for member in members]
    if members[0].multi_label:
        from lib.evaluate.multilabel_ensemble import evaluate_multi_label_ensemble

        info = {member.name: {"path": member.path, "freezing": member.freezing, "thresholds": member.thresholds,
                              "version": member_version(Path(member.path))} for member in members}
        return evaluate_multi_label_ensemble(names, logits, labels, info, output_file, members[0].label_names, failed,
                                             selection, weights, thresholds)
    temperatures = {
        member.name: member.temperature if member.temperature is not None
        else fit_temperature(logits["validation"][member.name], labels["validation"])
        for member in members
    }
    raw = {split: {name: softmax(logits[split][name]) for name in names} for split in splits}
    calibrated = {split: {name: softmax(logits[split][name], temperatures[name]) for name in names} for split in splits}

    method, chosen = _select(selection, weights, calibrated["validation"], labels["validation"])
    equal = dict.fromkeys(names, 1.0)

    freezing = {member.name: member.freezing for member in members}
    member_rows = [
        {"name": name, "kind": "member", "freezing": freezing[name], "weight": chosen.get(name, 0.0),
         "temperature": temperatures[name],
         **{split: _scores(calibrated[split][name], raw[split][name], labels[split]) for split in splits}}
        for name in names
    ]
    member_rows.sort(key=lambda row: (-row["validation"]["accuracy"], row["validation"]["calibration"]["after"]["nll"]))
    best = member_rows[0]
    votes = {split: weighted_mean(calibrated[split], chosen) for split in splits}
    ensemble_rows = [
        {
            "name": label,
            "kind": kind,
            "freezing": None,
            "weight": None,
            "temperature": None,
            **{
                split: _scores(
                    weighted_mean(calibrated[split], vote_weights),
                    weighted_mean(raw[split], vote_weights),
                    labels[split],
                )
                for split in splits
            },
        }
        for label, kind, vote_weights in (
            ("mean of all members", "mean", equal),
            (f"ensemble ({method})", "ensemble", chosen),
        )
    ]
    for row in ensemble_rows:  # against the member with the best validation accuracy, on every split
        row["gain_over_best_member"] = {
            split: {
                "accuracy": row[split]["accuracy"] - best[split]["accuracy"],
                "nll": best[split]["calibration"]["after"]["nll"] - row[split]["calibration"]["after"]["nll"],
            }
            for split in splits
        }
    ensemble_row = ensemble_rows[-1]
    gain = ensemble_row["gain_over_best_member"]
    verdict_split = splits[-1]  # test when there is one: nothing was tuned on it
    result = {
        "label_names": members[0].label_names,
        "selection": method,
        # what predict votes with: the selected members, their weights and temperatures
        "members": [
            {"name": member.name, "path": member.path, "freezing": member.freezing, "weight": chosen[member.name],
             "temperature": temperatures[member.name], "version": member_version(Path(member.path))}
            for member in members if chosen.get(member.name, 0) > 0
        ],
        "leaderboard": member_rows + ensemble_rows,
        "ensemble": {
            "selection": method,
            "weights": {name: weight for name, weight in chosen.items() if weight > 0},
            **{split: {**split_report(votes[split], labels[split], members[0].label_names),
                       "calibration": ensemble_row[split]["calibration"]} for split in splits},
            "best_member": best["name"],
            "gain_over_best_member": gain,
            "beats_best_member": gain[verdict_split]["accuracy"] > 0,
            "verdict": _verdict(method, best, ensemble_row, verdict_split),
        },
        "failed": failed or {},
        "plots": {"leaderboard": LEADERBOARD_PLOT_FILE, "reliability": RELIABILITY_PLOT_FILE},
    }
    output_file = Path(output_file)
    _write_plots(result, calibrated, raw, labels, verdict_split, output_file.parent)
    # Written beside its name and renamed over it: a reader (predict) never sees half a file.
    staged = output_file.with_name(f".{output_file.name}.{os.getpid()}.tmp")
    staged.write_text(json.dumps(result, indent=2))
    os.replace(staged, output_file)
    return result


def _select(
    selection: str, weights: dict[str, float] | None, validation: dict[str, np.ndarray], labels: np.ndarray
) -> tuple[str, dict[str, float]]:
    """(method, member -> weight) from the config's weights, or all members equally, or greedy on validation."""
    if weights is not None:
        return "config weights", {name: float(weights[name]) for name in validation}
    if selection == "all":
        return "all", dict.fromkeys(validation, 1.0)
    return "greedy", {name: float(count) for name, count in greedy_selection(validation, labels).items()}


def _verdict(method: str, best: dict, ensemble: dict, split: str) -> str:
    """One plain sentence: does the ensemble beat the member with the best validation accuracy?"""
    ours, theirs = ensemble[split], best[split]
    gain = ours["accuracy"] - theirs["accuracy"]
    figures = (
        f"{split} accuracy {ours['accuracy']:.4f} vs {theirs['accuracy']:.4f} ({gain:+.4f}), "
        f"NLL {ours['calibration']['after']['nll']:.4f} vs {theirs['calibration']['after']['nll']:.4f}"
    )
    if gain > 0:
        return f"the ensemble ({method}) beats its best member {best['name']}: {figures}"
    return (
        f"the ensemble ({method}) does NOT beat its best member {best['name']}: {figures}; "
        f"serving {best['name']} alone is as accurate"
        + (" or more" if gain < 0 else "")
    )


def _write_plots(result: dict, calibrated: dict, raw: dict, labels: dict, split: str, folder: Path) -> None:
    """leaderboard.png (every row's validation accuracy, as the table leads with it, and test beside it) and
    reliability.png (on `split`: test when there is one) beside ensemble.json."""
    splits = [name for name in ("validation", "test") if name in result["ensemble"]]
    rows = [{"name": row["name"], "kind": row["kind"], **{f"{name} accuracy": row[name]["accuracy"] for name in splits}}
            for row in result["leaderboard"]]
    leaderboard_plot(rows, [f"{name} accuracy" for name in splits], folder / LEADERBOARD_PLOT_FILE)
    best, weights = result["ensemble"]["best_member"], result["ensemble"]["weights"]
    # an ensemble of the best member alone would draw the same curves again, over the member's
    best_label = best if set(weights) != {best} else f"{best} (the ensemble)"
    curves = {
        f"{best_label}, uncalibrated ({split})": (raw[split][best], labels[split]),
        f"{best_label}, calibrated ({split})": (calibrated[split][best], labels[split]),
    }
    if set(weights) != {best}:
        curves |= {
            f"ensemble, uncalibrated ({split})": (weighted_mean(raw[split], weights), labels[split]),
            f"ensemble ({result['selection']}, {split})": (weighted_mean(calibrated[split], weights), labels[split]),
        }
    reliability_plot(curves, folder / RELIABILITY_PLOT_FILE)
    for stale in (AVERAGE_PRECISION_PLOT_FILE, PRECISION_RECALL_PLOT_FILE):  # a multi-label vote's, made here before
        (folder / stale).unlink(missing_ok=True)


