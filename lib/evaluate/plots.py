"""PNG figures of a member and an ensemble: training curves, confusion matrix, leaderboard, reliability.

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


def leaderboard_plot(rows: list[dict], metrics: list[str], path: Path) -> Path:
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
    axis.set(xlabel="accuracy", title=f"leaderboard ({', '.join(metrics)}; ensembles in orange)", xlim=(0, 1.15))
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


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")
