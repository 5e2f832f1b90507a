"""Multi-label end to end: clips mixing two of the synthetic sources train to an mAP clearly above chance, predict
lists the labels at the fitted thresholds, a two-member ensemble and a cross-validation evaluate."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from lib.config import CrossvalConfig, DataConfig, EnsembleConfig, FeatureConfig, TrainingConfig
from lib.core.runtime import resolve_runtime
from lib.evaluate.multilabel import sigmoid
from lib.evaluate.predict import predict_files
from lib.model.classifier import build_classifier
from tests.layouts import CLASSES, make_multi_label_csv, make_multi_label_folders

pytestmark = pytest.mark.slow

TRAINING = dict(epochs=8, batch_size=8, gradient_accumulation_steps=1, learning_rate=3e-3, warmup_steps=0,
                device="cpu")


def test_a_multi_label_ensemble_ranks_above_chance_and_predict_lists_the_labels_at_their_thresholds(
    prefect_harness, tmp_path, ssl_checkpoint
):
    from flows.ensemble import ensemble

    make_multi_label_folders(tmp_path / "data", per_pair=4)
    config = EnsembleConfig.model_validate({
        "output_dir": tmp_path / "out",
        "data": {"train_dir": tmp_path / "data/train", "validation_dir": tmp_path / "data/validation",
                 "cache_dir": tmp_path / "cache"},
        "features": {"clip_seconds": 0.6, "max_frames": 64},  # the tiny checkpoint's input
        "model": {"ssl_checkpoint": ssl_checkpoint, "task": "multi_label"},
        "training": TRAINING,
        "members": [{"name": "full", "seed": 1}, {"name": "head", "seed": 2, "head_only": True}],
    })
    result = ensemble(config)
    best = tmp_path / "out" / "best"
    for name in ("full", "head"):
        metrics = json.loads((best / name / "metrics.json").read_text())
        assert metrics["map"] > metrics["chance_map"] + 0.15, (name, metrics["map"], metrics["chance_map"])
        assert sorted(metrics["per_class"]) == sorted(CLASSES)
        assert (best / name / "average_precision.png").is_file() and (best / name / "precision_recall.png").is_file()
        assert "## Thresholds" in (best / name / "README.md").read_text()
    assert result["task"] == "multi_label" and result["leaderboard"][0]["validation"]["map"] > 0
    stored = json.loads((best / "ensemble.json").read_text())
    thresholds = np.array([stored["thresholds"]["thresholds"][name] for name in CLASSES])

    summary = predict_files(best, tmp_path / "data" / "validation", tmp_path / "predictions.csv",
                            resolve_runtime("cpu"))
    with open(tmp_path / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:2] == ["file", "predicted_labels"]
    assert summary["thresholds"] == pytest.approx(dict(zip(CLASSES, thresholds, strict=True)))
    for row in rows:
        probabilities = np.array([float(row[f"prob_{name}"]) for name in CLASSES])
        above = [name for name, p, t in zip(CLASSES, probabilities, thresholds, strict=True) if p >= t - 1e-6]
        assert row["predicted_labels"].split(";") == above or (not above and row["predicted_labels"] == "")


def test_one_member_s_predictions_are_its_sigmoid_outputs_cut_at_its_own_thresholds(
    prefect_harness, tmp_path, ssl_checkpoint
):
    from flows.finetune import finetune
    from lib.config import FinetuneConfig

    make_multi_label_csv(tmp_path / "data", per_pair=3, row_per_label=True)
    finetune(FinetuneConfig.model_validate({
        "name": "ml", "output_dir": tmp_path / "out",
        "data": {"layout": "csv", "root": tmp_path / "data", "cache_dir": tmp_path / "cache"},
        "features": {"clip_seconds": 0.6, "max_frames": 64},
        "model": {"ssl_checkpoint": ssl_checkpoint, "task": "multi_label", "thresholds": "global"},
        "training": TRAINING,
    }))
    member = tmp_path / "out" / "best" / "ml"
    fitted = json.loads((member / "thresholds.json").read_text())
    assert fitted["mode"] == "global" and len(set(fitted["thresholds"].values())) == 1
    stored = np.load(member / "validation_logits.npz")
    assert stored["labels"].shape == (len(stored["logits"]), len(CLASSES))
    predict_files(member, tmp_path / "data" / "audio", tmp_path / "p.csv", resolve_runtime("cpu"))
    with open(tmp_path / "p.csv", newline="") as handle:
        rows = {row["file"].rsplit("/", 1)[1]: row for row in csv.DictReader(handle)}
    names = sorted(rows)
    validation = [name for name in names if name.startswith("validation-")]
    probabilities = np.array([[float(rows[name][f"prob_{label}"]) for label in CLASSES] for name in validation])
    np.testing.assert_allclose(probabilities, sigmoid(stored["logits"]), atol=2e-4)  # the same clips, in order


def test_export_and_the_onnx_backend_refuse_a_multi_label_member_in_one_line(tmp_path, ssl_checkpoint):
    from transformers import ASTModel

    from lib.core.errors import EnsembleError
    from lib.evaluate.export import export_onnx
    from tests.helpers import small_config

    member = tmp_path / "m"
    build_classifier(ASTModel(small_config()), list(CLASSES), multi_label=True).save_pretrained(member)
    (member / "member.json").write_text(json.dumps({"feature_params": {}}))
    (member / "thresholds.json").write_text(json.dumps({"thresholds": dict.fromkeys(CLASSES, 0.5)}))
    with pytest.raises(EnsembleError, match="multi-label models are not exported yet"):
        predict_files(member, tmp_path, tmp_path / "p.csv", resolve_runtime("cpu"), backend="onnxruntime")
    with pytest.raises(EnsembleError, match="multi-label members are not exported yet"):
        export_onnx(member)


def test_a_multi_label_cross_validation_reports_the_mean_map_over_its_folds(prefect_harness, tmp_path, ssl_checkpoint):
    from flows.crossval import crossval

    make_multi_label_csv(tmp_path / "data", per_pair=3)
    config = CrossvalConfig(
        name="cv", output_dir=tmp_path / "out",
        data=DataConfig(layout="csv", root=tmp_path / "data", folds=3, cache_dir=tmp_path / "cache"),
        features=FeatureConfig(clip_seconds=0.6, max_frames=64),
        model={"ssl_checkpoint": ssl_checkpoint, "task": "multi_label"},
        training=TrainingConfig(**TRAINING | {"epochs": 2}),
    )
    summary = crossval(config)
    maps = [summary["folds"][f"fold-{n}"]["metrics"]["map"] for n in (1, 2, 3)]
    assert summary["validation"]["map"]["mean"] == pytest.approx(np.mean(maps))
    assert summary["validation"]["map"]["std"] == pytest.approx(np.std(maps, ddof=1))
    assert "accuracy" not in summary["validation"]
