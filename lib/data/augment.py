"""Training-time augmentation of AST features: the AST/SSAST recipe, applied to training batches only.

Features are (batch, frames, mel_bins), already normalised (as the model sees them). Per batch,
in the reference's order, after background noise where asked for (lib.data.noise: TensorFlow's Speech
Commands recipe, not AST's):

1. mixup: each sample, with probability p, is mixed with a random sample of the same batch,
   x = lam * x + (1 - lam) * x_other with its own lam ~ Beta(alpha, alpha); its target becomes
   lam * y + (1 - lam) * y_other, and the loss is cross-entropy against that soft target;
2. SpecAugment: one frequency band and one time band per sample, each of a width drawn uniformly
   from 0..N-1 (torchaudio's FrequencyMasking/TimeMasking, iid per sample), set to MASK_VALUE;
3. Gaussian noise of std noise_std;
4. time roll: each sample rolled by a random -10..9 frames along time (wrapping around).

Where this differs from the reference (YuanGongND/ast src/dataloader.py, which SSAST reuses):
- mixup mixes the cached normalised log-mel features, not the waveforms before the fbank (the
  waveforms are not kept once the feature cache is built), and picks the partner from the batch,
  not from the whole dataset;
- masks fill with 0 in the normalised space, i.e. the dataset mean, where the reference fills the
  raw log-mel with 0 before normalising (about +0.47 after AudioSet normalisation, a loud bin);
- the reference's noise is uniform, `rand * U(0, 0.1)` per sample (mean 0.025, std about 0.022
  overall); here it is zero-mean Gaussian with a fixed std, so noise_std=0.02 is of the same size
  without shifting the features; the reference rolls only together with its noise, here
  time_roll is its own switch.

Randomness comes from torch's global generator, per sample: Trainer seeds it with training.seed
at the start of training and saves and restores it with every checkpoint, so an augmented run is
reproducible and a resumed run draws what the uninterrupted run would have drawn.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torchaudio.transforms
from torch import nn

from lib.config import AugmentationConfig

if TYPE_CHECKING:
    from lib.data.noise import BackgroundNoise

# With features.normalize (the default), 0 is the dataset mean: masked bands carry no energy cue.
# Without it, 0 is a raw log-mel of 0, the reference's own fill value.
MASK_VALUE = 0.0
# AST's dataloader: torch.roll(fbank, np.random.randint(-10, 10), 0), i.e. -10..9 frames.
TIME_ROLL_FRAMES = 10


@dataclass(frozen=True)
class Mixup:
    """Sample i was mixed with sample partner[i] with weight[i] on its own (1 = not mixed)."""

    partner: torch.Tensor  # (batch,) long
    weight: torch.Tensor  # (batch,) float32

    def mix(self, features: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(features.dtype).view(-1, *([1] * (features.dim() - 1)))
        return weight * features + (1 - weight) * features[self.partner]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return soft_target_cross_entropy(logits, labels, self.partner, self.weight)


def draw_mixup(batch_size: int, probability: float, alpha: float, device: torch.device | str = "cpu") -> Mixup:
    """Per sample: mixed with probability `probability`, partner uniform in the batch, weight ~ Beta(alpha, alpha)."""
    mixed = torch.rand(batch_size, device=device) < probability
    partner = torch.randint(0, batch_size, (batch_size,), device=device)
    concentration = torch.tensor(float(alpha), device=device)
    lam = torch.distributions.Beta(concentration, concentration).sample((batch_size,))
    return Mixup(partner=partner, weight=torch.where(mixed, lam, torch.ones_like(lam)).float())


def soft_target_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, partner: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Mean over the batch of -sum_c t_c log softmax(logits)_c, t = w * onehot(y) + (1 - w) * onehot(y[partner]).

    Computed in float32, as the model's own loss is; with every weight 1 it is that loss exactly.
    """
    log_probs = nn.functional.log_softmax(logits.float(), dim=-1)
    labels = labels.long()
    own = log_probs.gather(1, labels[:, None]).squeeze(1)
    other = log_probs.gather(1, labels[partner][:, None]).squeeze(1)
    weight = weight.to(log_probs.dtype)
    return -(weight * own + (1 - weight) * other).mean()


def spec_augment(features: torch.Tensor, freq_mask_bins: int, time_mask_frames: int) -> torch.Tensor:
    """One frequency and one time mask per sample, widths uniform in 0..N-1, filled with MASK_VALUE."""
    _, frames, mel_bins = features.shape
    if freq_mask_bins > mel_bins or time_mask_frames > frames:
        raise ValueError(
            f"training.augmentation: freq_mask_bins={freq_mask_bins} / time_mask_frames={time_mask_frames} "
            f"exceed the features' {mel_bins} mel bins / {frames} frames; use masks narrower than the features"
        )
    # torchaudio masks (..., freq, time); AST features are (frames, mel), so transpose as SSAST does.
    spectrogram = features.transpose(1, 2)
    if freq_mask_bins:
        spectrogram = torchaudio.transforms.FrequencyMasking(freq_mask_bins, iid_masks=True)(spectrogram, MASK_VALUE)
    if time_mask_frames:
        spectrogram = torchaudio.transforms.TimeMasking(time_mask_frames, iid_masks=True)(spectrogram, MASK_VALUE)
    return spectrogram.transpose(1, 2)


def add_noise(features: torch.Tensor, std: float) -> torch.Tensor:
    return features + std * torch.randn_like(features)


def roll_frames(features: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Sample i rolled by shifts[i] frames along time: out[i, t] = features[i, (t - shifts[i]) % frames]."""
    frames = features.shape[1]
    source = (torch.arange(frames, device=features.device)[None, :] - shifts[:, None].to(features.device)) % frames
    return features.gather(1, source[..., None].expand_as(features))


def random_time_shifts(batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.randint(-TIME_ROLL_FRAMES, TIME_ROLL_FRAMES, (batch_size,), device=device)


class FeatureAugmenter:
    """The configured augmentations, in the reference's order; returns the mixup drawn (None without mixup)."""

    def __init__(self, config: AugmentationConfig, background_noise: BackgroundNoise | None = None):
        if config.background_noise_probability and background_noise is None:
            raise ValueError("training.augmentation.background_noise_probability > 0 needs the noise windows")
        self.config = config
        self.background_noise = background_noise

    def __call__(self, features: torch.Tensor) -> tuple[torch.Tensor, Mixup | None]:
        config = self.config
        batch_size, device = features.shape[0], features.device
        mixup = None
        if config.background_noise_probability:  # first: it stands for noise in the recording itself
            features = self.background_noise.mix(
                features, config.background_noise_probability, config.background_noise_volume
            )
        if config.mixup_probability:
            mixup = draw_mixup(batch_size, config.mixup_probability, config.mixup_alpha, device)
            features = mixup.mix(features)
        if config.freq_mask_bins or config.time_mask_frames:
            features = spec_augment(features, config.freq_mask_bins, config.time_mask_frames)
        if config.noise_std:
            features = add_noise(features, config.noise_std)
        if config.time_roll:
            features = roll_frames(features, random_time_shifts(batch_size, device))
        return features, mixup


class AugmentingTrainerMixin:
    """Augments training batches in compute_loss; put it before a transformers Trainer class in the bases.

    Trainer's evaluation calls compute_loss too, with the model in eval mode: those batches pass
    through untouched. With mixup the loss is the soft-target cross-entropy of the model's logits;
    the model's own forward (hard labels) is left as it is, since it is published as remote code.
    """

    def __init__(
        self, *args, augmentation: AugmentationConfig, background_noise: BackgroundNoise | None = None, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.augmenter = FeatureAugmenter(augmentation, background_noise)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not (model.training and self.augmenter.config.enabled):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        inputs["input_values"], mixup = self.augmenter(inputs["input_values"])
        if mixup is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if "labels" not in inputs:
            raise ValueError("training.augmentation.mixup_probability > 0 needs labelled training batches ('labels')")
        labels = inputs.pop("labels")  # so the model computes no hard-label loss of its own

        def soft_target_forward(**model_inputs):
            outputs = model(**model_inputs)
            outputs["loss"] = mixup.loss(outputs["logits"], labels)
            return outputs

        # Through Trainer's own compute_loss, so the soft-target loss is scaled for gradient
        # accumulation and processes exactly as the model's loss would be.
        return super().compute_loss(soft_target_forward, inputs, return_outputs, num_items_in_batch)


@functools.cache
def augmenting_trainer(trainer_class: type) -> type:
    """trainer_class with AugmentingTrainerMixin in front (Trainer, EpochBatchSizeTrainer, ...); takes augmentation=."""
    return type(f"Augmenting{trainer_class.__name__}", (AugmentingTrainerMixin, trainer_class), {})
