"""Helpers shared by test modules (fixtures live in conftest.py): tiny configs, random features, callbacks."""

from __future__ import annotations

import numpy as np
from datasets import Dataset
from transformers import TrainerCallback

from lib.example import tiny_ast_config
from lib.core.runtime import resolve_runtime

CPU = resolve_runtime("cpu", "auto")


def small_config(**overrides):
    """2 layers, 32 hidden, 64 mel bins x 64 frames: 27 tokens, trains in a second or two."""
    values = dict(hidden_size=32, intermediate_size=64, num_mel_bins=64, max_length=64)
    values.update(overrides)
    return tiny_ast_config(**values)


def random_features(count: int, seed: int, poison_rows: tuple[int, ...] = ()) -> Dataset:
    """count clips of 64 x 64 Gaussian features, labels 0, 1, 2, 0, ...; poison_rows hold 1e30 (finite, overflows)."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((count, 64, 64)).astype(np.float32)
    for row in poison_rows:
        values[row] = 1e30
    return Dataset.from_dict({"input_values": values, "label": [index % 3 for index in range(count)]}).with_format("torch")


class StopAfterEpoch(TrainerCallback):
    """Ends training after `epoch` epochs, once that epoch's checkpoint is saved: a run killed there."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, args, state, control, **kwargs):
        if round(state.epoch) >= self.epoch:
            control.should_training_stop = True
