import csv
import json
import os

import numpy as np
import pytest

from lib.ensemble import EnsembleError, evaluate_ensemble, read_member, soft_vote
from lib.features import FeatureParams

LABELS = ["a", "b"]


def fake_member(root, name, logits, labels, label_names=LABELS, cache_key="k1"):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"id2label": {str(i): n for i, n in enumerate(label_names)}}))
    (folder / "member.json").write_text(json.dumps({
        "name": name, "freezing": "full", "feature_params": FeatureParams().model_dump(), "feature_cache_key": cache_key,
    }))
    np.savez(folder / "validation_logits.npz", logits=np.asarray(logits, np.float32), labels=np.asarray(labels))
    (folder / "metrics.json").write_text(json.dumps(dict.fromkeys(["accuracy", "precision", "recall", "f1", "balanced_accuracy"], 0.5)))
    return folder


def test_soft_vote_is_the_weighted_mean_of_probabilities():
    p1 = np.array([[0.6, 0.4], [0.2, 0.8]])
    p2 = np.array([[0.0, 1.0], [0.4, 0.6]])
    np.testing.assert_allclose(soft_vote([p1, p2]), [[0.3, 0.7], [0.3, 0.7]])
    np.testing.assert_allclose(soft_vote([p1, p2], [3, 1]), [[0.45, 0.55], [0.25, 0.75]])


def test_ensemble_metrics_come_from_the_members_probabilities(tmp_path):
    labels = [0, 0, 1]
    # member x: right on clip 0 (barely), wrong on clip 1 (confidently), right on clip 2
    x = fake_member(tmp_path, "x", [[0.5, 0.0], [-3.0, 3.0], [0.0, 2.0]], labels)
    # member y: wrong on clip 0 (confidently), right on clip 1 (barely), right on clip 2
    y = fake_member(tmp_path, "y", [[-2.0, 2.0], [0.2, 0.0], [0.0, 1.0]], labels)
    equal = evaluate_ensemble([read_member(x), read_member(y)], tmp_path / "ensemble.json")
    # soft vote: clip 0 -> b (y's confidence wins), clip 1 -> b, clip 2 -> b  => 1/3 correct
    assert equal["ensemble"]["accuracy"] == pytest.approx(1 / 3)
    assert equal["ensemble"]["confusion_matrix"]["matrix"] == [[0, 2], [0, 1]]
    weighted = evaluate_ensemble([read_member(x, 10.0), read_member(y, 1.0)], tmp_path / "ensemble.json")
    assert weighted["ensemble"]["accuracy"] == pytest.approx(2 / 3)  # x dominates: clips 0 and 2 right
    saved = json.loads((tmp_path / "ensemble.json").read_text())
    assert saved["leaderboard"][-1]["name"] == "ensemble (soft vote)"
    assert [m["name"] for m in saved["members"]] == ["x", "y"]


def test_members_with_other_labels_or_validation_sets_are_refused(tmp_path):
    x = fake_member(tmp_path, "x", [[0.0, 1.0]], [1])
    z = fake_member(tmp_path, "z", [[0.0, 1.0]], [1], label_names=["b", "a"])
    with pytest.raises(EnsembleError, match="member z has labels"):
        evaluate_ensemble([read_member(x), read_member(z)], tmp_path / "e.json")
    w = fake_member(tmp_path, "w", [[0.0, 1.0]], [1], cache_key="other")
    with pytest.raises(EnsembleError, match="different feature caches"):
        evaluate_ensemble([read_member(x), read_member(w)], tmp_path / "e.json")


@pytest.mark.slow
def test_ensemble_flow_trains_three_members_on_one_feature_cache_and_predicts(
    prefect_harness, tmp_path, dataset_dirs, ssl_checkpoint, monkeypatch
):
    import lib.features
    import lib.member
    from flows.ensemble import EnsembleMembersFailed, ensemble
    from lib.config import EnsembleConfig
    from lib.predict import predict_files
    from lib.runtime import resolve_runtime

    builds = []
    real_build = lib.features.build_feature_cache
    monkeypatch.setattr("tasks.data.build_feature_cache", lambda *a, **k: builds.append(1) or real_build(*a, **k))
    real_train = lib.member.train_classifier

    def train_unless_broken(model, *args, **kwargs):
        if args[4].name == "broken":  # work_dir
            raise RuntimeError("simulated CUDA error")
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(lib.member, "train_classifier", train_unless_broken)
    train_dir, validation_dir = dataset_dirs
    config = EnsembleConfig.model_validate({
        "output_dir": str(tmp_path / "out"),
        "data": {"train_dir": str(train_dir), "validation_dir": str(validation_dir), "cache_dir": str(tmp_path / "cache")},
        "model": {"ssl_checkpoint": str(ssl_checkpoint)},
        "training": {"epochs": 6, "batch_size": 8, "gradient_accumulation_steps": 1, "learning_rate": 2e-3,
                     "warmup_steps": 0.1, "device": "cpu"},
        "members": [
            {"name": "head", "head_only": True, "learning_rate": 0.05},
            {"name": "last1", "train_last_n_layers": 1},
            {"name": "broken"},
            {"name": "full", "weight": 2.0},
        ],
    })
    with pytest.raises(EnsembleMembersFailed, match="1 of 4 members failed \\(broken\\)"):
        ensemble(config)

    best = tmp_path / "out" / "best"
    assert sorted(p.name for p in best.iterdir() if not p.name.startswith(".")) == ["ensemble.json", "full", "head", "last1"]
    # the rest is each member's live version folder, which best/<name> links to: no staging or old version
    assert sorted(p.name for p in best.iterdir() if p.name.startswith(".")) == sorted(
        os.readlink(best / name) for name in ("full", "head", "last1")
    )
    assert builds == [1]  # one feature cache, shared
    assert len(list((tmp_path / "cache" / "features").iterdir())) == 1
    assert len(list((tmp_path / "cache" / "encoders").iterdir())) == 1
    # in-process members show their metrics and plots in the UI too, as a member-<name> artifact
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        shown = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
            any_=["member-head", "member-last1", "member-full", "member-broken"])))
    assert sorted(artifact.key for artifact in shown) == ["member-full", "member-head", "member-last1"]
    assert all(artifact.data.count("data:image/png;base64,") == 2 for artifact in shown)
    board = json.loads((best / "ensemble.json").read_text())
    assert "simulated CUDA error" in board["failed"]["broken"]
    assert {row["name"] for row in board["leaderboard"]} == {"head", "last1", "full", "ensemble (soft vote)"}
    # the ensemble row is recomputed from the members' stored probabilities
    members = {m["name"]: m for m in board["members"]}
    probs = [np.exp(l) / np.exp(l).sum(1, keepdims=True)
             for l in (np.load(best / n / "validation_logits.npz")["logits"] for n in ("head", "last1", "full"))]
    labels = np.load(best / "full" / "validation_logits.npz")["labels"]
    voted = (probs[0] + probs[1] + 2 * probs[2]) / 4
    assert members["full"]["weight"] == 2.0
    assert board["ensemble"]["accuracy"] == pytest.approx(float((voted.argmax(1) == labels).mean()))
    assert board["ensemble"]["accuracy"] > 0.6

    # predict with the ensemble folder: one CSV row per clip, probabilities summing to one
    out = tmp_path / "pred.csv"
    summary = predict_files(best, validation_dir, out, resolve_runtime("cpu"), batch_size=7)
    rows = list(csv.DictReader(out.open()))
    assert summary["members"] == ["head", "last1", "full"] and len(rows) == len(labels)
    assert set(rows[0]) == {"file", "predicted_label", "prob_noise_burst", "prob_tone_high", "prob_tone_low"}
    for row in rows:
        assert sum(float(row[k]) for k in row if k.startswith("prob_")) == pytest.approx(1, abs=1e-5)
    # the CSV's predictions match the vote on the cached features (files are listed in the same order)
    predicted = [board["label_names"].index(row["predicted_label"]) for row in rows]
    assert np.mean(np.asarray(predicted) == voted.argmax(1)) >= 0.95


def test_publish_backups_and_staging_folders_are_never_members(tmp_path):
    from lib.ensemble import resolve_members

    fake_member(tmp_path, "real", [[0.0, 1.0]], [1])
    fake_member(tmp_path, ".real.previous", [[0.0, 1.0]], [1])
    fake_member(tmp_path, ".real.staging-1234", [[0.0, 1.0]], [1])
    assert [m.name for m in resolve_members(tmp_path)] == ["real"]


# --- predict: inputs and the output are checked before any model is loaded ----------------------


@pytest.fixture
def no_inference(monkeypatch):
    """Fail the test if prediction gets as far as loading a model."""
    from lib.model import ASTMeanPoolClassifier

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs and the output were checked")

    monkeypatch.setattr(ASTMeanPoolClassifier, "from_pretrained", refuse)


def one_wav(tmp_path):
    import soundfile

    path = tmp_path / "clips" / "a.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.zeros(1600, np.float32), 16000)
    return path


def published(root, name):
    folder = fake_member(root, name, [[0.0, 1.0]], [1])
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(2, np.float32)}, str(folder / "model.safetensors"))
    return folder


def predict(model, tmp_path, output=None):
    from lib.predict import predict_files
    from lib.runtime import resolve_runtime

    return predict_files(model, one_wav(tmp_path), output or tmp_path / "out.csv", resolve_runtime("cpu"))


def test_predict_names_a_missing_model_folder(tmp_path, no_inference):
    with pytest.raises(EnsembleError, match=r"--model \(model_path\) .*nope: no such folder; pass <output_dir>/best/"):
        predict(tmp_path / "nope", tmp_path)


def test_predict_names_a_member_without_readable_weights(tmp_path, no_inference):
    folder = fake_member(tmp_path / "best", "m", [[0.0, 1.0]], [1])
    with pytest.raises(EnsembleError, match=r"member m \(.*best/m\) has no model.safetensors"):
        predict(folder, tmp_path)
    (folder / "model.safetensors").write_text("not safetensors")
    with pytest.raises(EnsembleError, match=r".*best/m/model.safetensors is not a readable safetensors file"):
        predict(tmp_path / "best", tmp_path)


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("member.json", "{not json", r"m/member.json is not valid JSON"),
        ("config.json", "", r"m/config.json is not valid JSON"),
        ("member.json", '{"name": "m"}', r"m/member.json: no 'feature_params'"),
        ("member.json", "[1, 2]", r"m/member.json: expected a JSON object, found list"),
        ("config.json", '{"id2label": {"1": "a"}}', r"m/config.json: no 'id2label' entry for class 0"),
        ("ensemble.json", "{", r"best/ensemble.json is not valid JSON"),
        ("ensemble.json", '{"label_names": []}', r"best/ensemble.json: no 'members'"),
        ("ensemble.json", '{"members": [{"weight": 1}]}', r"best/ensemble.json: members\[0\] has no 'path'"),
    ],
)
def test_predict_names_a_corrupt_json_file_and_the_fix(tmp_path, no_inference, file, content, message):
    best = tmp_path / "best"
    folder = published(best, "m")
    (best / "ensemble.json").write_text(json.dumps({"members": [{"name": "m", "path": str(folder), "weight": 1.0}]}))
    (best if file == "ensemble.json" else folder).joinpath(file).write_text(content)
    with pytest.raises(EnsembleError, match=message) as error:
        predict(best, tmp_path)
    assert "re-publish" in str(error.value) or "re-run" in str(error.value)


def test_predict_checks_the_output_path_before_inference(tmp_path, no_inference, monkeypatch):
    member = published(tmp_path / "best", "m")
    (tmp_path / "a-dir").mkdir()
    with pytest.raises(EnsembleError, match=r"--output \(output_csv\) .*a-dir is a folder; pass a file name such as"):
        predict(member, tmp_path, tmp_path / "a-dir")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(EnsembleError, match=r"--output \(output_csv\) .*a-file/p.csv: .*a-file is a file, not a folder"):
        predict(member, tmp_path, tmp_path / "a-file" / "p.csv")
    import lib.predict

    monkeypatch.setattr(lib.predict.os, "access", lambda path, mode: False)  # tests run as root: fake a read-only dir
    with pytest.raises(EnsembleError, match=r"--output \(output_csv\) .*p.csv: cannot write in .*: permission denied"):
        predict(member, tmp_path, tmp_path / "new" / "p.csv")


@pytest.mark.slow
def test_predict_flow_fails_with_the_clear_message(prefect_harness, tmp_path):
    from flows.predict import predict as predict_flow
    from lib.config import PredictConfig

    config = PredictConfig(model_path=tmp_path / "nope", input_path=one_wav(tmp_path), output_csv=tmp_path / "o.csv")
    state = predict_flow(config, return_state=True)
    assert state.is_failed()
    assert "--model" in state.message and "nope: no such folder" in state.message
