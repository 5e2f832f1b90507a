import json
import re
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import numpy as np
import pytest
import torch
from PIL import Image

import lib.data.features
import tasks.data
from lib.config import DataConfig, FinetuneConfig, ModelConfig, TrainingConfig
from lib.data.features import FeatureCacheRef, load_split
from lib.model.classifier import ASTMeanPoolClassifier
from tests.helpers import run_artifacts, run_logs

pytestmark = pytest.mark.slow

BYTECODE = re.compile(r"\b(RESUME|LOAD_GLOBAL|LOAD_FAST|RETURN_VALUE)\b")
CLASSES = {"noise_burst": 0, "tone_high": 1, "tone_low": 2}
PUBLISHED_FILES = (
    "model.safetensors", "config.json", "preprocessor_config.json", "metrics.json", "confusion_matrix.json",
    "label_map.json", "run_config.json", "member.json", "train_logtiny_last1.txt", "classifier.py",
    "calibration.json", "validation_logits.npz", "test_logits.npz", "training_curves.png", "confusion_matrix.png",
    "README.md",
)


def make_config(tmp_path, dataset_dirs, ssl_checkpoint, **model) -> FinetuneConfig:
    train_dir, validation_dir = dataset_dirs
    return FinetuneConfig(
        name="tiny_last1",
        output_dir=tmp_path / "ensemble",
        data=DataConfig(train_dir=train_dir, validation_dir=validation_dir, cache_dir=tmp_path / "cache"),
        model=ModelConfig(ssl_checkpoint=ssl_checkpoint, **model),
        training=TrainingConfig(
            epochs=10, batch_size=8, gradient_accumulation_steps=1, learning_rate=2e-3, warmup_steps=0.1, device="cpu"
        ),
    )


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def fail(*args, **kwargs):
    raise AssertionError("should have been served from cache")


@dataclass(frozen=True)
class FinetuneRun:
    config: FinetuneConfig
    summary: dict
    flow_run_id: UUID
    root: Path

    @property
    def member(self) -> Path:
        return self.root / "ensemble" / "best" / "tiny_last1"


@pytest.fixture(scope="module")
def finetuned(prefect_harness, tmp_path_factory, dataset_dirs, test_split, ssl_checkpoint) -> FinetuneRun:
    """The module's one finetune flow run: a last-1 member scored on validation and test, whose features are
    built inside the run by 2 forked workers (shards of 8 of the 66 clips) and stored as float16."""
    from flows.finetune import finetune

    root = tmp_path_factory.mktemp("flow")
    config = make_config(root, dataset_dirs, ssl_checkpoint, train_last_n_layers=1)
    config.data.test_dir = test_split
    config.data.feature_workers = 2
    config.features.storage_dtype = "float16"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lib.data.features, "SHARD_CLIPS", 8)
        state = finetune(config, return_state=True)
    return FinetuneRun(config, state.result(), state.state_details.flow_run_id, root)


@pytest.fixture(scope="module")
def logs(finetuned) -> list[str]:
    return run_logs(finetuned.flow_run_id)


@pytest.fixture(scope="module")
def info(finetuned) -> dict:
    return read_json(finetuned.member / "member.json")


@pytest.fixture(scope="module")
def feature_cache(finetuned, info) -> FeatureCacheRef:
    return FeatureCacheRef.model_validate({
        "path": str(finetuned.root / "cache" / "features" / info["feature_cache_key"]),
        "key": info["feature_cache_key"], "params": info["feature_params"],
        "label_names": list(read_json(finetuned.member / "label_map.json")["label2id"]), "num_clips": {},
    })


@pytest.fixture(scope="module")
def second_run(finetuned) -> tuple[dict, dict[str, bytes]]:
    """A head-only member trained on the same unchanged folders with the scan and audio decoding made to
    fail: (its summary, the first member's files as they were before it)."""
    from flows.finetune import finetune

    before = {path.name: path.read_bytes() for path in finetuned.member.iterdir()}
    model = finetuned.config.model.model_copy(update={"train_last_n_layers": 0, "head_only": True})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tasks.data, "scan_data", fail)
        patch.setattr(lib.data.features, "load_clip", fail)
        summary = finetune(finetuned.config.model_copy(update={"name": "tiny_head", "model": model}))
    return summary, before


def test_the_flow_publishes_every_file_of_the_member(finetuned):
    assert finetuned.summary["published"] == str(finetuned.member)
    assert [name for name in PUBLISHED_FILES if not (finetuned.member / name).is_file()] == []


def test_the_model_card_metadata_is_yaml_whose_scores_equal_metrics_json(finetuned):
    from lib.publish.card import read_card_metadata

    metadata = read_card_metadata(finetuned.member / "README.md")
    metrics = read_json(finetuned.member / "metrics.json")
    assert metadata["pipeline_tag"] == "audio-classification" and metadata["library_name"] == "transformers"
    assert metadata["labels"] == sorted(CLASSES)
    results = {result["dataset"]["split"]: result for result in metadata["model-index"][0]["results"]}
    assert sorted(results) == ["test", "validation"]
    for split, scores in (("validation", metrics), ("test", metrics["test"])):
        card = {metric["type"]: metric["value"] for metric in results[split]["metrics"]}
        assert card == {key: round(scores[key], 4) for key in ("accuracy", "balanced_accuracy", "f1", "precision",
                                                                 "recall")}
    text = (finetuned.member / "README.md").read_text()
    for section in ("## Data", "## Recipe", "## Calibration", "## Limits", "## Load it"):
        assert section in text
    assert f"Temperature {metrics['temperature']:.4f}" in text


def test_member_json_says_where_the_time_went(finetuned):
    phases = read_json(finetuned.member / "member.json")["phases"]
    expected = ["features", "encoder", "model set-up", "trainer set-up", "first optimizer step", "training loop",
                "saving the best model", "calibration", "evaluation", "plots"]
    assert [name for name in phases if name in expected] == expected  # in the order they ran
    assert all(seconds >= 0 for seconds in phases.values()) and phases["training loop"] > 0


def test_the_published_plots_are_valid_pngs(finetuned):
    for plot in ("training_curves.png", "confusion_matrix.png"):
        with Image.open(finetuned.member / plot) as image:
            image.verify()


def test_validation_metrics_are_published_and_above_chance(finetuned):
    metrics = read_json(finetuned.member / "metrics.json")
    assert {"accuracy", "precision", "recall", "f1", "balanced_accuracy"} <= metrics.keys()
    assert metrics["accuracy"] == pytest.approx(finetuned.summary["metrics"]["accuracy"])
    assert metrics["accuracy"] > 0.6  # chance is 1/3


def test_the_test_split_is_scored_apart_on_its_18_clips(finetuned):
    test = read_json(finetuned.member / "metrics.json")["test"]
    assert test["accuracy"] == pytest.approx(finetuned.summary["test_metrics"]["accuracy"])
    assert test["num_samples"] == 18
    assert set(test["per_class"]) == set(CLASSES)
    assert np.sum(test["confusion_matrix"]["matrix"]) == 18


def test_the_temperature_is_fitted_on_the_stored_validation_logits_and_lowers_their_nll(finetuned):
    from lib.evaluate.calibration import fit_temperature

    calibration = read_json(finetuned.member / "calibration.json")
    stored = np.load(finetuned.member / "validation_logits.npz")
    assert calibration["temperature"] == pytest.approx(fit_temperature(stored["logits"], stored["labels"]))
    assert calibration["temperature"] == read_json(finetuned.member / "metrics.json")["temperature"]
    assert calibration["temperature"] == finetuned.summary["temperature"]
    assert calibration["validation"]["after"]["nll"] <= calibration["validation"]["before"]["nll"]
    assert set(calibration["test"]["after"]) == {"nll", "brier", "ece"}


def test_the_member_records_its_labels_and_last_1_freezing(finetuned, info):
    assert read_json(finetuned.member / "label_map.json")["label2id"] == CLASSES
    assert read_json(finetuned.member / "run_config.json")["model"]["train_last_n_layers"] == 1
    assert info["freezing"] == "last_1_layers"
    assert info["parameters"]["trainable"] < info["parameters"]["total"]


def test_the_last_1_member_trains_on_cached_outputs_of_the_frozen_layer(info):
    assert info["training"]["trunk_cache"]["used"] is True
    assert info["training"]["trunk_cache"]["layers"] == 1


def test_the_member_records_its_speed_settings_as_resolved_on_cpu(info):
    assert info["training"]["speed"] == {
        "attention": "sdpa", "tf32": False, "optimizer": "adamw_torch_fused",
        "compile": False, "pin_memory": False, "dataloader_num_workers": 0,
    }
    assert (info["training"]["device"], info["training"]["precision"]) == ("cpu", "fp32")


def test_the_64_frame_checkpoint_is_interpolated_to_128_frames_in_model_features_and_extractor(finetuned, info):
    assert info["encoder"]["position_grid"] == {
        "checkpoint": [5, 5], "encoder": [5, 12], "max_frames": 128, "adaptation": "bilinear"
    }
    assert info["feature_params"]["max_frames"] == 128
    assert read_json(finetuned.member / "config.json")["max_length"] == 128
    assert read_json(finetuned.member / "preprocessor_config.json")["max_length"] == 128


def test_the_run_logs_one_line_per_epoch_with_its_losses_and_accuracy(logs):
    epochs = [line for line in logs if line.startswith("member tiny_last1: epoch ")]
    numbers = [int(re.match(r"member tiny_last1: epoch (\d+)/10  batch_size 8  ", line)[1]) for line in epochs]
    assert numbers == list(range(1, 11))
    for line in epochs:
        assert re.search(r"train_loss [\d.]+  accuracy [\d.]+  .*loss [\d.]+  .*seconds [\d.]+$", line), line


def test_the_feature_build_inside_the_run_logs_its_float16_cache_and_no_bytecode(logs):
    built = [line for line in logs if line.startswith("built feature cache")]
    assert any(line.endswith("128 frames x 64 mel bins, float16)") for line in built), built
    assert [line for line in logs if BYTECODE.search(line)] == []


def test_the_run_shows_progress_an_epoch_table_and_the_member_with_both_plots(finetuned):
    artifacts = run_artifacts(finetuned.flow_run_id)
    assert artifacts["progress-tiny-last1"] == ("progress", 100.0)
    kind, table = artifacts["epochs-tiny-last1"]
    rows = json.loads(table)
    assert kind == "table" and [row["epoch"] for row in rows] == list(range(1, 11))
    assert {"batch_size", "train_loss", "validation_accuracy", "validation_loss", "seconds"} <= rows[0].keys()
    kind, markdown = artifacts["member-tiny-last1"]
    assert kind == "markdown" and markdown.count("](data:image/png;base64,iVBORw0KGgo") == 2


def test_the_float16_feature_cache_is_written_in_shards_and_read_back_as_float32(info, feature_cache):
    assert info["feature_params"]["storage_dtype"] == "float16"
    assert len(lib.data.features.split_files(feature_cache.path, "train")) == 6  # 48 clips in shards of 8
    clip = load_split(feature_cache, "validation")[0]["input_values"]
    assert tuple(clip.shape) == (128, 64)  # frames x mel bins
    assert clip.dtype == torch.float32


def test_the_published_folder_alone_reproduces_its_validation_logits(finetuned, feature_cache):
    model = ASTMeanPoolClassifier.from_pretrained(finetuned.member).eval()
    validation = load_split(feature_cache, "validation")
    with torch.no_grad():
        logits = model(input_values=validation[:]["input_values"]).logits.numpy()
    np.testing.assert_allclose(logits, np.load(finetuned.member / "validation_logits.npz")["logits"], atol=1e-5)


def test_a_second_run_on_unchanged_folders_neither_scans_nor_decodes_audio(finetuned, second_run):
    summary, _ = second_run
    assert summary["freezing"] == "head_only"
    assert (finetuned.root / "ensemble" / "best" / "tiny_head" / "metrics.json").is_file()


def test_a_second_member_leaves_the_published_one_untouched(finetuned, second_run):
    _, before = second_run
    assert {path.name: path.read_bytes() for path in finetuned.member.iterdir()} == before


def test_the_predict_flow_logs_what_it_read_and_what_it_wrote(finetuned, dataset_dirs, tmp_path):
    from flows.predict import predict
    from lib.config import PredictConfig

    validation_dir, output = dataset_dirs[1], tmp_path / "p.csv"
    state = predict(
        PredictConfig(model_path=finetuned.member, input_path=validation_dir, output_csv=output, device="cpu"),
        return_state=True,
    )
    logs = run_logs(state.state_details.flow_run_id)
    assert f"predicting {validation_dir} with the model(s) in {finetuned.member} on cpu" in logs
    assert f"wrote 18 predictions to {output} with members tiny_last1; 0 clips skipped" in logs


def test_flow_rejects_bad_config_before_any_work(prefect_harness, tmp_path, dataset_dirs, ssl_checkpoint):
    from flows.finetune import finetune
    from lib.core.errors import ConfigError

    config = make_config(tmp_path, dataset_dirs, ssl_checkpoint, train_last_n_layers=5)
    with pytest.raises(ConfigError, match=r"train_last_n_layers .* is 5 but the encoder .* has 2 layers"):
        finetune(config)
    assert not (tmp_path / "cache").exists()


def test_a_diverging_run_never_replaces_the_published_member(
    prefect_harness, tmp_path, dataset_dirs, ssl_checkpoint, monkeypatch
):
    from flows.finetune import finetune
    from lib.core.errors import NonFiniteError

    config = make_config(tmp_path, dataset_dirs, ssl_checkpoint, head_only=True)
    config = config.model_copy(update={"training": config.training.model_copy(update={"epochs": 2})})
    member = tmp_path / "ensemble" / "best" / "tiny_last1"
    finetune(config)
    before = {p.name: p.read_bytes() for p in member.iterdir()}

    # Divergence, made deterministic: the first training loss is NaN, so are its gradients and then the weights.
    classify = ASTMeanPoolClassifier.classify

    def diverging_classify(self, sequence_output, labels=None):
        output = classify(self, sequence_output, labels)
        if labels is not None and self.training:
            output["loss"] = output["loss"] * float("nan")
        return output

    monkeypatch.setattr(ASTMeanPoolClassifier, "classify", diverging_classify)
    # another seed: a new run config, so the finished run's checkpoints are not resumed
    diverging = config.model_copy(update={"training": config.training.model_copy(update={"seed": 1})})
    with pytest.raises(NonFiniteError, match="training loss became nan in epoch 1"):
        finetune(diverging)
    assert {p.name: p.read_bytes() for p in member.iterdir()} == before

    # With the training and evaluation guards switched off, the publish task still refuses it.
    from transformers import TrainerCallback

    import lib.evaluate.evaluation
    import lib.train.arguments

    monkeypatch.setattr(lib.train.arguments, "NonFiniteLossCallback", TrainerCallback)
    monkeypatch.setattr(lib.evaluate.evaluation, "check_finite_tensors", lambda *args: None)
    monkeypatch.setattr(lib.evaluate.evaluation, "check_finite_logits", lambda *args: None)
    with pytest.raises(
        NonFiniteError,
        match=r"member tiny_last1: .* hold NaN or inf .*not published; .*tiny_last1 is left as it was",
    ):
        finetune(diverging.model_copy(update={"training": diverging.training.model_copy(update={"seed": 2})}))
    assert {p.name: p.read_bytes() for p in member.iterdir()} == before
