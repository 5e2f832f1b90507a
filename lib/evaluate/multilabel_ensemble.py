"""A multi-label ensemble of published members: their sigmoid outputs averaged, members chosen greedily on validation
mAP, thresholds fitted for the vote on validation; ensemble.json, leaderboard and per-class figures.

The multi-label counterpart of lib.evaluate.ensemble.evaluate_ensemble (which calls it for multi-label members):
the same file shape (members, leaderboard, ensemble, verdict), scored by mAP and F1 instead of accuracy and NLL.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from lib.core.layout import (
    AVERAGE_PRECISION_PLOT_FILE,
    LEADERBOARD_PLOT_FILE,
    PRECISION_RECALL_PLOT_FILE,
    RELIABILITY_PLOT_FILE,
)
from lib.evaluate import multilabel
from lib.evaluate.calibration import greedy_selection
from lib.evaluate.plots import average_precision_plot, leaderboard_plot, precision_recall_plot


def evaluate_multi_label_ensemble(
    names: list[str],
    logits: dict[str, dict[str, np.ndarray]],
    labels: dict[str, np.ndarray],
    info: dict[str, dict],
    output_file: Path,
    label_names: list[str],
    failed: dict[str, str] | None = None,
    selection: str = "greedy",
    weights: dict[str, float] | None = None,
    mode: str = "per_class",
) -> dict:
    """Score each member and the vote on every split (split -> member -> logits, split -> multi-hot labels; info:
    member -> path, freezing, version, its own thresholds); write ensemble.json and its figures beside it.

    The selection, the weights and the vote's thresholds come from validation alone; test is only scored."""
    splits = list(logits)
    probabilities = {split: {name: multilabel.sigmoid(logits[split][name]) for name in names} for split in splits}
    method, chosen = _select(selection, weights, probabilities["validation"], labels["validation"])

    member_rows = [
        {"name": name, "kind": "member", "freezing": info[name]["freezing"], "weight": chosen.get(name, 0.0),
         "temperature": None, **_scores(probabilities, {name: 1.0}, np.asarray(info[name]["thresholds"]), labels)}
        for name in names
    ]
    member_rows.sort(key=lambda row: (-row["validation"]["map"], row["name"]))
    best = member_rows[0]
    equal = dict.fromkeys(names, 1.0)
    mean_thresholds = _fitted(probabilities, equal, labels["validation"], mode)
    voted = {split: _weighted(by_member, chosen) for split, by_member in probabilities.items()}
    thresholds = _fitted(probabilities, chosen, labels["validation"], mode)
    ensemble_rows = [
        {"name": "mean of all members", "kind": "mean", "freezing": None, "weight": None, "temperature": None,
         **_scores(probabilities, equal, mean_thresholds, labels)},
        {"name": f"ensemble ({method})", "kind": "ensemble", "freezing": None, "weight": None, "temperature": None,
         **_scores(probabilities, chosen, thresholds, labels)},
    ]
    for row in ensemble_rows:
        row["gain_over_best_member"] = {
            split: {key: row[split][key] - best[split][key] for key in ("map", "micro_f1")} for split in splits
        }
    ensemble_row = ensemble_rows[-1]
    verdict_split = splits[-1]  # test when there is one: nothing was tuned on it
    gain = ensemble_row["gain_over_best_member"]
    result = {
        "task": "multi_label",
        "label_names": label_names,
        "selection": method,
        "members": [
            {"name": name, "path": info[name]["path"], "freezing": info[name]["freezing"], "weight": chosen[name],
             "temperature": 1.0, "version": info[name]["version"]}
            for name in names if chosen.get(name, 0) > 0
        ],
        # what predict applies to the vote: a class at or above its threshold
        "thresholds": {"mode": mode, "fitted_on": "validation",
                       "thresholds": dict(zip(label_names, map(float, thresholds), strict=True))},
        "leaderboard": member_rows + ensemble_rows,
        "ensemble": {
            "selection": method,
            "weights": {name: weight for name, weight in chosen.items() if weight > 0},
            **{split: multilabel.report(labels[split], voted[split], thresholds, label_names) for split in splits},
            "best_member": best["name"],
            "gain_over_best_member": gain,
            "beats_best_member": gain[verdict_split]["map"] > 0,
            "verdict": _verdict(method, best, ensemble_row, verdict_split),
        },
        "failed": failed or {},
        "plots": {"leaderboard": LEADERBOARD_PLOT_FILE, "average_precision": AVERAGE_PRECISION_PLOT_FILE,
                  "precision_recall": PRECISION_RECALL_PLOT_FILE},
    }
    output_file = Path(output_file)
    _write_plots(result, probabilities, voted, labels, verdict_split, output_file.parent)
    staged = output_file.with_name(f".{output_file.name}.{os.getpid()}.tmp")  # a reader never sees half a file
    staged.write_text(json.dumps(result, indent=2))
    os.replace(staged, output_file)
    return result


def _select(selection: str, weights: dict[str, float] | None, validation: dict[str, np.ndarray], labels: np.ndarray
            ) -> tuple[str, dict[str, float]]:
    """(method, member -> weight): the config's weights, every member equally, or greedy on validation mAP."""
    if weights is not None:
        return "config weights", {name: float(weights[name]) for name in validation}
    if selection == "all":
        return "all", dict.fromkeys(validation, 1.0)
    counts = greedy_selection(validation, labels, loss=multilabel.negative_map)
    return "greedy", {name: float(counts.get(name, 0)) for name in validation}


def _weighted(by_member: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """The vote: the weighted mean of the members' probabilities (members of weight 0 left out)."""
    used = {name: weight for name, weight in weights.items() if weight > 0}
    return sum(weight * by_member[name] for name, weight in used.items()) / sum(used.values())


def _fitted(probabilities: dict[str, dict[str, np.ndarray]], weights: dict[str, float], validation_labels: np.ndarray,
            mode: str) -> np.ndarray:
    """The thresholds fitted to a vote's validation probabilities."""
    return multilabel.fit_thresholds(validation_labels, _weighted(probabilities["validation"], weights), mode)


def _scores(probabilities: dict[str, dict[str, np.ndarray]], weights: dict[str, float], thresholds: np.ndarray,
            labels: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """split -> mAP, micro and macro F1 at the thresholds, and the chance mAP, of a vote (one member: weight 1)."""
    return {
        split: multilabel.summary(labels[split], _weighted(by_member, weights), thresholds)
        | {"chance_map": multilabel.chance_map(labels[split])}
        for split, by_member in probabilities.items()
    }


def _verdict(method: str, best: dict, ensemble: dict, split: str) -> str:
    """One plain sentence: does the ensemble beat the member with the best validation mAP?"""
    ours, theirs = ensemble[split], best[split]
    gain = ours["map"] - theirs["map"]
    figures = (f"{split} mAP {ours['map']:.4f} vs {theirs['map']:.4f} ({gain:+.4f}), micro F1 {ours['micro_f1']:.4f} "
               f"vs {theirs['micro_f1']:.4f}")
    if gain > 0:
        return f"the ensemble ({method}) beats its best member {best['name']}: {figures}"
    return (f"the ensemble ({method}) does NOT beat its best member {best['name']}: {figures}; serving "
            f"{best['name']} alone ranks as well" + (" or better" if gain < 0 else ""))


def _write_plots(result: dict, probabilities: dict, voted: dict, labels: dict, split: str, folder: Path) -> None:
    """leaderboard.png (validation mAP, test beside it), and the vote's per-class AP bars and precision-recall curve
    against the best member's, on `split` (test when there is one)."""
    splits = [name for name in ("validation", "test") if name in result["ensemble"]]
    rows = [{"name": row["name"], "kind": row["kind"], **{f"{name} mAP": row[name]["map"] for name in splits}}
            for row in result["leaderboard"]]
    leaderboard_plot(rows, [f"{name} mAP" for name in splits], folder / LEADERBOARD_PLOT_FILE, score="mAP")
    (folder / RELIABILITY_PLOT_FILE).unlink(missing_ok=True)  # a single-label vote's, made here before
    report = result["ensemble"][split]
    average_precision_plot(
        report["per_class"], folder / AVERAGE_PRECISION_PLOT_FILE,
        f"ensemble: average precision per class ({split}; mAP {report['map']:.4f}, chance {report['chance_map']:.4f})",
    )
    best = result["ensemble"]["best_member"]
    precision_recall_plot(
        {f"ensemble ({split})": (voted[split], labels[split]),
         f"{best}, the best member ({split})": (probabilities[split][best], labels[split])},
        folder / PRECISION_RECALL_PLOT_FILE,
        {"ensemble at its thresholds": multilabel.micro_point(labels[split], voted[split],
                                                              np.array(list(result["thresholds"]["thresholds"].values())))},
    )
