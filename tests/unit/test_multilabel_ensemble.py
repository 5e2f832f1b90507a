"""A multi-label ensemble on published members' stored logits: the vote, its selection and thresholds, the files it
leaves in best/, and the thresholds predict cuts a vote at."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lib.core.errors import EnsembleError
from lib.data.features import FeatureParams
from lib.evaluate.ensemble import evaluate_ensemble
from lib.evaluate.members import read_member
from lib.evaluate.multilabel import sigmoid
from lib.evaluate.predict import vote_thresholds

LABELS = ["a", "b", "c"]
TRUTH = np.array([[1, 0, 1], [1, 0, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [1, 1, 0]], dtype=np.float32)


def fake_member(root, name, logits, labels=TRUTH, multi_label=True, thresholds=(0.5, 0.5, 0.5)):
    """A published member's files: config.json, member.json, validation logits, and a multi-label one's thresholds."""
    folder = root / name
    folder.mkdir(parents=True)
    config = {"id2label": {str(i): n for i, n in enumerate(LABELS)}}
    (folder / "config.json").write_text(json.dumps(config | ({"problem_type": "multi_label_classification"}
                                                            if multi_label else {})))
    (folder / "member.json").write_text(json.dumps({
        "name": name, "freezing": "full", "feature_params": FeatureParams().model_dump(), "feature_cache_key": "k"}))
    np.savez(folder / "validation_logits.npz", logits=np.asarray(logits, np.float32), labels=np.asarray(labels))
    if multi_label:
        (folder / "thresholds.json").write_text(json.dumps({"thresholds": dict(zip(LABELS, thresholds, strict=True))}))
    return folder


def logits_ranking(right: list[int], seed: int) -> np.ndarray:
    """Logits that rank the `right` classes' positives above their negatives, and the others at random."""
    noise = np.random.default_rng(seed).normal(size=TRUTH.shape)
    logits = noise.copy()
    logits[:, right] = (TRUTH[:, right] * 2 - 1) * 3 + noise[:, right] * 0.1
    return logits


def test_members_right_about_different_classes_are_both_selected_and_the_vote_gets_its_own_thresholds(tmp_path):
    left = read_member(fake_member(tmp_path, "left", logits_ranking([0, 1], seed=1)))
    right = read_member(fake_member(tmp_path, "right", logits_ranking([2], seed=2)))
    result = evaluate_ensemble([left, right], tmp_path / "ensemble.json")
    assert result["task"] == "multi_label" and set(result["ensemble"]["weights"]) == {"left", "right"}
    vote = (sigmoid(np.load(left.path + "/validation_logits.npz")["logits"])
            + sigmoid(np.load(right.path + "/validation_logits.npz")["logits"])) / 2
    thresholds = result["thresholds"]["thresholds"]
    predicted = vote >= np.array([thresholds[name] for name in LABELS])
    assert result["ensemble"]["validation"]["micro_f1"] == pytest.approx(
        2 * (predicted & (TRUTH > 0)).sum() / (predicted.sum() + TRUTH.sum()))
    assert result["ensemble"]["beats_best_member"] and "beats its best member" in result["ensemble"]["verdict"]
    assert json.loads((tmp_path / "ensemble.json").read_text())["thresholds"] == result["thresholds"]


def test_an_ensemble_folder_keeps_only_its_task_s_figures(tmp_path):
    multi = [read_member(fake_member(tmp_path / "m", name, logits_ranking([0], seed)))
             for seed, name in enumerate(("x", "y"))]
    evaluate_ensemble(multi, tmp_path / "ensemble.json")
    assert {"average_precision.png", "precision_recall.png", "leaderboard.png"} <= {p.name for p in tmp_path.iterdir()}
    labels = TRUTH.argmax(axis=1)
    single = [read_member(fake_member(tmp_path / "s", name, logits_ranking([0], seed), labels, multi_label=False))
              for seed, name in enumerate(("x", "y"))]
    evaluate_ensemble(single, tmp_path / "ensemble.json")
    written = {p.name for p in tmp_path.iterdir()}
    assert "reliability.png" in written and not {"average_precision.png", "precision_recall.png"} & written
    evaluate_ensemble(multi, tmp_path / "ensemble.json")
    assert "reliability.png" not in {p.name for p in tmp_path.iterdir()}


def test_single_label_and_multi_label_members_are_not_voted_together(tmp_path):
    multi = read_member(fake_member(tmp_path, "multi", logits_ranking([0], 1)))
    single = read_member(fake_member(tmp_path, "single", logits_ranking([0], 2), TRUTH.argmax(axis=1),
                                     multi_label=False))
    with pytest.raises(EnsembleError, match="member single is single-label but multi is multi-label"):
        evaluate_ensemble([multi, single], tmp_path / "ensemble.json")


def test_predict_cuts_a_vote_at_the_ensemble_s_thresholds_else_the_members_weighted_mean(tmp_path):
    members = [read_member(fake_member(tmp_path, "x", logits_ranking([0], 1), thresholds=(0.2, 0.4, 0.6))),
               read_member(fake_member(tmp_path, "y", logits_ranking([0], 2), thresholds=(0.4, 0.6, 0.8)))]
    members[1].weight = 3.0
    warnings: list[str] = []
    np.testing.assert_allclose(vote_thresholds(tmp_path, members, warnings), [0.35, 0.55, 0.75])
    assert "weighted mean of the members' thresholds" in warnings[0]
    assert vote_thresholds(tmp_path, members[:1], []).tolist() == [0.2, 0.4, 0.6]
    (tmp_path / "ensemble.json").write_text(json.dumps({"thresholds": {"thresholds": {"a": 0.1, "b": 0.2, "c": 0.3}}}))
    assert vote_thresholds(tmp_path, members, []).tolist() == [0.1, 0.2, 0.3]
    (tmp_path / "ensemble.json").write_text(json.dumps({"thresholds": {"thresholds": {"a": 1.5, "b": 0.2, "c": 0.3}}}))
    with pytest.raises(EnsembleError, match="the threshold of .a. is 1.5, not a probability between 0 and 1"):
        vote_thresholds(tmp_path, members, [])


def test_a_multi_label_member_without_its_thresholds_is_refused(tmp_path):
    folder = fake_member(tmp_path, "x", logits_ranking([0], 1))
    (folder / "thresholds.json").unlink()
    with pytest.raises(EnsembleError, match="multi-label member without thresholds.json"):
        read_member(folder)
