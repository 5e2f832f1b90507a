"""Frozen-trunk cache: run the frozen leading encoder layers once per clip, train the rest on their output.

Head-only and last-N members never change the patch embeddings and the first K encoder layers
(K = all layers for head-only, L - N for last-N). When those layers are also deterministic (no
dropout, no augmentation of their input), their output for a clip is the same in every epoch, so
it is computed once, in eval mode without gradients, stored (fp16 by default) under
``<cache_dir>/trunk/<key>/``, and training runs only the tail: layers[K:] + final layernorm +
pooling + head (``TrunkTail``), on the cached token states.

The cache holds token states, not pooled embeddings, even for head-only: the final layernorm
trains (the head and final layernorm always train, see lib.model.classifier.apply_freezing) and it normalises
each token before the mean, so nothing can be pooled ahead of it.

The tail shares its parameters with the full ``ASTMeanPoolClassifier`` it wraps: after training,
that classifier holds the trained weights and is saved with ``save_pretrained`` as before, so
evaluation and publishing do not know the cache was used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn
from transformers import default_data_collator
from transformers.modeling_outputs import SequenceClassifierOutput

from lib.config import FinetuneConfig
from lib.core.errors import TrunkOverflow
from lib.core.hashing import digest
from lib.core.layout import TRUNK_FOLDER, WEIGHTS_FILE
from lib.core.runtime import Runtime
from lib.core.staging import build_lock, file_sizes_match, record_file_sizes, staged_folder
from lib.data.feature_rows import FeatureRows
from lib.data.features import FeatureCacheRef, load_split
from lib.data.scan import SPLITS
from lib.model.checkpoint import architecture_dict
from lib.model.classifier import ASTMeanPoolClassifier

logger = logging.getLogger(__name__)

TRUNK_VERSION = "1"  # bump when what is cached changes, to invalidate old trunk caches
# fp16 halves the cache; float32 is the fallback when the trunk's outputs overflow fp16's range.
STORAGE_DTYPES = ("float16", "float32")
FLOAT16_MAX = float(np.finfo(np.float16).max)


class TrunkCacheInfo(BaseModel):
    """Whether a member trained on cached trunk outputs, and why (not); recorded in member.json."""

    used: bool
    reason: str
    layers: int | None = None  # K: the embeddings and layers[:K] were cached
    path: str | None = None
    dtype: str | None = None
    hit: bool | None = None
    build_seconds: float | None = None


def frozen_trunk_layers(config: FinetuneConfig, encoder_config) -> tuple[int | None, str]:
    """K (the frozen, deterministic leading layers to cache), or None, with the reason either way."""
    model, training = config.model, config.training
    layers = encoder_config.num_hidden_layers
    if not training.trunk_cache:
        return None, "training.trunk_cache is false"
    if not model.head_only and model.train_last_n_layers == 0:
        return None, "full fine-tuning: no encoder layer is frozen"
    if training.num_processes > 1:
        return None, f"training.num_processes={training.num_processes}: the trunk cache supports one process"
    if training.augmentation.enabled:
        return None, "training.augmentation is on: the trunk's input changes every epoch"
    dropout = {
        key: getattr(encoder_config, key) for key in ("hidden_dropout_prob", "attention_probs_dropout_prob")
    }
    if any(dropout.values()):
        found = ", ".join(f"{key}={value}" for key, value in dropout.items())
        return None, f"the encoder config has dropout ({found}): the frozen layers are not deterministic in training"
    trunk = layers if model.head_only else layers - model.train_last_n_layers
    if trunk == 0:
        return None, (
            f"train_last_n_layers={model.train_last_n_layers} trains every layer: only the patch embedding is frozen"
        )
    variant = "head only" if model.head_only else f"last {model.train_last_n_layers} of {layers} layers trained"
    return trunk, f"{variant}: embeddings and layers[:{trunk}] are frozen and deterministic"


def run_layers(hidden_states: torch.Tensor, layers) -> torch.Tensor:
    # ASTModel passes no attention mask for unpadded inputs (create_bidirectional_mask gives None).
    for layer in layers:
        hidden_states = layer(hidden_states, None)
    return hidden_states


def compute_trunk(encoder, input_values: torch.Tensor, layers: int) -> torch.Tensor:
    """Token states after the embeddings and encoder.layers[:layers] (before the final layernorm)."""
    return run_layers(encoder.embeddings(input_values), encoder.layers[:layers])


def trunk_digest(encoder, layers: int) -> str:
    """Identity of the trunk: its architecture and the bytes of every embedding and trunk-layer tensor."""
    # Streamed tensor by tensor (lib.core.hashing.digest would need all the bytes at once).
    hasher = hashlib.sha256(json.dumps(architecture_dict(encoder.config), sort_keys=True).encode())
    trunk_prefixes = ("embeddings.", *(f"layers.{index}." for index in range(layers)))
    for name, tensor in sorted(encoder.state_dict().items()):
        if name.startswith(trunk_prefixes):
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            hasher.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            hasher.update(flat.view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()[:24]


def trunk_cache_key(
    feature_key: str, trunk: str, layers: int, dtype: str, precision: str, attention: str | None, tf32: bool
) -> str:
    return digest({
        "features": feature_key, "trunk": trunk, "layers": layers, "dtype": dtype,
        # the trunk runs under the training's autocast, attention kernel and TF32 mode, as it would in training
        "precision": precision, "attention": attention, "tf32": tf32,
        "version": TRUNK_VERSION,
    })


def _files(split: str) -> tuple[str, str]:
    return f"{split}.states.npy", f"{split}.labels.npy"


@torch.no_grad()
def _write_split(encoder, features: FeatureCacheRef, split: str, layers: int, dtype: str, folder: Path,
                 runtime: Runtime, batch_size: int) -> list[int]:
    dataset = load_split(features, split)
    states_file, labels_file = _files(split)
    states = None
    autocast_dtype = runtime.autocast_dtype
    for start in range(0, len(dataset), batch_size):
        batch = dataset[start : start + batch_size]
        with torch.autocast(runtime.device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            hidden = compute_trunk(encoder, batch["input_values"].to(runtime.device), layers).float()
        if dtype == "float16" and not bool((hidden.abs() <= FLOAT16_MAX).all()):
            raise TrunkOverflow(f"trunk outputs of {split} clips exceed float16's range ({FLOAT16_MAX})")
        if states is None:  # the token count and width are known once the first batch has run
            shape = (len(dataset), *hidden.shape[1:])
            states = np.lib.format.open_memmap(folder / states_file, mode="w+", dtype=dtype, shape=shape)
        states[start : start + len(hidden)] = hidden.cpu().numpy().astype(dtype)
    states.flush()
    labels = dataset.with_format("numpy", columns=["label"])["label"][:]
    # a class per clip, or a multi-label clip's multi-hot row (float32, as binary cross-entropy takes it)
    np.save(folder / labels_file, labels.astype(np.int64) if labels.ndim == 1 else labels.astype(np.float32))
    return list(states.shape)


def _build(encoder, features: FeatureCacheRef, layers: int, dtype: str, root: Path, key: str, meta: dict,
           runtime: Runtime, batch_size: int) -> Path:
    with staged_folder(root, key, file_sizes_match, "trunk cache") as staging:
        shapes = {
            split: _write_split(encoder, features, split, layers, dtype, staging, runtime, batch_size)
            for split in SPLITS
        }
        record_file_sizes(staging, key, {**meta, "dtype": dtype, "shapes": shapes})  # last: marks the cache complete
    return root / key


def build_trunk_cache(
    classifier: ASTMeanPoolClassifier,
    layers: int,
    features: FeatureCacheRef,
    cache_dir: Path,
    runtime: Runtime,
    batch_size: int,
    dtypes: tuple[str, ...] = STORAGE_DTYPES,
) -> tuple[Path, str, bool]:
    """The trunk cache of these features, trunk weights and K: (folder, stored dtype, was a hit).

    A complete cache in any of `dtypes` is a hit. Otherwise it is built in dtypes[0], or in the
    next one if the trunk's outputs overflow float16. Built in a staging folder and renamed into
    place, with meta.json (file sizes) written last, as the feature cache is: a crash or a
    concurrent builder never leaves a cache that looks complete.
    """
    if not dtypes or set(dtypes) - set(STORAGE_DTYPES):
        raise ValueError(f"dtypes must be taken from {STORAGE_DTYPES}, got {dtypes!r}")
    encoder = classifier.encoder
    trunk = trunk_digest(encoder, layers)
    root = Path(cache_dir) / TRUNK_FOLDER
    attention = encoder.config._attn_implementation
    keys = {
        dtype: trunk_cache_key(features.key, trunk, layers, dtype, runtime.precision, attention, runtime.tf32)
        for dtype in dtypes
    }
    meta = {"version": TRUNK_VERSION, "layers": layers, "precision": runtime.precision, "attention": attention,
            "tf32": runtime.tf32, "feature_cache_key": features.key, "trunk_digest": trunk}
    # two runs building it at once: one builds, the other waits, then reuses
    with build_lock(root / keys[dtypes[0]], "trunk cache"):
        for dtype, key in keys.items():
            if file_sizes_match(root / key, key):
                return root / key, dtype, True
        return _build_first_fitting(classifier, features, layers, keys, meta, root, runtime, batch_size)


def _build_first_fitting(classifier: ASTMeanPoolClassifier, features: FeatureCacheRef, layers: int,
                         keys: dict[str, str], meta: dict, root: Path, runtime: Runtime,
                         batch_size: int) -> tuple[Path, str, bool]:
    """Build the cache in the first dtype of keys (dtype -> key) that holds the trunk's outputs."""
    encoder, dtypes = classifier.encoder, list(keys)
    was_training, device = classifier.training, next(classifier.parameters()).device
    encoder.to(runtime.device).eval()  # eval: no dropout, whatever the config says
    try:
        for dtype, key in keys.items():
            try:
                return _build(encoder, features, layers, dtype, root, key, meta, runtime, batch_size), dtype, False
            except TrunkOverflow as error:
                if dtype == dtypes[-1]:
                    raise
                logger.warning("%s; caching the trunk in the next dtype of %s instead", error, dtypes)
    finally:
        encoder.to(device).train(was_training)
    raise AssertionError("unreachable: the last dtype returns or raises")


class TrunkStates(torch.utils.data.Dataset):
    """One split of a trunk cache, memory-mapped: {'hidden_states': (tokens, hidden), 'labels': int, or a
    multi-label clip's multi-hot row}."""

    def __init__(self, folder: Path, split: str):
        states_file, labels_file = _files(split)
        self.states_path = Path(folder) / states_file
        self.labels = np.load(Path(folder) / labels_file)
        self._states = None

    @property
    def states(self) -> np.ndarray:
        if self._states is None:
            self._states = np.load(self.states_path, mmap_mode="r")
        return self._states

    def __getstate__(self) -> dict:
        # a pickled np.memmap carries all its data: DataLoader workers started by spawn or
        # forkserver map the file themselves instead
        return {**self.__dict__, "_states": None}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        # a copy: torch refuses to wrap the read-only memory map; the tail casts fp16 to its own dtype
        label = self.labels[index]
        return {"hidden_states": torch.from_numpy(np.array(self.states[index])),
                "labels": int(label) if label.ndim == 0 else torch.from_numpy(label)}


class TrunkTail(nn.Module):
    """encoder.layers[K:] + final layernorm + pooling + head of a classifier, run on cached trunk outputs.

    It holds the full classifier as a submodule, so the two share every parameter: Trainer trains
    (and checkpoints, resumes and reloads the best epoch of) the tail's state dict, which is the
    classifier's under a `full_model.` prefix, and `full_model` is what gets saved for evaluation.
    The forward signature mirrors the classifier's (`labels`, `**kwargs`), so Trainer treats the
    loss, labels and gradient accumulation the same way for both.
    """

    accepts_loss_kwargs = False  # as ASTMeanPoolClassifier: a plain mean loss, see there

    main_input_name = "hidden_states"

    def __init__(self, classifier: ASTMeanPoolClassifier, trunk_layers: int):
        super().__init__()
        encoder = classifier.encoder
        if not 0 < trunk_layers <= len(encoder.layers):
            raise ValueError(f"trunk_layers must be 1..{len(encoder.layers)}, got {trunk_layers}")
        trunk = [encoder.embeddings, *encoder.layers[:trunk_layers]]
        if any(parameter.requires_grad for module in trunk for parameter in module.parameters()):
            raise ValueError(
                f"the embeddings and layers[:{trunk_layers}] must be frozen to train on their cached outputs; "
                "apply lib.model.classifier.apply_freezing (head_only or train_last_n_layers) first"
            )
        self.full_model = classifier
        self.trunk_layers = trunk_layers

    def forward(
        self, hidden_states: torch.Tensor, labels: torch.Tensor | None = None, **kwargs
    ) -> SequenceClassifierOutput:
        encoder = self.full_model.encoder
        hidden_states = hidden_states.to(encoder.layernorm.weight.dtype)
        hidden_states = run_layers(hidden_states, encoder.layers[self.trunk_layers:])
        return self.full_model.classify(encoder.layernorm(hidden_states), labels)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # Trainer reloads checkpoints (resume, best model at end) with strict=False, which would
        # skip a mismatched key with only a log line; a tail checkpoint must match exactly.
        return super().load_state_dict(state_dict, strict=True, assign=assign)

    def save_classifier(self, directory: Path) -> None:
        """Replace the tail's state dict Trainer saved in `directory` with the full classifier."""
        (Path(directory) / WEIGHTS_FILE).unlink(missing_ok=True)
        self.full_model.save_pretrained(str(directory))


@dataclass
class TrainingInputs:
    """What a member's Trainer trains (the classifier on features, or its tail on cached trunk outputs), and how."""

    model: nn.Module
    train: torch.utils.data.Dataset
    validation: torch.utils.data.Dataset
    trunk: TrunkCacheInfo
    data_collator: Callable | None = None
    save_best: Callable[[Path], None] | None = None

    @property
    def fingerprint_suffix(self) -> str:
        # Tail checkpoints hold the tail's state dict: never resume them as the classifier's, or back.
        return f"+trunk{self.trunk.layers}" if self.trunk.used else ""


def training_inputs(
    classifier: ASTMeanPoolClassifier, config: FinetuneConfig, features: FeatureCacheRef, runtime: Runtime
) -> TrainingInputs:
    """The tail on a (possibly new) trunk cache when eligible, else the classifier on the features; logged."""
    layers, reason = frozen_trunk_layers(config, classifier.config)
    if layers is None:  # lib.recipes.finetune logs the outcome (used, or why not) once
        return TrainingInputs(
            classifier, FeatureRows(load_split(features, "train")), FeatureRows(load_split(features, "validation")),
            TrunkCacheInfo(used=False, reason=reason),
        )
    # Token states are large (AST-base at 1024 frames: ~1.9 MB per clip in fp16): never fill the disk.
    embeddings = classifier.audio_spectrogram_transformer.embeddings.position_embeddings
    estimate = sum(features.num_clips[split] for split in SPLITS) * embeddings.shape[1] * embeddings.shape[2] * 2
    cache_root = Path(config.data.cache_dir)
    cache_root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache_root).free
    if estimate > free // 2:
        reason = (
            f"the trunk cache would take ~{estimate / 2**30:.1f} GiB, more than half of the "
            f"{free / 2**30:.1f} GiB free under {cache_root}"
        )
        logger.warning("trunk cache not used: %s", reason)
        return TrainingInputs(
            classifier, FeatureRows(load_split(features, "train")), FeatureRows(load_split(features, "validation")),
            TrunkCacheInfo(used=False, reason=reason),
        )
    start = time.perf_counter()
    folder, dtype, hit = build_trunk_cache(
        classifier, layers, features, config.data.cache_dir, runtime, config.training.batch_size
    )
    seconds = time.perf_counter() - start
    logger.info("trunk cache %s %s (%s, %s, %.1f s): %s", "reused" if hit else "built", folder, dtype,
                f"K={layers}", seconds, reason)
    info = TrunkCacheInfo(used=True, reason=reason, layers=layers, path=str(folder), dtype=dtype, hit=hit,
                          build_seconds=None if hit else seconds)
    tail = TrunkTail(classifier, layers)
    # the feature extractor's padding collator expects input_values: token states are stacked as they are;
    # best-model/ gets the full classifier (the shared weights), which evaluation and publish load
    return TrainingInputs(tail, TrunkStates(folder, "train"), TrunkStates(folder, "validation"), info,
                          data_collator=default_data_collator, save_best=tail.save_classifier)
