"""PNG figures of a member and an ensemble: training curves, confusion matrix, leaderboard, reliability; and a
multi-label task's per-class average precision and precision-recall curve.

matplotlib with the Agg backend (no display); each function writes one PNG and returns its path.
"""

from __future__ import annotations

import base64
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: workers and CI have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 100
MAX_CONFUSION_INCHES = 16.0


def _save(figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def training_curves(log_history: list[dict], metric: str, best_epoch: float | None, path: Path) -> Path:
    """Train loss, validation loss and the chosen metric per epoch (Trainer's log_history), best epoch marked."""
    train = [(entry["epoch"], entry["loss"]) for entry in log_history if "loss" in entry and "epoch" in entry]
    evals = [entry for entry in log_history if "eval_loss" in entry]
    figure, (losses, score) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        losses.plot(*zip(*train, strict=True), marker="o", label="train loss")
    if evals:
        losses.plot([e["epoch"] for e in evals], [e["eval_loss"] for e in evals], marker="o", label="validation loss")
    losses.set(xlabel="epoch", ylabel="loss", title="loss")
    losses.legend()
    key = f"eval_{metric}"
    points = [(e["epoch"], e[key]) for e in evals if e.get(key) is not None]  # None: not measured that epoch
    if points:
        score.plot(*zip(*points, strict=True), marker="o", color="tab:green", label=f"validation {metric}")
    score.set(xlabel="epoch", ylabel=metric, title=f"validation {metric}")
    if best_epoch is not None:
        for axis in (losses, score):
            axis.axvline(best_epoch, color="tab:red", linestyle="--", label=f"best epoch {best_epoch:g}")
        score.legend()
    return _save(figure, path)


def confusion_matrix_plot(matrix: list[list[int]], labels: list[str], path: Path) -> Path:
    """Counts and row-normalised (recall per true class) side by side; rows = true class."""
    counts = np.asarray(matrix, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    size = min(max(4.0, 0.5 * len(labels) + 2), MAX_CONFUSION_INCHES)  # 1,500 classes must not make a 75,000 px PNG
    figure, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    annotate = len(labels) <= 30  # beyond that the numbers are unreadable; the colours still tell
    named = len(labels) <= 60  # likewise the class names on the axes
    panels = ((axes[0], counts, "counts", "{:.0f}"), (axes[1], normalised, "row-normalised", "{:.2f}"))
    for axis, values, title, fmt in panels:
        image = axis.imshow(values, cmap="Blues", vmin=0)
        figure.colorbar(image, ax=axis, fraction=0.046)
        if named:
            ticks = range(len(labels))
            slanted = len(labels) > 6 or max(map(len, labels)) > 6  # long names overlap when level
            axis.set_xticks(ticks, labels, rotation=90 if len(labels) > 6 else 30 if slanted else 0,
                            ha="center" if len(labels) > 6 or not slanted else "right")
            axis.set_yticks(ticks, labels)
        axis.set(xlabel="predicted", ylabel="true", title=title)
        if annotate:
            high = values.max() / 2 if values.size else 0
            for (row, column), value in np.ndenumerate(values):
                axis.text(column, row, fmt.format(value), ha="center", va="center",
                          color="white" if value > high else "black", fontsize=8)
    return _save(figure, path)


def leaderboard_plot(rows: list[dict], metrics: list[str], path: Path, score: str = "accuracy") -> Path:
    """Horizontal bars per leaderboard row (members and ensembles) ordered by metrics[0], best on top, with any
    further metric (test accuracy) as a paler bar beside it."""
    ordered = sorted(rows, key=lambda row: row[metrics[0]])
    height = 0.8 / len(metrics)
    figure, axis = plt.subplots(figsize=(8, max(2.5, 0.35 * len(ordered) * len(metrics) + 1.2)))
    positions = np.arange(len(ordered))
    for index, metric in enumerate(metrics):
        colours = ["tab:orange" if row.get("kind", "member") != "member" else "tab:blue" for row in ordered]
        bars = axis.barh(positions + (len(metrics) - 1) / 2 * height - index * height,
                         [row[metric] for row in ordered], height=height, color=colours,
                         alpha=1.0 if index == 0 else 0.45, label=metric)
        axis.bar_label(bars, fmt="%.4f", padding=3, fontsize=8)
    axis.set_yticks(positions, [row["name"] for row in ordered])
    axis.set(xlabel=score, title=f"leaderboard ({', '.join(metrics)}; ensembles in orange)", xlim=(0, 1.15))
    if len(metrics) > 1:
        axis.legend(loc="lower right", fontsize=8)
    return _save(figure, path)


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> list[dict]:
    """Per equal-width confidence bin: count, mean confidence, accuracy (the data of a reliability diagram)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    return [
        {
            "low": float(edges[b]), "high": float(edges[b + 1]), "count": int((index == b).sum()),
            "confidence": float(confidence[index == b].mean()) if (index == b).any() else None,
            "accuracy": float(correct[index == b].mean()) if (index == b).any() else None,
        }
        for b in range(bins)
    ]


def reliability_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, bins: int = 15) -> Path:
    """Accuracy against confidence per bin for each named (probabilities, labels); the diagonal is calibrated."""
    figure, axis = plt.subplots(figsize=(5.5, 5))
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for name, (probabilities, labels) in curves.items():
        points = [(b["confidence"], b["accuracy"]) for b in reliability_bins(probabilities, labels, bins) if b["count"]]
        if points:
            axis.plot(*zip(*points, strict=True), marker="o", label=name)
    axis.set(xlabel="confidence (max probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02),
             title=f"reliability ({bins} bins)")
    axis.legend(fontsize=8)
    return _save(figure, path)


def average_precision_plot(per_class: dict[str, dict], path: Path, title: str = "average precision per class"
                           ) -> Path:
    """A multi-label report's per-class AP (its per_class entries' "ap") as horizontal bars, best on top, each
    class's share of positive clips (the AP of a ranking by chance) as a tick; classes without a positive clip are
    left out."""
    scored = sorted(((entry["ap"], name, entry.get("support", 0)) for name, entry in per_class.items()
                     if entry.get("ap") is not None), key=lambda item: item[0])
    figure, axis = plt.subplots(figsize=(8, max(2.5, min(0.3 * len(scored) + 1.2, 40.0))))
    positions = np.arange(len(scored))
    bars = axis.barh(positions, [ap for ap, _, _ in scored], color="tab:blue")
    if len(scored) <= 60:
        axis.bar_label(bars, fmt="%.3f", padding=3, fontsize=8)
        axis.set_yticks(positions, [name for _, name, _ in scored])
    unscored = len(per_class) - len(scored)
    if unscored:
        title += f"\n{unscored} class(es) without a positive clip left out"
    axis.set(xlabel="average precision", title=title, xlim=(0, 1.12))
    return _save(figure, path)


def precision_recall_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path,
                          points: dict[str, tuple[float, float]] | None = None) -> Path:
    """The micro-averaged precision-recall curve (every clip and class one decision) of each named (probabilities,
    multi-hot labels); points: named (recall, precision) marks, e.g. where the fitted thresholds operate."""
    from sklearn.metrics import precision_recall_curve

    figure, axis = plt.subplots(figsize=(5.5, 5))
    for name, (probabilities, labels) in curves.items():
        truth, scores = np.asarray(labels).ravel() > 0.5, np.asarray(probabilities).ravel()
        precision, recall, _ = precision_recall_curve(truth, scores)
        axis.plot(recall, precision, label=name)
    for name, (recall, precision) in (points or {}).items():
        axis.plot([recall], [precision], marker="o", linestyle="", label=name)
    axis.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="precision-recall (micro)")
    axis.legend(fontsize=8)
    return _save(figure, path)


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")
