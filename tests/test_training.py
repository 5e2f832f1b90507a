import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lib.checkpoint import load_encoder
from lib.config import ConfigError, TrainingConfig
from lib.evaluation import evaluate_model
from lib.features import FeatureParams, build_feature_cache, load_split, make_feature_extractor
from lib.model import apply_freezing, build_classifier
from lib.scan import scan_dataset
from lib.training import resolve_runtime, seed_everything, train_classifier

CPU = resolve_runtime("cpu", "auto")


def test_runtime_never_silently_ignores_mixed_precision():
    assert (CPU.device, CPU.precision) == ("cpu", "fp32")
    assert resolve_runtime("cpu", "bf16").precision == "bf16"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_runtime("cpu", "fp16")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_runtime("cuda", "auto")


@pytest.fixture(scope="module")
def features(dataset_dirs, tmp_path_factory):
    manifest = scan_dataset(*dataset_dirs)
    ref, _ = build_feature_cache(manifest, FeatureParams(num_mel_bins=64, max_frames=64), tmp_path_factory.mktemp("c"))
    return ref


@pytest.mark.slow
def test_tiny_ast_learns_separable_classes_and_the_best_epoch_is_what_gets_saved(features, ssl_checkpoint, tmp_path):
    seed_everything(0, True)
    encoder, _ = load_encoder(ssl_checkpoint)
    model = build_classifier(encoder, features.label_names)
    apply_freezing(model)
    config = TrainingConfig(
        epochs=12, batch_size=8, gradient_accumulation_steps=1, learning_rate=2e-3, warmup_steps=0.1, seed=0
    )
    log = tmp_path / "train_logtiny.txt"
    outcome = train_classifier(
        model, load_split(features, "train"), load_split(features, "validation"),
        make_feature_extractor(features.params), config, tmp_path / "work", log, "fp-1", CPU,
    )
    assert outcome.epochs_run == 12
    assert outcome.best_metric >= 0.8  # 3 classes: chance is 0.33

    result = evaluate_model(
        Path(outcome.best_model_dir), load_split(features, "validation"), features.label_names, 8, CPU, tmp_path / "eval"
    )
    # The reloaded best model reproduces the best epoch's score: the right weights were kept.
    assert result.metrics["accuracy"] == pytest.approx(outcome.best_metric)
    lines = [line for line in log.read_text().splitlines() if line.startswith("epoch ")]
    assert len(lines) == 12 and lines[0].startswith("epoch 1/12  batch_size 8")
    confusion = json.loads((tmp_path / "eval" / "confusion_matrix.json").read_text())
    assert confusion["labels"] == list(features.label_names)
    assert np.sum(confusion["matrix"]) == features.num_clips["validation"]


@pytest.mark.slow
def test_a_run_with_the_same_config_resumes_and_another_config_starts_fresh(features, ssl_checkpoint, tmp_path):
    def run(epochs, fingerprint):
        seed_everything(0, True)
        encoder, _ = load_encoder(ssl_checkpoint)
        model = build_classifier(encoder, features.label_names)
        config = TrainingConfig(epochs=epochs, batch_size=16, gradient_accumulation_steps=1, learning_rate=1e-3)
        return train_classifier(
            model, load_split(features, "train"), load_split(features, "validation"),
            make_feature_extractor(features.params), config, tmp_path / "work", tmp_path / "log.txt", fingerprint, CPU,
        )

    first = run(2, "same")
    assert first.resumed_from is None
    again = run(3, "same")
    assert again.resumed_from is not None and again.resumed_from.endswith("checkpoint-6")
    assert again.epochs_run == 3
    fresh = run(1, "other")
    assert fresh.resumed_from is None
    assert sorted(p.name for p in (tmp_path / "work").glob("checkpoint-*")) == ["checkpoint-3"]


def test_a_checkpoint_interrupted_while_saving_is_not_resumed(tmp_path):
    from lib.training import prepare_work_dir

    for step, complete in ((10, True), (20, True), (30, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_text("x")
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-20" / "trainer_state.json").write_text('{"trunc')  # killed mid-write
    (tmp_path / "run.json").write_text('{"fingerprint": "fp"}')
    assert prepare_work_dir(tmp_path, "fp") == str(tmp_path / "checkpoint-10")
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-10"]
