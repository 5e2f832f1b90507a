import json
import math

import pytest
import torch
from transformers import ASTModel, Trainer, TrainerCallback, TrainingArguments

from lib.config import AugmentationConfig, TrainingConfig
from lib.core.runtime import seed_everything
from lib.data.augment import (
    MASK_VALUE,
    AugmentingTrainerMixin,
    FeatureAugmenter,
    Mixup,
    augmenting_trainer,
    draw_mixup,
    random_time_shifts,
    roll_frames,
    soft_target_cross_entropy,
    spec_augment,
)
from lib.data.features import load_split, make_feature_extractor
from lib.evaluate.metrics import compute_metrics
from lib.model.classifier import build_classifier
from lib.train.arguments import finetune_arguments
from lib.train.schedule import EpochBatchSizeTrainer
from tests.helpers import (
    CPU,
    StopAfterEpoch,
    random_features,
    small_config,
    train_classifier,
)


def bands(mask: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of each run of True in a 1-D bool tensor."""
    runs, start = [], None
    for index, value in enumerate(mask.tolist() + [False]):
        if value and start is None:
            start = index
        elif not value and start is not None:
            runs.append((start, index))
            start = None
    return runs


def test_spec_augment_fills_one_band_per_axis_per_sample_within_the_max_widths():
    torch.manual_seed(0)
    ones = torch.ones(200, 40, 16)  # (batch, frames, mel bins)
    out = spec_augment(ones, freq_mask_bins=5, time_mask_frames=7)
    freq_widths, time_widths = [], []
    for sample in out:
        masked_bins = (sample == MASK_VALUE).all(dim=0)  # a mel bin masked at every frame
        masked_frames = (sample == MASK_VALUE).all(dim=1)
        freq_bands, time_bands = bands(masked_bins), bands(masked_frames)
        assert len(freq_bands) <= 1 and len(time_bands) <= 1
        # everything outside the two bands is untouched, everything inside is the fill value
        expected = torch.where(masked_bins[None, :] | masked_frames[:, None], MASK_VALUE, 1.0)
        assert torch.equal(sample, expected)
        freq_widths.append(sum(end - start for start, end in freq_bands))
        time_widths.append(sum(end - start for start, end in time_bands))
    # widths are uniform in 0..N-1 and drawn per sample: over 200 samples every width shows up
    assert sorted(set(freq_widths)) == [0, 1, 2, 3, 4]
    assert sorted(set(time_widths)) == [0, 1, 2, 3, 4, 5, 6]
    assert torch.equal(ones, torch.ones(200, 40, 16))  # the input is not modified in place


def test_spec_augment_refuses_masks_wider_than_the_features():
    with pytest.raises(ValueError, match="freq_mask_bins=17 .* exceed the features' 16 mel bins / 40 frames"):
        spec_augment(torch.ones(2, 40, 16), freq_mask_bins=17, time_mask_frames=0)


def test_roll_shifts_each_sample_by_its_drawn_amount():
    features = torch.arange(3 * 12 * 2, dtype=torch.float32).reshape(3, 12, 2)
    shifts = torch.tensor([0, 3, -5])
    rolled = roll_frames(features, shifts)
    for sample, shift in enumerate(shifts.tolist()):
        assert torch.equal(rolled[sample], torch.roll(features[sample], shift, dims=0))
    assert rolled[1, 3, 0] == features[1, 0, 0]  # frame 0 moved to frame 3

    # the augmenter rolls by the shifts drawn from the seeded generator, -10..9 as AST's randint(-10, 10)
    torch.manual_seed(5)
    out, mixup = FeatureAugmenter(AugmentationConfig(time_roll=True))(features)
    torch.manual_seed(5)
    assert mixup is None and torch.equal(out, roll_frames(features, random_time_shifts(3)))
    drawn = random_time_shifts(5000)
    assert (drawn.min().item(), drawn.max().item()) == (-10, 9)


def test_noise_has_the_configured_std():
    torch.manual_seed(1)
    features = torch.full((64, 128, 64), 2.0)
    out, _ = FeatureAugmenter(AugmentationConfig(noise_std=0.3))(features)
    noise = out - features
    assert noise.std().item() == pytest.approx(0.3, rel=0.01)
    assert abs(noise.mean().item()) < 0.003


def test_mixup_soft_target_loss_equals_the_hand_computed_value():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 3.0]])
    labels = torch.tensor([0, 2, 1])
    partner = torch.tensor([1, 0, 2])
    weight = torch.tensor([0.7, 1.0, 0.25])

    def log_softmax(row, index):
        return row[index] - math.log(sum(math.exp(value) for value in row))

    rows = logits.tolist()
    # sample 0: 0.7 of class 0, 0.3 of its partner's class 2; sample 1 unmixed (class 2);
    # sample 2 mixed with itself: 0.25 + 0.75 of class 1
    expected = -(
        0.7 * log_softmax(rows[0], 0) + 0.3 * log_softmax(rows[0], 2)
        + 1.0 * log_softmax(rows[1], 2)
        + 0.25 * log_softmax(rows[2], 1) + 0.75 * log_softmax(rows[2], 1)
    ) / 3
    assert soft_target_cross_entropy(logits, labels, partner, weight).item() == pytest.approx(expected, rel=1e-6)
    # unmixed, it is the model's own (hard-label) cross-entropy
    unmixed = soft_target_cross_entropy(logits, labels, partner, torch.ones(3))
    assert unmixed.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)

    features = torch.tensor([[[1.0]], [[10.0]], [[100.0]]])
    mixed = Mixup(partner=partner, weight=weight).mix(features)
    assert mixed.flatten().tolist() == pytest.approx([0.7 * 1 + 0.3 * 10, 10.0, 100.0])


def test_mixup_draws_per_sample_with_the_configured_probability_and_beta_weights():
    torch.manual_seed(2)
    assert torch.equal(draw_mixup(50, 0.0, 10.0).weight, torch.ones(50))
    mixup = draw_mixup(20000, 0.3, 10.0)
    mixed = mixup.weight < 1
    assert mixed.float().mean().item() == pytest.approx(0.3, abs=0.015)
    # Beta(10, 10): mean 0.5, std sqrt(1 / (4 * 21))
    assert mixup.weight[mixed].mean().item() == pytest.approx(0.5, abs=0.005)
    assert mixup.weight[mixed].std().item() == pytest.approx(math.sqrt(1 / 84), rel=0.05)
    assert mixup.partner.min().item() == 0 and mixup.partner.max().item() == 19999


def tiny_trainer(tmp_path, augmentation: AugmentationConfig, trainer_class=Trainer, **kwargs):
    seed_everything(0, True)
    model = build_classifier(ASTModel(small_config()), ["a", "b", "c"])
    config = TrainingConfig(epochs=2, batch_size=4, gradient_accumulation_steps=1, learning_rate=1e-3, warmup_steps=0)
    return augmenting_trainer(trainer_class)(
        augmentation=augmentation, model=model, args=TrainingArguments(**finetune_arguments(config, tmp_path, CPU)),
        train_dataset=random_features(12, 0), eval_dataset=random_features(6, 1), compute_metrics=compute_metrics,
        **kwargs,
    )


def test_compute_loss_uses_soft_targets_in_training_and_the_plain_loss_in_evaluation(tmp_path):
    trainer = tiny_trainer(tmp_path, AugmentationConfig(mixup_probability=1.0, mixup_alpha=2.0))
    model = trainer.model
    batch = random_features(4, 3)[:4]
    inputs = {"input_values": batch["input_values"], "labels": batch["label"]}

    model.train()
    torch.manual_seed(7)
    loss = trainer.compute_loss(model, dict(inputs))
    torch.manual_seed(7)  # the same draws, by hand
    mixup = draw_mixup(4, 1.0, 2.0)
    assert (mixup.weight < 1).all()
    logits = model(input_values=mixup.mix(inputs["input_values"])).logits
    assert loss.item() == pytest.approx(mixup.loss(logits, inputs["labels"]).item(), rel=1e-6)
    assert loss.item() != pytest.approx(model(**inputs).loss.item(), rel=1e-3)

    model.eval()
    loss, outputs = trainer.compute_loss(model, dict(inputs), return_outputs=True)
    with torch.no_grad():
        plain = model(**inputs)
    assert loss.item() == pytest.approx(plain.loss.item(), rel=1e-6)
    assert torch.allclose(outputs.logits, plain.logits)


class InputRecorder:
    """input_values the model is called with, split by train/eval mode."""

    def __init__(self, model):
        self.train: list[torch.Tensor] = []
        self.eval: list[torch.Tensor] = []
        model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        (self.train if module.training else self.eval).append(kwargs["input_values"].detach().clone())


@pytest.mark.train
def test_training_batches_are_augmented_and_evaluation_batches_are_not(tmp_path):
    trainer = tiny_trainer(tmp_path, AugmentationConfig(time_mask_frames=20, noise_std=0.1))
    recorder = InputRecorder(trainer.model)
    trainer.train()

    dataset = trainer.train_dataset[:]["input_values"]
    seen = torch.cat(recorder.train)
    assert seen.shape == (2 * 12, 64, 64)
    # no training input is any clip as stored: every one carries noise
    assert torch.cdist(seen.flatten(1), dataset.flatten(1)).min() > 1.0
    # evaluation (two epochs, unshuffled) saw the stored clips exactly
    assert torch.equal(torch.cat(recorder.eval), torch.cat([trainer.eval_dataset[:]["input_values"]] * 2))


def losses(work_dir) -> list[dict]:
    history = json.loads((work_dir / "log_history.json").read_text())
    drop = ("runtime", "per_second", "total_flos")
    return [{key: value for key, value in entry.items() if not any(part in key for part in drop)} for entry in history]


class TrainBatches(TrainerCallback):
    """Size and count of fully masked frames of each batch the model trains on."""

    def __init__(self, model):
        self.sizes: list[int] = []
        self.masked_frames: list[int] = []
        model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        if module.training:
            values = kwargs["input_values"]
            self.sizes.append(values.shape[0])
            self.masked_frames.append(int((values == MASK_VALUE).all(dim=2).sum()))


def run_classifier(tmp_path, name: str, augmentation: AugmentationConfig, batch_sizes=None, work=None, stop=None):
    seed_everything(0, True)
    model = build_classifier(ASTModel(small_config()), ["a", "b", "c"])
    recorder = TrainBatches(model)
    config = TrainingConfig(
        epochs=3, batch_size=4, batch_sizes=batch_sizes, gradient_accumulation_steps=2, learning_rate=1e-3,
        warmup_steps=0, augmentation=augmentation,
    )
    outcome = train_classifier(
        model, random_features(16, 0), random_features(6, 1), None, config,
        tmp_path / (work or name), tmp_path / f"{name}.txt", "fingerprint", CPU,
        extra_callbacks=[recorder] + ([StopAfterEpoch(stop)] if stop else []),
    )
    return outcome, losses(tmp_path / (work or name)), recorder


@pytest.mark.train
def test_default_augmentation_leaves_training_unchanged(tmp_path, monkeypatch):
    _, default, plain = run_classifier(tmp_path, "default", AugmentationConfig())
    assert [entry["epoch"] for entry in default if "loss" in entry] == [1, 2, 3]
    assert sum(plain.masked_frames) == 0

    # the augmenting trainer itself, forced on with every transform at its default (off), changes nothing
    monkeypatch.setattr(AugmentationConfig, "enabled", property(lambda self: True))
    _, passthrough, _ = run_classifier(tmp_path, "passthrough", AugmentationConfig())
    assert passthrough == default
    # ...while any one transform does change the run (so the comparison above can fail)
    _, noisy, _ = run_classifier(tmp_path, "noisy", AugmentationConfig(noise_std=0.05))
    assert noisy != default


@pytest.mark.train
def test_an_augmented_run_resumed_from_a_checkpoint_ends_as_an_uninterrupted_one(tmp_path):
    augmentation = AugmentationConfig(freq_mask_bins=10, time_mask_frames=10, mixup_probability=0.5, time_roll=True)
    _, straight, _ = run_classifier(tmp_path, "straight", augmentation)
    first, _, _ = run_classifier(tmp_path, "killed", augmentation, work="resumed", stop=2)
    resumed, history, _ = run_classifier(tmp_path, "again", augmentation, work="resumed")
    assert first.epochs_run == 2 and resumed.resumed_from.endswith("checkpoint-4")
    # Trainer restored the generator state saved after epoch 2, so epoch 3 drew the same augmentations
    by_epoch = {entry["epoch"]: entry for entry in history if "loss" in entry or "eval_loss" in entry}
    expected = {entry["epoch"]: entry for entry in straight if "loss" in entry or "eval_loss" in entry}
    assert by_epoch[3.0] == expected[3.0]


@pytest.mark.train
def test_augmentation_composes_with_the_batch_size_schedule(tmp_path):
    assert issubclass(augmenting_trainer(EpochBatchSizeTrainer), (AugmentingTrainerMixin, EpochBatchSizeTrainer))
    outcome, _, recorder = run_classifier(
        tmp_path, "schedule", AugmentationConfig(time_mask_frames=30), batch_sizes=[2, 4, 8]
    )
    # 16 clips per epoch at batch sizes 2, 4 and 8, as without augmentation...
    assert recorder.sizes == [2] * 8 + [4] * 4 + [8] * 2
    assert outcome.batch_sizes == [2, 4, 8]
    # ...and the batches were time-masked (random features are never exactly 0)
    assert sum(recorder.masked_frames) > 0


@pytest.mark.slow
def test_tiny_ast_still_learns_with_every_augmentation_on(features, ssl_checkpoint, tmp_path):
    from lib.model.checkpoint import load_encoder

    seed_everything(0, True)
    encoder, _ = load_encoder(ssl_checkpoint)
    model = build_classifier(encoder, features.label_names)
    augmentation = AugmentationConfig(
        freq_mask_bins=12, time_mask_frames=16, mixup_probability=0.5, noise_std=0.05, time_roll=True
    )
    config = TrainingConfig(
        epochs=12, batch_size=8, gradient_accumulation_steps=1, learning_rate=2e-3, warmup_steps=0.1, seed=0,
        augmentation=augmentation,
    )
    outcome = train_classifier(
        model, load_split(features, "train"), load_split(features, "validation"),
        make_feature_extractor(features.params), config, tmp_path / "work", tmp_path / "log.txt", "aug", CPU,
    )
    assert outcome.epochs_run == 12
    # 3 classes: chance is 0.33. Augmentation slows this 12-epoch run on 48 clips: it reached 0.72-0.78
    # over seeds 0-2 (one validation clip is 0.056), against >= 0.8 without augmentation.
    assert outcome.best_metric >= 0.6
