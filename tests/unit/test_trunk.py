import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import ASTModel

from lib.config import (
    AugmentationConfig,
    DataConfig,
    FeatureConfig,
    FinetuneConfig,
    ModelConfig,
    TrainingConfig,
)
from lib.core.runtime import resolve_runtime, seed_everything
from lib.data.features import build_feature_cache, load_split
from lib.data.scan import scan_dataset
from lib.evaluate.evaluation import evaluate_model
from lib.evaluate.inference import predict_logits
from lib.model import trunk
from lib.model.checkpoint import export_encoder
from lib.model.classifier import ASTMeanPoolClassifier, apply_freezing, build_classifier
from lib.model.trunk import (
    TrunkStates,
    TrunkTail,
    build_trunk_cache,
    compute_trunk,
    frozen_trunk_layers,
    training_inputs,
)
from lib.recipes.finetune import plan_run, train_member
from tests.helpers import CPU, StopAfterEpoch, small_config, train_classifier


def finetune_config(tmp_path: Path, train_dir=Path("train"), validation_dir=Path("validation"), ssl=Path("ssl"),
                    name="m", model=None, **training) -> FinetuneConfig:
    return FinetuneConfig(
        name=name, output_dir=tmp_path / "out",
        data=DataConfig(train_dir=train_dir, validation_dir=validation_dir, cache_dir=tmp_path / "cache"),
        features=FeatureConfig(max_frames=None, clip_seconds=0.6),  # 58 frames fit the tiny checkpoint's 64
        model=ModelConfig(ssl_checkpoint=ssl, **(model or {})),
        training=TrainingConfig(**training),
    )


@pytest.mark.parametrize(
    "model, training, encoder, expected, because",
    [
        ({"head_only": True}, {}, {}, 2, "head only: embeddings and layers[:2] are frozen"),
        ({"train_last_n_layers": 1}, {}, {}, 1, "last 1 of 2 layers trained: embeddings and layers[:1]"),
        ({"train_last_n_layers": 2}, {}, {}, None, "trains every layer: only the patch embedding is frozen"),
        ({}, {}, {}, None, "full fine-tuning"),
        ({"head_only": True}, {}, {"hidden_dropout_prob": 0.1}, None, "dropout (hidden_dropout_prob=0.1"),
        (
            {"train_last_n_layers": 1}, {}, {"attention_probs_dropout_prob": 0.1}, None,
            "attention_probs_dropout_prob=0.1)",
        ),
        ({"head_only": True}, {"augmentation": AugmentationConfig(noise_std=0.1)}, {}, None, "augmentation is on"),
        ({"head_only": True}, {"augmentation": AugmentationConfig(time_roll=True)}, {}, None, "augmentation is on"),
        ({"head_only": True}, {"trunk_cache": False}, {}, None, "training.trunk_cache is false"),
        ({"head_only": True}, {"num_processes": 2}, {}, None, "num_processes=2"),
    ],
)
def test_the_trunk_is_cached_only_when_frozen_and_deterministic(tmp_path, model, training, encoder, expected, because):
    encoder_config = small_config(**{"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, **encoder})
    layers, reason = frozen_trunk_layers(finetune_config(tmp_path, model=model, **training), encoder_config)
    assert layers == expected
    assert because in reason  # logged and recorded either way


def test_reasons_name_what_stops_the_cache(tmp_path):
    config = small_config()
    assert "trunk_cache is false" in frozen_trunk_layers(
        finetune_config(tmp_path, model={"head_only": True}, trunk_cache=False), config)[1]
    assert "augmentation" in frozen_trunk_layers(
        finetune_config(tmp_path, model={"head_only": True}, augmentation=AugmentationConfig(freq_mask_bins=8)),
        config)[1]
    assert "full fine-tuning" in frozen_trunk_layers(finetune_config(tmp_path), config)[1]


@pytest.fixture(scope="module")
def prepared(dataset_dirs, ssl_checkpoint, tmp_path_factory):
    """Features and stripped encoder of the tiny checkpoint, as the flow's earlier tasks make them."""
    root = tmp_path_factory.mktemp("trunk")
    plan = plan_run(finetune_config(root, *dataset_dirs, ssl_checkpoint))
    features, _ = build_feature_cache(scan_dataset(*dataset_dirs), plan.feature_params, root / "cache")
    encoder, _ = export_encoder(ssl_checkpoint, None, root / "cache")
    return features, encoder


def frozen_classifier(prepared, **freezing) -> ASTMeanPoolClassifier:
    features, encoder = prepared
    seed_everything(0, True)
    model = build_classifier(ASTModel.from_pretrained(encoder.path), features.label_names)
    apply_freezing(model, **freezing)
    return model


@torch.no_grad()
def trunk_outputs(model, features, split, layers) -> torch.Tensor:
    values = load_split(features, split)[:]["input_values"]
    return compute_trunk(model.eval().encoder, values, layers)


def test_cached_states_are_the_trunk_output_in_float16(prepared, tmp_path):
    features, _ = prepared
    model = frozen_classifier(prepared, train_last_n_layers=1)
    assert model.training
    folder, dtype, hit = build_trunk_cache(model, 1, features, tmp_path, CPU, batch_size=5)  # 5: a partial last batch
    assert (dtype, hit) == ("float16", False)
    assert model.training and model.encoder.layers[0].training  # built in eval mode, then put back
    assert folder.parent == tmp_path / "trunk"
    for split in ("train", "validation"):
        cached = TrunkStates(folder, split)
        assert len(cached) == features.num_clips[split]
        states = torch.stack([cached[index]["hidden_states"] for index in range(len(cached))])
        # 64 bins x 64 frames, stride 10
        assert states.dtype == torch.float16 and states.shape == (len(cached), 2 + 5 * 5, 32)
        expected = trunk_outputs(model, features, split, 1)
        torch.testing.assert_close(states.float(), expected, rtol=2e-3, atol=2e-3)  # fp16 rounding only
        labels = load_split(features, split).with_format("numpy", columns=["label"])[:]["label"]
        assert [cached[index]["labels"] for index in range(len(cached))] == labels.tolist()
    # what DataLoader workers receive: the file's path, not a copy of its data
    pickled = pickle.dumps(TrunkStates(folder, "train"))
    assert len(pickled) < states[0].numel() * 2
    torch.testing.assert_close(
        pickle.loads(pickled)[3]["hidden_states"], TrunkStates(folder, "train")[3]["hidden_states"]
    )
    meta = json.loads((folder / "meta.json").read_text())
    assert (meta["layers"], meta["dtype"], meta["feature_cache_key"]) == (1, "float16", features.key)
    assert (meta["precision"], meta["attention"], meta["tf32"]) == ("fp32", "sdpa", False)  # as training computes
    # another attention kernel rounds otherwise: its trunk is a cache of its own
    model.set_attn_implementation("eager")
    eager, _, hit = build_trunk_cache(model, 1, features, tmp_path, CPU, batch_size=5)
    assert eager != folder and not hit and json.loads((eager / "meta.json").read_text())["attention"] == "eager"


def test_the_tail_on_cached_states_gives_the_full_classifiers_logits(prepared, tmp_path):
    features, _ = prepared
    for freezing, layers in (({"head_only": True}, 2), ({"train_last_n_layers": 1}, 1)):
        model = frozen_classifier(prepared, **freezing)
        torch.nn.init.normal_(model.encoder.layernorm.weight)  # a non-trivial final layernorm and head
        folder, _, _ = build_trunk_cache(model, layers, features, tmp_path, CPU, batch_size=8, dtypes=("float32",))
        cached = TrunkStates(folder, "validation")
        states = torch.stack([cached[index]["hidden_states"] for index in range(len(cached))])
        tail = TrunkTail(model, layers).eval()
        with torch.no_grad():
            tail_logits = tail(hidden_states=states).logits
        full_logits = torch.from_numpy(predict_logits(model, load_split(features, "validation"), 8, CPU))
        torch.testing.assert_close(tail_logits, full_logits, rtol=1e-5, atol=1e-5)
        # the tail shares the classifier's parameters instead of copying them
        assert tail.full_model.classifier.weight.data_ptr() == model.classifier.weight.data_ptr()


def test_the_tail_refuses_a_trunk_that_still_trains(prepared):
    model = frozen_classifier(prepared, train_last_n_layers=1)
    with pytest.raises(ValueError, match=r"layers\[:2\] must be frozen"):
        TrunkTail(model, 2)


def test_the_second_run_reuses_the_cache_without_running_the_trunk(prepared, tmp_path, monkeypatch):
    features, _ = prepared
    config = finetune_config(tmp_path, model={"head_only": True}, batch_size=8)
    first = training_inputs(frozen_classifier(prepared, head_only=True), config, features, CPU)
    assert (first.trunk.used, first.trunk.layers, first.trunk.hit, first.trunk.dtype) == (True, 2, False, "float16")
    assert first.fingerprint_suffix == "+trunk2"

    def must_not_run(*args, **kwargs):
        raise AssertionError("the trunk ran on a cache hit")

    monkeypatch.setattr(trunk, "compute_trunk", must_not_run)
    again = training_inputs(frozen_classifier(prepared, head_only=True), config, features, CPU)
    assert (again.trunk.hit, again.trunk.path) == (True, first.trunk.path)
    assert isinstance(again.model, TrunkTail) and len(again.train) == features.num_clips["train"]

    # other frozen weights are another trunk: a miss (so the trunk would have to run)
    changed = frozen_classifier(prepared, head_only=True)
    with torch.no_grad():
        changed.encoder.layers[0].mlp.fc1.weight.add_(1e-3)
    with pytest.raises(AssertionError, match="the trunk ran"):
        training_inputs(changed, config, features, CPU)

    # a truncated states file is detected (meta.json sizes) and rebuilt, never read
    monkeypatch.undo()
    states_file = Path(first.trunk.path) / "train.states.npy"
    states_file.write_bytes(states_file.read_bytes()[:-64])
    rebuilt = training_inputs(frozen_classifier(prepared, head_only=True), config, features, CPU)
    assert (rebuilt.trunk.hit, rebuilt.trunk.path) == (False, first.trunk.path)
    assert len(TrunkStates(Path(rebuilt.trunk.path), "train")) == features.num_clips["train"]


def test_full_fine_tuning_trains_the_classifier_on_features(prepared, tmp_path):
    features, _ = prepared
    inputs = training_inputs(frozen_classifier(prepared), finetune_config(tmp_path), features, CPU)
    assert isinstance(inputs.model, ASTMeanPoolClassifier) and not inputs.trunk.used
    assert inputs.fingerprint_suffix == "" and not (tmp_path / "cache" / "trunk").exists()


def eval_history(work_dir: Path) -> list[dict]:
    history = json.loads((Path(work_dir) / "log_history.json").read_text())
    return [entry for entry in history if "eval_accuracy" in entry]


@pytest.mark.slow
@pytest.mark.parametrize("freezing", [{"head_only": True}, {"train_last_n_layers": 1}])
def test_training_on_the_trunk_cache_matches_training_without_it(prepared, dataset_dirs, ssl_checkpoint, tmp_path,
                                                                  freezing):
    features, encoder = prepared
    outcomes = {}
    for cached in (True, False):
        config = finetune_config(
            tmp_path, *dataset_dirs, ssl_checkpoint, name=f"cache-{cached}", model=freezing, trunk_cache=cached,
            epochs=6, batch_size=8, batch_sizes=[4, 8], gradient_accumulation_steps=2, learning_rate=3e-3,
            warmup_steps=0.1, seed=0, device="cpu", save_total_limit=6,
        )
        outcomes[cached] = train_member(plan_run(config), features, encoder)
    with_cache, without = outcomes[True], outcomes[False]
    assert with_cache.trunk_cache.used and with_cache.trunk_cache.layers == (2 if "head_only" in freezing else 1)
    assert not without.trunk_cache.used and "trunk_cache is false" in without.trunk_cache.reason
    assert with_cache.batch_sizes == without.batch_sizes == [4, 8, 8, 8, 8, 8]
    assert with_cache.optimizer_steps == without.optimizer_steps

    # same seed, same shuffles: every epoch's validation metrics agree up to fp16 rounding of the cache
    one_clip = 1 / features.num_clips["validation"]
    cached_epochs, plain_epochs = eval_history(with_cache.work_dir), eval_history(without.work_dir)
    assert len(cached_epochs) == len(plain_epochs) == 6
    for a, b in zip(cached_epochs, plain_epochs, strict=True):
        assert abs(a["eval_accuracy"] - b["eval_accuracy"]) <= one_clip + 1e-9
        assert a["eval_loss"] == pytest.approx(b["eval_loss"], rel=1e-3)
    assert with_cache.best_metric == pytest.approx(without.best_metric, abs=one_clip + 1e-9)
    assert with_cache.best_metric >= 0.6  # it learned (3 classes: chance is 0.33)

    # best-model holds the best epoch's full classifier: it reloads, reproduces the best score, and
    # gives (nearly) the logits of the classifier trained without the cache
    validation = load_split(features, "validation")
    result = evaluate_model(Path(with_cache.best_model_dir), validation, features.label_names, 8, CPU, tmp_path / "ev")
    assert result.metrics["accuracy"] == pytest.approx(with_cache.best_metric)
    # ... exactly the weights of the best epoch's checkpoint (the tail's state dict, shared with the classifier)
    best = load_file(str(Path(with_cache.best_checkpoint) / "model.safetensors"))
    published = ASTMeanPoolClassifier.from_pretrained(with_cache.best_model_dir).state_dict()
    assert set(best) == {f"full_model.{name}" for name in published}
    assert all(torch.equal(best[f"full_model.{name}"], tensor) for name, tensor in published.items())
    # ... and not another epoch's: every other checkpoint (all six are kept) has another head
    best_step = Path(with_cache.best_checkpoint).name
    others = [path for path in Path(with_cache.work_dir).glob("checkpoint-*") if path.name != best_step]
    assert len(others) == 5
    for other in others:
        head = load_file(str(other / "model.safetensors"))["full_model.classifier.weight"]
        assert not torch.equal(head, published["classifier.weight"])
    # the cached run's best model gives the logits of the uncached run's classifier after the same step
    same_step = ASTMeanPoolClassifier.from_pretrained(str(Path(without.work_dir) / best_step))
    logits = [predict_logits(model, validation, 8, CPU)
              for model in (ASTMeanPoolClassifier.from_pretrained(with_cache.best_model_dir), same_step)]
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-3, atol=1e-3)  # seen: 2e-5


@pytest.mark.slow
def test_training_on_the_trunk_cache_resumes_and_ends_with_the_uninterrupted_member(prepared, tmp_path):
    features, _ = prepared
    config = finetune_config(tmp_path, model={"head_only": True}, epochs=4, batch_size=8,
                             gradient_accumulation_steps=1, learning_rate=3e-3, warmup_steps=0, seed=0)

    def run(work: str, *callbacks):
        inputs = training_inputs(frozen_classifier(prepared, head_only=True), config, features, CPU)
        return train_classifier(
            inputs.model, inputs.train, inputs.validation, None, config.training, tmp_path / work,
            tmp_path / f"{work}.log", "fp" + inputs.fingerprint_suffix, CPU, extra_callbacks=callbacks,
            data_collator=inputs.data_collator, save_best=inputs.save_best,
        )

    interrupted = run("resumed", StopAfterEpoch(2))
    assert interrupted.epochs_run == 2 and interrupted.resumed_from is None
    resumed = run("resumed")
    assert resumed.resumed_from.endswith("checkpoint-12")  # 48 clips / 8 = 6 steps per epoch
    assert resumed.epochs_run == 4
    clean = run("clean")
    assert resumed.best_metric == clean.best_metric and resumed.best_epoch == clean.best_epoch
    validation = load_split(features, "validation")
    logits = [predict_logits(ASTMeanPoolClassifier.from_pretrained(outcome.best_model_dir), validation, 8, CPU)
              for outcome in (resumed, clean)]
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # torch.compile: ~20 s on 2 cores
def test_a_compiled_tail_trains_saves_and_reloads_its_best_epoch_like_the_eager_one(prepared, tmp_path):
    features, _ = prepared
    outcomes = {}
    for compiled in (True, False):
        config = finetune_config(tmp_path, model={"train_last_n_layers": 1}, epochs=2, batch_size=8, compile=compiled,
                                 gradient_accumulation_steps=1, learning_rate=3e-3, warmup_steps=0, seed=0)
        inputs = training_inputs(frozen_classifier(prepared, train_last_n_layers=1), config, features, CPU)
        work = tmp_path / f"compiled-{compiled}"
        outcomes[compiled] = train_classifier(
            inputs.model, inputs.train, inputs.validation, None, config.training, work, work / "log.txt",
            "fp" + inputs.fingerprint_suffix, CPU, data_collator=inputs.data_collator, save_best=inputs.save_best,
        )
    compiled, eager = outcomes[True], outcomes[False]
    assert (compiled.speed.compile, eager.speed.compile) == (True, False)
    # the checkpoints hold the tail's own names (no torch.compile wrapper prefix), so the best epoch reloads
    assert not any("_orig_mod" in key for key in load_file(str(Path(compiled.best_checkpoint) / "model.safetensors")))
    assert compiled.best_epoch == eager.best_epoch
    validation = load_split(features, "validation")
    logits = [predict_logits(ASTMeanPoolClassifier.from_pretrained(outcome.best_model_dir), validation, 8, CPU)
              for outcome in (compiled, eager)]
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-3, atol=1e-3)  # the same function, fused otherwise


def test_trunk_cache_is_skipped_when_it_would_fill_the_disk(tmp_path, monkeypatch):
    from collections import namedtuple

    from transformers import ASTModel

    import lib.model.trunk as trunk_module
    from lib.config import DataConfig, FinetuneConfig, ModelConfig, TrainingConfig
    from lib.data.features import FeatureCacheRef, FeatureParams
    from lib.model.classifier import apply_freezing, build_classifier
    from tests.helpers import small_config

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(trunk_module.shutil, "disk_usage", lambda path: usage(10**6, 0, 10**4))
    classifier = build_classifier(ASTModel(small_config()), ["a", "b"])
    apply_freezing(classifier, head_only=True)
    config = FinetuneConfig(
        name="x", data=DataConfig(train_dir=tmp_path, validation_dir=tmp_path, cache_dir=tmp_path / "c"),
        model=ModelConfig(ssl_checkpoint=tmp_path, head_only=True), training=TrainingConfig(device="cpu"),
    )
    features = FeatureCacheRef(
        path=str(tmp_path / "missing"), key="k", params=FeatureParams(num_mel_bins=64, max_frames=64),
        label_names=["a", "b"], num_clips={"train": 100, "validation": 10},
    )
    monkeypatch.setattr(trunk_module, "load_split", lambda ref, split: split)
    inputs = trunk_module.training_inputs(classifier, config, features, resolve_runtime("cpu"))
    assert not inputs.trunk.used and "more than half" in inputs.trunk.reason
    assert inputs.model is classifier
