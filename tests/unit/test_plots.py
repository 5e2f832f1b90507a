"""Figures: valid PNGs of the expected size, and the reliability bins they are drawn from."""

import numpy as np
import pytest
from PIL import Image

from lib.evaluate.plots import (
    confusion_matrix_plot,
    leaderboard_plot,
    png_data_uri,
    reliability_bins,
    reliability_plot,
    training_curves,
)

HISTORY = [
    entry
    for epoch in (1.0, 2.0, 3.0)
    for entry in (
        {"epoch": epoch, "step": int(epoch) * 4, "loss": 1.0 / epoch},
        {"epoch": epoch, "step": int(epoch) * 4, "eval_loss": 0.8 / epoch, "eval_accuracy": 0.3 * epoch},
    )
]


def assert_png(path, width, height):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size == (width, height)


def test_each_figure_is_a_valid_png(tmp_path):
    assert_png(training_curves(HISTORY, "accuracy", 3.0, tmp_path / "curves.png"), 1000, 400)
    assert_png(confusion_matrix_plot([[3, 1], [0, 4]], ["a", "b"], tmp_path / "confusion.png"), 900, 400)
    rows = [{"name": "m1", "accuracy": 0.5}, {"name": "vote", "accuracy": 0.75, "kind": "ensemble"}]
    assert_png(leaderboard_plot(rows, ["accuracy"], tmp_path / "board.png"), 800, 250)
    probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    assert_png(reliability_plot({"m1": (probabilities, np.array([0, 1, 1]))}, tmp_path / "rel.png"), 550, 500)
    assert png_data_uri(tmp_path / "rel.png").startswith("data:image/png;base64,iVBORw0KGgo")


def test_reliability_bins_count_confidence_and_accuracy_per_bin():
    probabilities = np.array([[0.95, 0.05], [0.92, 0.08], [0.55, 0.45], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])
    bins = reliability_bins(probabilities, labels, bins=10)
    assert [b["count"] for b in bins] == [0, 0, 0, 0, 0, 1, 1, 0, 0, 2]
    top = bins[9]
    assert top["confidence"] == pytest.approx(0.935) and top["accuracy"] == 0.5  # one of the two is wrong
    assert (bins[5]["accuracy"], bins[6]["accuracy"]) == (1.0, 1.0)
    assert bins[0]["confidence"] is None


def test_a_confusion_matrix_of_many_classes_stays_a_bounded_image(tmp_path):
    labels = [f"class_{i}" for i in range(1500)]
    matrix = np.eye(1500, dtype=int).tolist()
    assert_png(confusion_matrix_plot(matrix, labels, tmp_path / "confusion.png"), 3300, 1600)
