import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import lib.data.features
import tasks.data
from lib.config import DataConfig, FinetuneConfig, ModelConfig, TrainingConfig
from lib.data.features import FeatureCacheRef, load_split
from lib.model.classifier import ASTMeanPoolClassifier

pytestmark = pytest.mark.slow

BYTECODE = re.compile(r"\b(RESUME|LOAD_GLOBAL|LOAD_FAST|RETURN_VALUE)\b")


def run_logs(flow_run_id) -> list[str]:
    """Every log line of a flow run and its task runs, as the UI shows them."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    lines = []
    with get_client(sync_client=True) as client:
        while page := client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200, offset=len(lines),
            sort=LogSort.TIMESTAMP_ASC,
        ):
            lines += [log.message for log in page]
    return lines


def run_artifacts(flow_run_id) -> dict:
    """The flow run's artifacts by key: (type, data)."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {artifact.key: (artifact.type, artifact.data) for artifact in artifacts}


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


def test_finetune_flow_publishes_a_member_that_reloads_and_reuses_caches(
    prefect_harness, tmp_path, dataset_dirs, test_split, ssl_checkpoint, monkeypatch
):
    from flows.finetune import finetune

    config = make_config(tmp_path, dataset_dirs, ssl_checkpoint, train_last_n_layers=1)
    # The feature build inside the flow run forks 2 workers (shards of 8 of the 66 clips), and the
    # member trains, is evaluated and publishes on a float16 cache.
    monkeypatch.setattr(lib.data.features, "SHARD_CLIPS", 8)
    config.data.feature_workers = 2
    config.features.storage_dtype = "float16"
    state = finetune(config, return_state=True)
    summary = state.result()


    config.data.test_dir = test_split
    summary = finetune(config)

    member = tmp_path / "ensemble" / "best" / "tiny_last1"
    assert summary["published"] == str(member)
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "metrics.json",
                 "confusion_matrix.json", "label_map.json", "run_config.json", "member.json",
                 "train_logtiny_last1.txt", "classifier.py", "calibration.json", "validation_logits.npz", "test_logits.npz"):
        assert (member / name).is_file(), name
    metrics = json.loads((member / "metrics.json").read_text())
    assert {"accuracy", "precision", "recall", "f1", "balanced_accuracy"} <= metrics.keys()
    assert metrics["accuracy"] == pytest.approx(summary["metrics"]["accuracy"])
    assert metrics["accuracy"] > 0.6  # 3 classes: chance is 0.33
    # test: scored apart from validation (same metrics, per class, confusion matrix), on its 18 clips
    assert metrics["test"]["accuracy"] == pytest.approx(summary["test_metrics"]["accuracy"])
    assert metrics["test"]["num_samples"] == 18 and set(metrics["test"]["per_class"]) == {"noise_burst", "tone_high", "tone_low"}
    assert np.sum(metrics["test"]["confusion_matrix"]["matrix"]) == 18
    # the temperature was fitted on the validation logits the member stored, and is what predict applies
    from lib.evaluate.calibration import fit_temperature

    calibration = json.loads((member / "calibration.json").read_text())
    stored = np.load(member / "validation_logits.npz")
    assert calibration["temperature"] == pytest.approx(fit_temperature(stored["logits"], stored["labels"]))
    assert calibration["temperature"] == metrics["temperature"] == summary["temperature"]
    assert calibration["validation"]["after"]["nll"] <= calibration["validation"]["before"]["nll"]
    assert set(calibration["test"]["after"]) == {"nll", "brier", "ece"}
    labels = json.loads((member / "label_map.json").read_text())
    assert labels["label2id"] == {"noise_burst": 0, "tone_high": 1, "tone_low": 2}
    assert json.loads((member / "run_config.json").read_text())["model"]["train_last_n_layers"] == 1
    info = json.loads((member / "member.json").read_text())
    assert info["freezing"] == "last_1_layers"
    assert info["parameters"]["trainable"] < info["parameters"]["total"]
    # last 1 of 2 layers: trained on cached outputs of the embeddings and layer 0, recorded as such
    assert (info["training"]["trunk_cache"]["used"], info["training"]["trunk_cache"]["layers"]) == (True, 1)
    # how the steps were computed and fed, as resolved on this CPU (the GPU-only settings off)
    assert info["training"]["speed"] == {"attention": "sdpa", "tf32": False, "optimizer": "adamw_torch_fused",
                                         "compile": False, "pin_memory": False, "dataloader_num_workers": 0}
    assert (info["training"]["device"], info["training"]["precision"]) == ("cpu", "fp32")
    # The checkpoint was built for 64 frames; the default max_frames (128) interpolated its grid,
    # and the member's model, features and feature extractor all agree on 128 frames.
    assert info["encoder"]["position_grid"] == {
        "checkpoint": [5, 5], "encoder": [5, 12], "max_frames": 128, "adaptation": "bilinear"
    }
    assert info["feature_params"]["max_frames"] == 128 and info["feature_params"]["storage_dtype"] == "float16"
    assert json.loads((member / "config.json").read_text())["max_length"] == 128
    assert json.loads((member / "preprocessor_config.json").read_text())["max_length"] == 128

    # What the UI shows: a log line per epoch while it trains, no bytecode from the feature build
    # (built in this run), the member's progress, its epochs so far, and its metrics with both plots.
    logs = run_logs(state.state_details.flow_run_id)
    epochs = [line for line in logs if line.startswith("member tiny_last1: epoch ")]
    assert [int(re.match(r"member tiny_last1: epoch (\d+)/10  batch_size 8  ", line)[1]) for line in epochs] == list(range(1, 11))
    assert all(re.search(r"train_loss [\d.]+  accuracy [\d.]+  .*loss [\d.]+  .*seconds [\d.]+$", line) for line in epochs)
    assert any(line.startswith("built feature cache") and line.endswith("128 frames x 64 mel bins, float16)") for line in logs)
    assert [line for line in logs if BYTECODE.search(line)] == []
    artifacts = run_artifacts(state.state_details.flow_run_id)
    assert artifacts["progress-tiny-last1"] == ("progress", 100.0)
    kind, table = artifacts["epochs-tiny-last1"]
    assert kind == "table" and [row["epoch"] for row in json.loads(table)] == list(range(1, 11))
    assert {"batch_size", "train_loss", "validation_accuracy", "validation_loss", "seconds"} <= json.loads(table)[0].keys()
    kind, markdown = artifacts["member-tiny-last1"]
    assert kind == "markdown" and markdown.count("](data:image/png;base64,iVBORw0KGgo") == 2
    for plot in ("training_curves.png", "confusion_matrix.png"):
        with Image.open(member / plot) as image:
            image.verify()

    # The published folder alone reproduces the validation logits it was scored with.
    model = ASTMeanPoolClassifier.from_pretrained(member).eval()
    cache = FeatureCacheRef.model_validate({
        "path": str(tmp_path / "cache" / "features" / info["feature_cache_key"]),
        "key": info["feature_cache_key"], "params": info["feature_params"],
        "label_names": list(labels["label2id"]), "num_clips": {},
    })
    validation = load_split(cache, "validation")
    assert tuple(validation[0]["input_values"].shape) == (128, 64)  # frames x mel bins
    assert len(lib.data.features.split_files(cache.path, "train")) == 6 and validation[0]["input_values"].dtype == torch.float32
    with torch.no_grad():
        logits = model(input_values=validation[:]["input_values"]).logits.numpy()
    np.testing.assert_allclose(logits, np.load(member / "validation_logits.npz")["logits"], atol=1e-5)

    # Second run on unchanged folders: the scan is a Prefect cache hit and no audio is decoded.
    def fail(*args, **kwargs):
        raise AssertionError("should have been served from cache")

    monkeypatch.setattr(tasks.data, "scan_dataset", fail)
    monkeypatch.setattr(lib.data.features, "load_clip", fail)
    again = finetune(config.model_copy(update={"name": "tiny_head"}).model_copy(
        update={"model": config.model.model_copy(update={"train_last_n_layers": 0, "head_only": True})}
    ))
    assert again["freezing"] == "head_only"
    assert (tmp_path / "ensemble" / "best" / "tiny_head" / "metrics.json").is_file()
    assert (member / "model.safetensors").is_file()  # the other member is untouched

    # The predict flow says what it read and what it wrote.
    monkeypatch.undo()  # it decodes its clips
    from flows.predict import predict
    from lib.config import PredictConfig

    validation_dir = dataset_dirs[1]
    state = predict(PredictConfig(model_path=member, input_path=validation_dir, output_csv=tmp_path / "p.csv",
                                  device="cpu"), return_state=True)
    logs = run_logs(state.state_details.flow_run_id)
    assert f"predicting {validation_dir} with the model(s) in {member} on cpu" in logs
    assert f"wrote 18 predictions to {tmp_path / 'p.csv'} with members tiny_last1; 0 clips skipped" in logs


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
    with pytest.raises(NonFiniteError, match=r"member tiny_last1: .* hold NaN or inf .*not published; .*tiny_last1 is left as it was"):
        finetune(diverging.model_copy(update={"training": diverging.training.model_copy(update={"seed": 2})}))
    assert {p.name: p.read_bytes() for p in member.iterdir()} == before
