import numpy as np
import pytest

from lib.config import SUMMARY_METRICS
from lib.evaluate.metrics import detailed_report, summary_metrics


def test_summary_metrics_on_a_hand_checked_case():
    labels = np.array([0, 0, 0, 1, 1, 2])
    preds = np.array([0, 0, 1, 1, 1, 0])
    metrics = summary_metrics(labels, preds)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # per class recall: 2/3, 1, 0 -> balanced = 5/9
    assert metrics["balanced_accuracy"] == pytest.approx(5 / 9)
    # per class precision: 2/3, 2/3, 0; weights 3,2,1 -> (2 + 4/3) / 6
    assert metrics["precision"] == pytest.approx((3 * 2 / 3 + 2 * 2 / 3) / 6)
    assert metrics["recall"] == pytest.approx(4 / 6)
    f1 = [2 / 3, 0.8, 0.0]
    assert metrics["f1"] == pytest.approx((3 * f1[0] + 2 * f1[1]) / 6)
    # the names the config, the CLI and the leaderboard use for them
    assert set(metrics) == set(SUMMARY_METRICS)


def test_detailed_report_has_every_class_and_the_confusion_matrix():
    report = detailed_report(np.array([0, 0, 1]), np.array([0, 1, 1]), ["a", "b", "never_seen"])
    assert report["confusion_matrix"] == {
        "labels": ["a", "b", "never_seen"], "matrix": [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    }
    assert report["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert report["per_class"]["never_seen"]["support"] == 0
