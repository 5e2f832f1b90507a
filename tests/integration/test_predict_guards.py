"""predict's guards: it overwrites only its own CSVs, and says when a member is at chance or its
preprocessor_config.json contradicts member.json (tiny untrained members, one short clip: no training)."""

import csv
import json
import logging

import numpy as np
import pytest

from lib.core.errors import EnsembleError
from lib.core.runtime import resolve_runtime
from lib.data.features import FeatureParams
from lib.evaluate.predict import predict_files

LABELS = ["a", "b"]
# the tiny encoder's input (tests.helpers.small_config): 64 mel bins x 64 frames
PARAMS = FeatureParams(num_mel_bins=64, max_frames=64)


def member(root, name="m", temperature=1.0, bias=(3.0, 0.0), preprocessor=None):
    """A published member with real (untrained) weights; its classifier bias makes it confident (not at chance)."""
    import torch
    from transformers import ASTModel

    from lib.data.features import make_feature_extractor
    from lib.model.classifier import build_classifier
    from tests.helpers import small_config

    torch.manual_seed(0)
    model = build_classifier(ASTModel(small_config()), LABELS)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor(bias))
    folder = root / name
    folder.mkdir(parents=True)
    model.save_pretrained(str(folder))
    (folder / "member.json").write_text(json.dumps({
        "name": name, "freezing": "full", "feature_params": PARAMS.model_dump(), "feature_cache_key": "k1",
    }))
    (folder / "calibration.json").write_text(json.dumps({"temperature": temperature}))
    make_feature_extractor(PARAMS).save_pretrained(str(folder))  # preprocessor_config.json, as training saves it
    if preprocessor:
        path = folder / "preprocessor_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **preprocessor}))
    return folder


def clips(tmp_path, count=3):
    import soundfile

    folder = tmp_path / "clips"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        soundfile.write(folder / f"c{index}.wav", rng.standard_normal(1600).astype(np.float32) * 0.1, 16000)
    return folder


def predict(model, tmp_path, output=None):
    return predict_files(model, clips(tmp_path), output or tmp_path / "out.csv", resolve_runtime("cpu"))


def rows(path):
    with path.open() as handle:
        return list(csv.DictReader(line for line in handle if not line.startswith("#")))


# --- 1. an existing --output is overwritten only if it is a predictions CSV astft wrote -----------


@pytest.mark.parametrize("name", ["important.txt", "notes.tsv", "table.csv"])
def test_predict_refuses_an_existing_file_that_is_not_its_own_csv(tmp_path, name, monkeypatch):
    from lib.model.classifier import ASTMeanPoolClassifier

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the output was checked")

    monkeypatch.setattr(ASTMeanPoolClassifier, "from_pretrained", refuse)
    folder = member(tmp_path / "best")
    target = tmp_path / name
    target.write_text("my notes, not predictions\nsecond line\n")
    with pytest.raises(EnsembleError) as error:
        predict(folder, tmp_path, target)
    message = str(error.value)
    assert f"--output (output_csv) {target} exists and is not a predictions CSV astft wrote" in message
    assert "'my notes, not predictions'" in message
    assert "choose another --output, or delete the file first" in message
    assert target.read_text() == "my notes, not predictions\nsecond line\n"


def test_predict_overwrites_its_own_csv_and_an_empty_file(tmp_path):
    folder = member(tmp_path / "best")
    output = tmp_path / "p.txt"
    first = predict(folder, tmp_path, output)
    assert output.read_text().splitlines()[0] == "file,predicted_label,prob_a,prob_b"
    assert first["predicted"] == 3 and len(rows(output)) == 3
    output.write_text(output.read_text() + "an extra line a user would lose? no: it is astft's CSV\n")
    assert predict(folder, tmp_path, output)["predicted"] == 3
    assert len(rows(output)) == 3
    # a CSV an older astft wrote has the same header, so it is overwritten too; an empty file holds nothing to lose
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert predict(folder, tmp_path, empty)["predicted"] == 3 and len(rows(empty)) == 3


# --- 2. a member at chance is named -----------------------------------------------------------------


def test_a_member_at_chance_is_warned_about(tmp_path, caplog):
    folder = member(tmp_path / "best", temperature=1e6)  # every probability 1/2 within 1e-6
    with caplog.at_level(logging.WARNING, logger="lib.evaluate.predict"):
        summary = predict(folder, tmp_path)
    warning = (
        "member m is at chance on these clips (temperature 1e+06): every probability is 1/2 within 0.001, so its "
        "labels are ties broken arbitrarily and its probabilities carry no information; retrain or drop it"
    )
    assert summary["warnings"] == [warning]
    assert warning in caplog.messages
    assert all(float(row["prob_a"]) == pytest.approx(0.5, abs=1e-3) for row in rows(tmp_path / "out.csv"))


def test_a_confident_member_and_a_matching_preprocessor_config_give_no_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="lib.evaluate.predict"):
        summary = predict(member(tmp_path / "best"), tmp_path)
    assert summary["warnings"] == [] and not caplog.messages


def test_only_the_member_at_chance_is_named_in_an_ensemble(tmp_path):
    best = tmp_path / "best"
    member(best, "sure")
    member(best, "flat", bias=(0.0, 0.0), temperature=1e6)
    summary = predict(best, tmp_path)
    assert [w.split(" is at chance")[0] for w in summary["warnings"]] == ["member flat"]
    assert {row["predicted_label"] for row in rows(tmp_path / "out.csv")} == {"a"}  # the confident member decides


# --- 3. a preprocessor_config.json that contradicts member.json is named --------------------------


def test_a_preprocessor_config_that_contradicts_member_json_is_warned_about_and_member_json_is_used(
    tmp_path, caplog
):
    disagreeing = member(tmp_path / "best", "m", preprocessor={"sampling_rate": 8000, "num_mel_bins": 128})
    with caplog.at_level(logging.WARNING, logger="lib.evaluate.predict"):
        summary = predict(disagreeing, tmp_path, tmp_path / "disagreeing.csv")
    assert len(summary["warnings"]) == 1
    warning = summary["warnings"][0]
    assert warning.startswith(f"member m ({disagreeing}): preprocessor_config.json disagrees with member.json's")
    assert "sampling_rate 8000 vs sample_rate_hz 16000; num_mel_bins 128 vs num_mel_bins 64" in warning
    assert "predict uses member.json's" in warning and warning in caplog.messages
    # the features are member.json's: the same probabilities as the member with a matching preprocessor_config.json
    agreeing = member(tmp_path / "other", "m")
    assert predict(agreeing, tmp_path, tmp_path / "agreeing.csv")["warnings"] == []
    assert rows(tmp_path / "disagreeing.csv") == rows(tmp_path / "agreeing.csv")
