import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from lib.core.errors import EnsembleError
from lib.data.features import FeatureParams
from lib.evaluate.calibration import fit_temperature, softmax
from lib.evaluate.ensemble import evaluate_ensemble, soft_vote
from lib.evaluate.members import read_member

LABELS = ["a", "b"]


def fake_member(root, name, logits, labels, label_names=LABELS, cache_key="k1", temperature=1.0, test=None):
    """A published member's files; temperature None: no calibration.json; test: (logits, labels) of a test split."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"id2label": {str(i): n for i, n in enumerate(label_names)}}))
    (folder / "member.json").write_text(json.dumps({
        "name": name, "freezing": "full", "feature_params": FeatureParams().model_dump(),
        "feature_cache_key": cache_key,
    }))
    np.savez(folder / "validation_logits.npz", logits=np.asarray(logits, np.float32), labels=np.asarray(labels))
    if test is not None:
        np.savez(folder / "test_logits.npz", logits=np.asarray(test[0], np.float32), labels=np.asarray(test[1]))
    if temperature is not None:
        (folder / "calibration.json").write_text(json.dumps({"temperature": temperature}))
    return folder


def test_soft_vote_is_the_weighted_mean_of_probabilities():
    p1 = np.array([[0.6, 0.4], [0.2, 0.8]])
    p2 = np.array([[0.0, 1.0], [0.4, 0.6]])
    np.testing.assert_allclose(soft_vote([p1, p2]), [[0.3, 0.7], [0.3, 0.7]])
    np.testing.assert_allclose(soft_vote([p1, p2], [3, 1]), [[0.45, 0.55], [0.25, 0.75]])


def test_ensemble_metrics_come_from_the_members_calibrated_probabilities(tmp_path):
    labels = [0, 0, 1]
    # member x: right on clip 0 (barely), wrong on clip 1 (confidently), right on clip 2
    x = fake_member(tmp_path, "x", [[0.5, 0.0], [-3.0, 3.0], [0.0, 2.0]], labels)
    # member y: wrong on clip 0 (confidently), right on clip 1 (barely), right on clip 2
    y = fake_member(tmp_path, "y", [[-2.0, 2.0], [0.2, 0.0], [0.0, 1.0]], labels)
    equal = evaluate_ensemble([read_member(x), read_member(y)], tmp_path / "ensemble.json", selection="all")
    # soft vote: clip 0 -> b (y's confidence wins), clip 1 -> b, clip 2 -> b  => 1/3 correct
    assert equal["ensemble"]["validation"]["accuracy"] == pytest.approx(1 / 3)
    assert equal["ensemble"]["validation"]["confusion_matrix"]["matrix"] == [[0, 2], [0, 1]]
    weighted = evaluate_ensemble(
        [read_member(x), read_member(y)], tmp_path / "ensemble.json", weights={"x": 10.0, "y": 1.0}
    )
    assert weighted["ensemble"]["validation"]["accuracy"] == pytest.approx(2 / 3)  # x dominates: clips 0, 2 right
    assert weighted["selection"] == "config weights"
    saved = json.loads((tmp_path / "ensemble.json").read_text())
    assert [(row["name"], row["kind"]) for row in saved["leaderboard"][-2:]] == [
        ("mean of all members", "mean"), ("ensemble (config weights)", "ensemble")
    ]
    assert [(m["name"], m["weight"], m["temperature"]) for m in saved["members"]] == [("x", 10.0, 1.0), ("y", 1.0, 1.0)]
    # a temperature sharpens or softens a member's vote: y at T = 20 no longer outvotes x on clip 0
    soft_y = fake_member(tmp_path / "t", "y", [[-2.0, 2.0], [0.2, 0.0], [0.0, 1.0]], labels, temperature=20.0)
    tempered = evaluate_ensemble([read_member(x), read_member(soft_y)], tmp_path / "ensemble.json", selection="all")
    assert tempered["ensemble"]["validation"]["accuracy"] == pytest.approx(2 / 3)
    assert tempered["members"][1]["temperature"] == 20.0


# a is right on clips 0-2, b on clips 2-3, c always uniform (test_calibration's greedy case, as logits)
GREEDY_LABELS = [0, 1, 2, 0]
GREEDY_LOGITS = {
    "a": np.log(0.8 * np.eye(3)[[0, 1, 2, 1]] + 0.2 / 3),
    "b": np.log(0.8 * np.eye(3)[[2, 0, 2, 0]] + 0.2 / 3),
    "c": np.zeros((4, 3)),
}


def test_greedy_selection_weights_the_vote_and_says_when_it_does_not_beat_the_best_member(tmp_path):
    members = [read_member(fake_member(tmp_path, name, logits, GREEDY_LABELS, label_names=["p", "q", "r"]))
               for name, logits in GREEDY_LOGITS.items()]
    result = evaluate_ensemble(members, tmp_path / "ensemble.json")
    assert result["selection"] == "greedy" and result["ensemble"]["weights"] == {"a": 2.0, "b": 1.0}
    # predict votes with the selected members only, at their counts
    assert [(m["name"], m["weight"]) for m in result["members"]] == [("a", 2.0), ("b", 1.0)]
    rows = {row["name"]: row for row in result["leaderboard"]}
    # members by validation accuracy, ties by NLL (c, uniform, scores 2/4 by argmax luck as b does, at a lower NLL)
    assert list(rows) == ["a", "c", "b", "mean of all members", "ensemble (greedy)"]
    assert rows["c"]["weight"] == 0.0
    # (2a + b) / 3 is right on clips 0-2, as a alone: no accuracy gained, but a lower NLL
    assert result["ensemble"]["best_member"] == "a"
    gain = result["ensemble"]["gain_over_best_member"]["validation"]
    assert gain["accuracy"] == 0 and gain["nll"] > 0
    assert not result["ensemble"]["beats_best_member"]
    assert result["ensemble"]["verdict"].startswith("the ensemble (greedy) does NOT beat its best member a")
    calibration = rows["ensemble (greedy)"]["validation"]["calibration"]
    assert set(calibration) == {"before", "after"} and set(calibration["after"]) == {"nll", "brier", "ece"}
    assert (tmp_path / "leaderboard.png").stat().st_size > 0 and (tmp_path / "reliability.png").stat().st_size > 0


def test_validation_alone_chooses_temperatures_and_weights(tmp_path):
    """The test split is scored, never used: corrupt its labels and nothing chosen changes."""
    test_labels = np.array([1, 2, 0, 1, 2, 0])
    # on test, b is right everywhere and a nowhere: a selection that peeked at test would start from b
    test = {"a": np.eye(3)[(test_labels + 1) % 3] * 3, "b": np.eye(3)[test_labels] * 3, "c": np.zeros((6, 3))}

    def run(folder, labels):
        members = [
            read_member(fake_member(folder, name, 2 * logits, GREEDY_LABELS, label_names=["p", "q", "r"],
                                    temperature=None, test=(test[name], labels)))
            for name, logits in GREEDY_LOGITS.items()
        ]
        return evaluate_ensemble(members, folder / "ensemble.json")

    honest = run(tmp_path / "honest", test_labels)
    corrupted = run(tmp_path / "corrupted", (test_labels + 1) % 3)
    assert honest["members"] == [
        {**member, "path": member["path"].replace("corrupted", "honest")} for member in corrupted["members"]
    ]
    assert honest["ensemble"]["weights"] == corrupted["ensemble"]["weights"]
    assert {m["name"] for m in honest["members"]} <= {"a", "b"} and "a" in honest["ensemble"]["weights"]
    for member in honest["members"]:  # fitted here (no calibration.json), on the validation logits
        expected = fit_temperature(2 * GREEDY_LOGITS[member["name"]], np.asarray(GREEDY_LABELS))
        assert member["temperature"] == pytest.approx(expected) and expected > 1
    # test is reported, apart from validation, and the corruption shows there only
    assert honest["ensemble"]["test"]["accuracy"] != corrupted["ensemble"]["test"]["accuracy"]
    assert honest["ensemble"]["validation"] == corrupted["ensemble"]["validation"]
    assert honest["ensemble"]["verdict"].startswith("the ensemble (greedy)")
    assert "test accuracy" in honest["ensemble"]["verdict"]


def test_members_with_other_labels_or_validation_sets_are_refused(tmp_path):
    x = fake_member(tmp_path, "x", [[0.0, 1.0]], [1])
    z = fake_member(tmp_path, "z", [[0.0, 1.0]], [1], label_names=["b", "a"])
    with pytest.raises(EnsembleError, match="member z has labels"):
        evaluate_ensemble([read_member(x), read_member(z)], tmp_path / "e.json")
    w = fake_member(tmp_path, "w", [[0.0, 1.0]], [1], cache_key="other")
    with pytest.raises(EnsembleError, match="different feature caches"):
        evaluate_ensemble([read_member(x), read_member(w)], tmp_path / "e.json")


@pytest.mark.slow
def test_ensemble_flow_trains_a_sweep_on_one_feature_cache_and_predict_reproduces_its_accuracy(
    prefect_harness, tmp_path, dataset_dirs, test_split, ssl_checkpoint, monkeypatch
):
    import lib.data.features
    import lib.recipes.finetune
    from flows.ensemble import EnsembleMembersFailed, ensemble
    from lib.config import EnsembleConfig
    from lib.core.runtime import resolve_runtime
    from lib.evaluate.predict import predict_files

    builds = []
    real_build = lib.data.features.build_feature_cache
    monkeypatch.setattr("tasks.data.build_feature_cache", lambda *a, **k: builds.append(1) or real_build(*a, **k))
    real_train = lib.recipes.finetune.run_trainer

    def train_unless_broken(setup):
        if setup.work_dir.name == "broken":
            raise RuntimeError("simulated CUDA error")
        return real_train(setup)

    monkeypatch.setattr(lib.recipes.finetune, "run_trainer", train_unless_broken)
    train_dir, validation_dir = dataset_dirs
    config = EnsembleConfig.model_validate({
        "output_dir": str(tmp_path / "out"),
        "data": {"train_dir": str(train_dir), "validation_dir": str(validation_dir), "test_dir": str(test_split),
                 "cache_dir": str(tmp_path / "cache")},
        "model": {"ssl_checkpoint": str(ssl_checkpoint)},
        "training": {"epochs": 6, "batch_size": 8, "gradient_accumulation_steps": 1, "learning_rate": 2e-3,
                     "warmup_steps": 0.1, "device": "cpu"},
        "members": [{"name": "head", "head_only": True, "learning_rate": 0.05}, {"name": "broken"}],
        "sweep_last_n": [1, 2],  # last-1, and last-2 = full (the test encoder has 2 layers)
    })
    with pytest.raises(EnsembleMembersFailed, match="1 of 4 members failed \\(broken\\)"):
        ensemble(config)

    best = tmp_path / "out" / "best"
    names = ("head", "last-1", "last-2")
    assert sorted(p.name for p in best.iterdir() if not p.name.startswith(".")) == sorted(
        ["README.md", "ensemble.json", "leaderboard.png", "reliability.png", *names]
    )
    from lib.publish.card import read_card_metadata

    ensemble_json = json.loads((best / "ensemble.json").read_text())
    [validation] = [result for result in read_card_metadata(best / "README.md")["model-index"][0]["results"]
                    if result["dataset"]["split"] == "validation"]
    card = {metric["type"]: metric["value"] for metric in validation["metrics"]}
    assert card["accuracy"] == round(ensemble_json["ensemble"]["validation"]["accuracy"], 4)
    # the rest is each member's live version folder, which best/<name> links to: no staging or old version
    assert sorted(p.name for p in best.iterdir() if p.name.startswith(".")) == sorted(
        os.readlink(best / name) for name in names
    )
    assert builds == [1]  # one feature cache, shared
    assert len(list((tmp_path / "cache" / "features").iterdir())) == 1
    assert len(list((tmp_path / "cache" / "encoders").iterdir())) == 1
    # in-process members show their metrics and plots in the UI too, as a member-<name> artifact
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        shown = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
            any_=["member-head", "member-last-1", "member-last-2", "member-broken"])))
    assert sorted(artifact.key for artifact in shown) == ["member-head", "member-last-1", "member-last-2"]
    # the member sub-runs are named after their members, and the parent keeps a table of their results
    with get_client(sync_client=True) as client:
        names_shown = {run.name for run in client.read_flow_runs()}
        versions = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
            any_=["ensemble-members"])))
    versions = [artifact for artifact in versions if '"broken"' in artifact.data]  # this run's (the harness is shared)
    assert len(versions) == 4  # updated as each member finished
    members_table = max(versions, key=lambda artifact: artifact.created)
    assert {"member head", "member last-1", "member last-2", "member broken"} <= names_shown
    table = {row["member"]: row for row in json.loads(members_table.data)}
    assert {name: row["status"] for name, row in table.items()} == {
        "head": "published", "broken": "failed", "last-1": "published", "last-2": "published"}
    head_accuracy = json.loads((best / "head" / "metrics.json").read_text())["accuracy"]
    assert table["head"]["val accuracy"] == round(head_accuracy, 4)
    assert "simulated CUDA error" in table["broken"]["note"]
    assert all(artifact.data.count("data:image/png;base64,") == 2 for artifact in shown)
    board = json.loads((best / "ensemble.json").read_text())
    assert "simulated CUDA error" in board["failed"]["broken"]
    assert [row["name"] for row in board["leaderboard"]][-2:] == ["mean of all members", "ensemble (greedy)"]
    assert {row["name"] for row in board["leaderboard"][:-2]} == set(names)
    assert json.loads((best / "last-2" / "member.json").read_text())["freezing"] == "full"
    # temperatures are the members' own (fitted on their validation logits); weights are greedy counts
    for member in board["members"]:
        calibration = json.loads((best / member["name"] / "calibration.json").read_text())
        assert member["temperature"] == calibration["temperature"]
    weights = board["ensemble"]["weights"]
    assert weights and all(float(w).is_integer() for w in weights.values())
    assert [m["name"] for m in board["members"]] == [n for n in names if n in weights]
    # the ensemble row is recomputed from the members' stored, calibrated probabilities
    vote = {}
    for split, file in (("validation", "validation_logits.npz"), ("test", "test_logits.npz")):
        stored = {m["name"]: np.load(best / m["name"] / file) for m in board["members"]}
        labels = next(iter(stored.values()))["labels"]
        vote[split] = sum(
            m["weight"] * softmax(stored[m["name"]]["logits"], m["temperature"]) for m in board["members"]
        )
        assert board["ensemble"][split]["accuracy"] == pytest.approx(float((vote[split].argmax(1) == labels).mean()))
        assert board["ensemble"][split]["num_samples"] == 18
    assert board["ensemble"]["validation"]["accuracy"] > 0.6
    verdict = board["ensemble"]["verdict"]
    assert ("does NOT beat" in verdict) == (not board["ensemble"]["beats_best_member"]) and "test accuracy" in verdict
    # the UI shows the verdict, the leaderboard table and both figures (PNG embedded as a data URI)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    keys = [
        "ensemble-leaderboard", "ensemble-confusion-matrix", "ensemble-leaderboard-plot", "ensemble-reliability-plot"
    ]
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
        artifacts = {a.key: a for a in found}
    assert set(artifacts) == set(keys)
    assert verdict in artifacts["ensemble-confusion-matrix"].data
    for key in ("ensemble-leaderboard-plot", "ensemble-reliability-plot"):
        assert "](data:image/png;base64," in artifacts[key].data
    table = json.loads(artifacts["ensemble-leaderboard"].data)
    assert [row["name"] for row in table] == [row["name"] for row in board["leaderboard"]]
    assert list(table[0]) == ["name", "weight", "val accuracy", "test accuracy", "val NLL", "test NLL", "test gain"]

    # predict with the ensemble folder: its CSV reproduces the reported accuracy exactly, on validation and test
    for split, folder in (("validation", validation_dir), ("test", test_split)):
        out = tmp_path / f"{split}.csv"
        summary = predict_files(best, folder, out, resolve_runtime("cpu"), batch_size=7)
        assert summary["members"] == [m["name"] for m in board["members"]]
        assert summary["weights"] == {m["name"]: m["weight"] for m in board["members"]}
        assert summary["temperatures"] == {m["name"]: m["temperature"] for m in board["members"]}
        rows = list(csv.DictReader(out.open()))
        assert len(rows) == 18
        assert set(rows[0]) == {"file", "predicted_label", "prob_noise_burst", "prob_tone_high", "prob_tone_low"}
        for row in rows:
            assert sum(float(row[k]) for k in row if k.startswith("prob_")) == pytest.approx(1, abs=1e-5)
        truth = [Path(row["file"]).parent.name for row in rows]
        accuracy = np.mean([row["predicted_label"] == label for row, label in zip(rows, truth, strict=True)])
        assert accuracy == board["ensemble"][split]["accuracy"]
        # the class folders score it too, and members greedy selection left out are named as not used
        assert summary["scores"]["accuracy"] == pytest.approx(accuracy)
        assert summary["scores"]["confusion_matrix"]["matrix"] == board["ensemble"][split]["confusion_matrix"]["matrix"]
        assert summary["not_in_ensemble"] == sorted(set(names) - set(weights))
        # and its probabilities are the calibrated vote (files are listed in the cache's order)
        probabilities = np.array([[float(row[f"prob_{name}"]) for name in board["label_names"]] for row in rows])
        np.testing.assert_allclose(probabilities, vote[split] / sum(weights.values()), atol=1e-4)


def test_publish_backups_and_staging_folders_are_never_members(tmp_path):
    from lib.evaluate.members import resolve_members

    fake_member(tmp_path, "real", [[0.0, 1.0]], [1])
    fake_member(tmp_path, ".real.previous", [[0.0, 1.0]], [1])
    fake_member(tmp_path, ".real.staging-1234", [[0.0, 1.0]], [1])
    assert [m.name for m in resolve_members(tmp_path)] == ["real"]


# --- predict: inputs and the output are checked before any model is loaded ----------------------


@pytest.fixture
def no_inference(monkeypatch):
    """Fail the test if prediction gets as far as loading a model."""
    from lib.model.classifier import ASTMeanPoolClassifier

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
    from lib.core.runtime import resolve_runtime
    from lib.evaluate.predict import predict_files

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
    with pytest.raises(
        EnsembleError, match=r"--output \(output_csv\) .*a-file/p.csv: .*a-file is a file, not a folder"
    ):
        predict(member, tmp_path, tmp_path / "a-file" / "p.csv")
    with pytest.raises(EnsembleError, match=r"--output \(output_csv\) /proc/p.csv: cannot write in /proc"):
        predict(member, tmp_path, "/proc/p.csv")  # a real probe: os.access says root may write there
    import lib.core.guards

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    # tests run as root: fake a read-only dir
    monkeypatch.setattr(lib.core.guards.tempfile, "TemporaryFile", read_only)
    with pytest.raises(
        EnsembleError, match=r"--output \(output_csv\) .*p.csv: cannot write in .* \(Permission denied\)"
    ):
        predict(member, tmp_path, tmp_path / "new" / "p.csv")


def test_predict_never_overwrites_what_it_reads_or_a_file_that_is_not_a_csv(tmp_path, no_inference):
    best = tmp_path / "best"
    member = published(best, "m")
    weights = (member / "model.safetensors").read_bytes()
    for inside in (member / "model.safetensors", best / "predictions.csv"):
        with pytest.raises(EnsembleError, match=r"is inside --model \(model_path\) .*: writing there could overwrite"):
            predict(best, tmp_path, inside)
    with pytest.raises(EnsembleError, match=r"a.wav is an input clip; pass another file name"):
        predict(member, tmp_path, tmp_path / "clips" / "a.wav")
    (tmp_path / "notes.json").write_text("{}")
    with pytest.raises(EnsembleError, match=r"notes.json exists and is not a CSV \(.json\); .*ending in .csv"):
        predict(member, tmp_path, tmp_path / "notes.json")
    assert (member / "model.safetensors").read_bytes() == weights and (tmp_path / "notes.json").read_text() == "{}"


def test_predict_refuses_a_member_with_a_nan_weight(tmp_path):
    from transformers import ASTModel

    from lib.model.classifier import build_classifier
    from tests.helpers import small_config

    model = build_classifier(ASTModel(small_config()), LABELS)
    model.classifier.bias.data[0] = float("nan")
    folder = fake_member(tmp_path / "best", "m", [[0.0, 1.0]], [1])
    model.save_pretrained(str(folder))
    with pytest.raises(
        EnsembleError, match=r"member m \(.*\): 1 tensors hold NaN or inf \(classifier.bias\); re-publish"
    ):
        predict(folder, tmp_path)


@pytest.mark.slow
def test_predict_flow_fails_with_the_clear_message(prefect_harness, tmp_path):
    from flows.predict import predict as predict_flow
    from lib.config import PredictConfig

    config = PredictConfig(model_path=tmp_path / "nope", input_path=one_wav(tmp_path), output_csv=tmp_path / "o.csv")
    state = predict_flow(config, return_state=True)
    assert state.is_failed()
    assert "--model" in state.message and "nope: no such folder" in state.message


def test_predict_scores_class_folders_only_and_says_why_not(tmp_path):
    from lib.evaluate.predict import scores_by_folder

    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    scores, why = scores_by_folder(tmp_path, [tmp_path / "a" / "1.wav", tmp_path / "b" / "2.wav",
                                              tmp_path / "b" / "3.wav"], probabilities, ["a", "b"])
    assert why is None and scores["accuracy"] == pytest.approx(2 / 3)
    assert scores["confusion_matrix"]["matrix"] == [[1, 0], [1, 1]]
    assert scores_by_folder(tmp_path, [tmp_path / "a" / "1.wav", tmp_path / "2.wav"], probabilities[:2], ["a", "b"]
                            ) == (None, f"1 clip(s) lie directly in {tmp_path}, outside any class folder")
    assert scores_by_folder(tmp_path, [tmp_path / "birds" / "1.wav"], probabilities[:1], ["a", "b"]
                            ) == (None, "folders ['birds'] are not labels of the model (a, b)")
    assert scores_by_folder(tmp_path, [tmp_path / "1.wav"], probabilities[:1], ["a", "b"]) == (None, None)
