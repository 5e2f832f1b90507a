"""Temperature scaling, calibration figures and greedy ensemble selection, on constructed cases."""

import numpy as np
import pytest

from lib.evaluate.calibration import (
    brier,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    greedy_selection,
    nll,
    softmax,
)


def test_temperature_recovers_the_overconfidence_of_a_member_and_lowers_nll():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 5)) * 1.5
    labels = np.array([rng.choice(5, p=p) for p in softmax(true_logits)])  # calibrated at T = 1
    overconfident = 4.0 * true_logits
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(4.0, rel=0.08)
    before, after = calibration_report(softmax(overconfident), labels), calibration_report(
        softmax(overconfident, temperature), labels
    )
    assert after["nll"] < before["nll"] - 0.3
    assert after["ece"] < before["ece"] / 3
    assert after["brier"] < before["brier"]


def test_calibration_figures_on_a_hand_computed_case():
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6]])
    labels = np.array([0, 1, 1])
    assert nll(probabilities, labels) == pytest.approx(-(np.log(0.9) + np.log(0.2) + np.log(0.6)) / 3)
    assert brier(probabilities, labels) == pytest.approx((0.02 + 1.28 + 0.32) / 3)
    # bins (15 wide): 0.9 -> [0.867, 0.933], 0.8 -> [0.733, 0.8], 0.6 -> [0.533, 0.6]; one clip each
    assert expected_calibration_error(probabilities, labels) == pytest.approx((0.1 + 0.8 + 0.4) / 3)


def test_greedy_selection_counts_on_a_constructed_case():
    labels = np.array([0, 1, 2, 0])
    eye = np.eye(3)
    # a is right on clips 0-2, b on clips 2-3, c always uniform; mixing a twice with b once beats any single one
    a = 0.8 * eye[[0, 1, 2, 1]] + 0.2 / 3
    b = 0.8 * eye[[2, 0, 2, 0]] + 0.2 / 3
    c = np.full((4, 3), 1 / 3)
    counts = greedy_selection({"a": a, "b": b, "c": c}, labels)
    assert counts == {"a": 2, "b": 1}
    mixture = (2 * a + b) / 3
    assert nll(mixture, labels) < min(nll(a, labels), nll(b, labels), nll((a + b) / 2, labels))
    # a member that is best alone and not improved by anything is selected alone
    assert greedy_selection({"a": a, "c": c}, labels) == {"a": 1}


def test_temperature_never_makes_a_member_worse_and_sharpens_an_underconfident_one():
    rng = np.random.default_rng(1)
    true_logits = rng.normal(size=(2000, 3)) * 2
    labels = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])
    assert fit_temperature(true_logits / 3, labels) == pytest.approx(1 / 3, rel=0.1)
    separable = np.array([[50.0, 0.0], [0.0, 50.0]])  # all right, huge margins: T -> 0 only helps a little
    temperature = fit_temperature(separable, np.array([0, 1]))
    assert 0 < temperature <= 1.0
    assert nll(softmax(separable, temperature), np.array([0, 1])) <= nll(softmax(separable), np.array([0, 1]))


def test_a_members_temperature_comes_from_validation_and_test_is_only_reported():
    from lib.evaluate.calibration import calibrate_member

    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3000, 4)) * 1.5
    labels = np.array([rng.choice(4, p=p) for p in softmax(logits)])
    validation = (3.0 * logits[:1500], labels[:1500])  # over-confident by 3
    test = (3.0 * logits[1500:], labels[1500:])
    report = calibrate_member({"validation": validation, "test": test})
    assert report["fitted_on"] == "validation" and report["temperature"] == pytest.approx(3.0, rel=0.15)
    assert report["test"]["after"]["nll"] < report["test"]["before"]["nll"]  # it carries over to unseen clips
    corrupted = calibrate_member({"validation": validation, "test": (test[0], (test[1] + 1) % 4)})
    assert corrupted["temperature"] == report["temperature"] and corrupted["validation"] == report["validation"]
    assert corrupted["test"] != report["test"]


def test_a_member_no_better_than_chance_is_flagged_by_its_temperature():
    from lib.evaluate.calibration import calibrate_member

    rng = np.random.default_rng(2)
    noise = rng.normal(size=(400, 4)) * 3  # logits unrelated to the labels
    labels = rng.integers(0, 4, 400)
    report = calibrate_member({"validation": (noise, labels)})
    assert report["temperature"] > 20 and "barely better than chance" in report["warning"]
    informative = np.eye(4)[labels] * 2 + rng.normal(size=(400, 4)) * 0.5
    assert calibrate_member({"validation": (informative, labels)})["warning"] is None
