"""Non-finite guards: NaN/inf weights, logits and losses are named errors, never a published model."""

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import ASTModel

from lib.config import TrainingConfig
from lib.core.errors import CheckpointError, NonFiniteError
from lib.core.guards import (
    NonFiniteLossCallback,
    check_finite_folder,
    nonfinite_in_folder,
)
from lib.core.runtime import seed_everything
from lib.data.features import FeatureParams, make_feature_extractor
from lib.evaluate.evaluation import evaluate_model
from lib.model.checkpoint import load_encoder
from lib.model.classifier import build_classifier
from tests.factories import make_ssl_checkpoint
from tests.helpers import CPU, random_features, small_config, train_classifier


def test_a_checkpoint_with_one_nan_weight_is_a_checkpoint_error_naming_the_tensor(tmp_path):
    folder, _ = make_ssl_checkpoint(tmp_path / "ckpt", small_config(), layout="5.x")
    state = load_file(str(folder / "model.safetensors"))
    key = "encoder.layers.1.attention.q_proj.weight"
    state[key][0, 0] = float("nan")
    state["decoder.weight"] = torch.full((2, 2), float("inf"))  # a dropped head: does not matter
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(
        CheckpointError,
        match=r"NaN or inf values in 1 encoder tensors \(encoder\.layers\.1\.attention\.q_proj\.weight\)",
    ):
        load_encoder(folder)


@pytest.mark.train
def test_a_nan_loss_stops_training_naming_the_epoch_and_keeps_only_finite_checkpoints(tmp_path):
    seed_everything(0, True)
    model = build_classifier(ASTModel(small_config()), ["a", "b", "c"])
    config = TrainingConfig(epochs=3, batch_size=4, gradient_accumulation_steps=1, learning_rate=1e-3)
    extractor = make_feature_extractor(FeatureParams(num_mel_bins=64, max_frames=64))
    with pytest.raises(NonFiniteError, match=r"training loss became nan in epoch 1 \(optimizer steps 1-3\)"):
        train_classifier(
            model, random_features(12, 0, poison_rows=(5,)), random_features(6, 1), extractor, config,
            tmp_path / "work", tmp_path / "log.txt", "fp", CPU,
        )
    assert not list((tmp_path / "work").glob("checkpoint-*"))  # the NaN epoch was never saved
    assert not (tmp_path / "work" / "best-model").exists()


def test_the_loss_callback_checks_validation_loss_too():
    class State:
        epoch, global_step = 2.0, 8

    callback = NonFiniteLossCallback()
    callback.on_log(None, State(), None, logs={"loss": 0.5})  # finite: nothing happens
    with pytest.raises(NonFiniteError, match=r"validation loss became inf in epoch 2"):
        callback.on_evaluate(None, State(), None, metrics={"eval_loss": math.inf})


def save_member(folder, poison: bool):
    seed_everything(0, True)
    model = build_classifier(ASTModel(small_config()), ["a", "b", "c"])
    if poison:
        with torch.no_grad():
            model.classifier.weight[0, 0] = float("nan")
    model.save_pretrained(str(folder))
    return folder


def test_evaluation_refuses_a_model_with_nan_weights_and_nan_logits_are_named(tmp_path):
    bad = save_member(tmp_path / "bad", poison=True)
    with pytest.raises(NonFiniteError, match=r"model .*bad: 1 tensors hold NaN or inf \(classifier\.weight\)"):
        evaluate_model(bad, random_features(6, 1), ["a", "b", "c"], 4, CPU, tmp_path / "eval")
    good = save_member(tmp_path / "good", poison=False)
    with pytest.raises(NonFiniteError, match=r"NaN or inf logits for 1 of 6 validation clips \(rows \[2\]\)"):
        evaluate_model(good, random_features(6, 1, poison_rows=(2,)), ["a", "b", "c"], 4, CPU, tmp_path / "eval")
    result = evaluate_model(good, random_features(6, 1), ["a", "b", "c"], 4, CPU, tmp_path / "eval")
    assert result.num_samples == 6


def test_folder_check_names_nonfinite_weights_and_logits(tmp_path):
    save_member(tmp_path, poison=True)
    np.savez(tmp_path / "validation_logits.npz", logits=np.array([[0.0, np.nan]]), labels=np.array([1]))
    assert nonfinite_in_folder(tmp_path) == [
        "model.safetensors: classifier.weight",
        "validation_logits.npz: logits",
    ]
    with pytest.raises(NonFiniteError, match="member m: 2 arrays hold NaN or inf"):
        check_finite_folder(tmp_path, "member m", "not published")
