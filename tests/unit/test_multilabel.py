"""Multi-label (model.task multi_label): scores, thresholds, selection, the loss, and the config's rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from lib.config import FinetuneConfig
from lib.evaluate import multilabel
from lib.evaluate.calibration import greedy_selection
from lib.model.classifier import build_classifier
from tests.helpers import small_config

LABELS = np.array([[1, 0, 1], [1, 0, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 0]], dtype=np.float32)


def test_a_perfect_ranking_has_map_one_and_chance_is_each_class_share_of_positives():
    probabilities = LABELS * 0.6 + 0.2  # every positive above every negative, per class
    assert multilabel.mean_average_precision(LABELS, probabilities) == pytest.approx(1.0)
    assert multilabel.chance_map(LABELS) == pytest.approx(np.mean([3 / 6, 2 / 6, 3 / 6]))


def test_a_class_without_a_positive_clip_is_left_out_of_the_map():
    labels = LABELS.copy()
    labels[:, 1] = 0
    probabilities = labels * 0.6 + 0.2
    assert np.isnan(multilabel.average_precisions(labels, probabilities)[1])
    assert multilabel.mean_average_precision(labels, probabilities) == pytest.approx(1.0)


def test_per_class_thresholds_separate_each_class_where_one_threshold_cannot():
    # class 0's positives sit at 0.8 and its negatives at 0.6; class 1's at 0.4 and 0.2: no one cut separates both
    probabilities = np.where(LABELS[:, :2] > 0, [0.8, 0.4], [0.6, 0.2])
    labels = LABELS[:, :2]
    per_class = multilabel.fit_thresholds(labels, probabilities, "per_class")
    assert per_class.tolist() == pytest.approx([0.7, 0.3])  # halfway to the next lower score
    assert multilabel.summary(labels, probabilities, per_class)["micro_f1"] == pytest.approx(1.0)
    one = multilabel.fit_thresholds(labels, probabilities, "global")
    assert one[0] == one[1]
    assert multilabel.summary(labels, probabilities, one)["micro_f1"] < 1.0


def test_a_class_without_positives_keeps_the_sigmoid_midpoint():
    labels = np.array([[1, 0], [0, 0]], dtype=np.float32)
    assert multilabel.fit_thresholds(labels, np.array([[0.9, 0.7], [0.1, 0.3]]))[1] == multilabel.DEFAULT_THRESHOLD


def test_the_report_counts_each_class_at_its_threshold():
    probabilities = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.8]])
    labels = np.array([[1, 0], [0, 1], [0, 1]], dtype=np.float32)
    report = multilabel.report(labels, probabilities, np.array([0.5, 0.5]), ["a", "b"])
    assert report["per_class"]["a"] == {
        "ap": 1.0, "threshold": 0.5, "precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert report["per_class"]["b"]["f1"] == 1.0
    assert report["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1))  # 3 hits, 1 false alarm, no miss
    assert report["num_samples"] == 3


def test_greedy_selection_on_map_adds_a_member_only_while_the_map_rises():
    good = LABELS * 0.6 + 0.2
    noisy = np.random.default_rng(0).uniform(size=LABELS.shape)
    assert greedy_selection({"good": good, "noisy": noisy}, LABELS, loss=multilabel.negative_map) == {"good": 1}
    # two members each right about different classes: together they rank every class
    left, right = good.copy(), good.copy()
    left[:, 2], right[:, 0] = noisy[:, 2], noisy[:, 0]
    counts = greedy_selection({"left": left, "right": right}, LABELS, loss=multilabel.negative_map)
    assert set(counts) == {"left", "right"}


def test_a_multi_label_head_trains_with_binary_cross_entropy_on_multi_hot_rows():
    from transformers import ASTModel

    encoder = ASTModel(small_config())
    model = build_classifier(encoder, ["a", "b", "c"], multi_label=True).eval()
    assert model.config.problem_type == "multi_label_classification"
    inputs, labels = torch.randn(2, 64, 64), torch.tensor(LABELS[:2])
    output = model(input_values=inputs, labels=labels)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(output.logits, labels)
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    single = build_classifier(encoder, ["a", "b", "c"]).eval()
    assert single.config.problem_type is None


def finetune_config(tmp_path, **training) -> dict:
    return {"name": "m", "data": {"train_dir": tmp_path / "t", "validation_dir": tmp_path / "v"},
            "model": {"ssl_checkpoint": tmp_path, "task": "multi_label"}, "training": training}


def test_a_multi_label_run_picks_its_best_epoch_by_map_unless_told(tmp_path):
    assert FinetuneConfig.model_validate(finetune_config(tmp_path)).training.metric_for_best_model == "map"
    chosen = FinetuneConfig.model_validate(finetune_config(tmp_path, metric_for_best_model="macro_f1"))
    assert chosen.training.metric_for_best_model == "macro_f1"


def test_a_single_label_metric_for_a_multi_label_run_is_refused_with_the_choices(tmp_path):
    with pytest.raises(ValidationError, match="single-label metric.*map, micro_f1, macro_f1 or loss"):
        FinetuneConfig.model_validate(finetune_config(tmp_path, metric_for_best_model="accuracy"))


def test_a_multi_label_metric_for_a_single_label_run_is_refused(tmp_path):
    config = finetune_config(tmp_path, metric_for_best_model="map")
    config["model"]["task"] = "single_label"
    with pytest.raises(ValidationError, match="multi-label metric: set model.task to multi_label"):
        FinetuneConfig.model_validate(config)


def test_mixup_is_refused_for_a_multi_label_run(tmp_path):
    with pytest.raises(ValidationError, match="mixup is not supported with model.task multi_label"):
        FinetuneConfig.model_validate(finetune_config(tmp_path, augmentation={"mixup_probability": 0.5}))


def test_the_task_left_at_its_default_keeps_a_run_fingerprint(tmp_path):
    config = finetune_config(tmp_path)
    del config["model"]["task"]
    plain = FinetuneConfig.model_validate(config)
    config["model"] |= {"task": "single_label", "thresholds": "per_class"}
    assert FinetuneConfig.model_validate(config).fingerprint() == plain.fingerprint()
    config["model"]["task"] = "multi_label"
    assert FinetuneConfig.model_validate(config).fingerprint() != plain.fingerprint()


def test_macro_f1_like_the_map_leaves_out_a_class_without_a_positive_clip():
    labels = LABELS.copy()
    labels[:, 1] = 0
    probabilities = labels * 0.6 + 0.2
    probabilities[0, 1] = 0.9  # a false alarm on the class: micro F1 counts it
    scores = multilabel.summary(labels, probabilities, 0.5)
    assert scores["macro_f1"] == pytest.approx(1.0) and scores["map"] == pytest.approx(1.0)
    assert scores["micro_f1"] < 1.0


def test_thresholds_set_for_a_single_label_run_are_refused(tmp_path):
    config = finetune_config(tmp_path)
    config["model"] |= {"task": "single_label", "thresholds": "global"}
    with pytest.raises(ValidationError, match="thresholds are a multi-label task's"):
        FinetuneConfig.model_validate(config)


def test_an_ensemble_config_is_checked_for_its_task_as_a_member_s_is(tmp_path):
    from lib.config import EnsembleConfig

    config = finetune_config(tmp_path) | {"sweep_last_n": [0]}
    del config["name"]
    assert EnsembleConfig.model_validate(config).training.metric_for_best_model == "map"
    with pytest.raises(ValidationError, match="mixup is not supported with model.task multi_label"):
        EnsembleConfig.model_validate(config | {"training": {"augmentation": {"mixup_probability": 0.5}}})


def test_a_multi_label_config_leaves_the_training_section_it_was_given_as_it_was(tmp_path):
    from lib.config import TrainingConfig

    training = TrainingConfig()
    config = FinetuneConfig.model_validate(finetune_config(tmp_path) | {"training": training})
    assert config.training.metric_for_best_model == "map" and training.metric_for_best_model == "accuracy"


def test_a_deployment_override_to_multi_label_picks_by_map_as_set_does(tmp_path):
    from flows.flags import apply_overrides

    config = finetune_config(tmp_path)
    del config["model"]["task"]
    changed = apply_overrides(FinetuneConfig.model_validate(config), ["model.task=multi_label"])
    assert changed.model.multi_label and changed.training.metric_for_best_model == "map"


def test_a_class_without_a_positive_clip_reports_no_recall_or_f1_rather_than_zero():
    labels = LABELS.copy()
    labels[:, 1] = 0
    report = multilabel.report(labels, labels * 0.6 + 0.2, np.full(3, 0.5), ["a", "b", "c"])
    assert report["per_class"]["b"] | {"threshold": None} == {
        "ap": None, "threshold": None, "precision": None, "recall": None, "f1": None, "support": 0}
