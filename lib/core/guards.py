"""Non-finite guards: a NaN or inf anywhere in weights, logits or the loss stops the run, named.

One huge sample, one corrupt weight or a diverging learning rate turns a model into NaNs without
any error from torch; evaluation then scores it (argmax of NaN is class 0) and it would be
published over a good member. Every stage that produces numbers checks them here.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from transformers import TrainerCallback

from lib.core.errors import ConfigError, NonFiniteError

SHOWN = 5  # names listed in a message; the count says how many more


def name_list(names: list[str]) -> str:
    """The first few names and how many more: what an error message lists."""
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating-point tensors that hold any NaN or inf."""
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    return [
        name
        for name, tensor in items
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]


def check_finite_tensors(
    tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]], what: str, fix: str
) -> None:
    bad = nonfinite_tensors(tensors)
    if bad:
        raise NonFiniteError(f"{what}: {len(bad)} tensors hold NaN or inf ({name_list(bad)}); {fix}")


def check_finite_logits(logits: np.ndarray, what: str) -> None:
    finite = np.isfinite(logits).all(axis=-1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise NonFiniteError(
            f"{what} gives NaN or inf logits for {len(rows)} of {len(logits)} validation clips "
            f"(rows {rows[:SHOWN].tolist()}); check those clips' features for extreme values. It is not published"
        )


def nonfinite_in_folder(folder: Path) -> list[str]:
    """'file: tensor' for every non-finite tensor in the folder's *.safetensors and *.npz files."""
    bad: list[str] = []
    for path in sorted(Path(folder).rglob("*.safetensors")):
        with safe_open(str(path), framework="pt") as weights:
            tensors = ((key, weights.get_tensor(key)) for key in weights.keys())
            bad += [f"{path.name}: {key}" for key in nonfinite_tensors(tensors)]
    for path in sorted(Path(folder).rglob("*.npz")):
        with np.load(path) as arrays:
            bad += [
                f"{path.name}: {key}"
                for key in arrays.files
                if np.issubdtype(arrays[key].dtype, np.floating) and not np.isfinite(arrays[key]).all()
            ]
    return bad


def check_finite_folder(folder: Path, what: str, fix: str) -> None:
    bad = nonfinite_in_folder(folder)
    if bad:
        raise NonFiniteError(f"{what}: {len(bad)} arrays hold NaN or inf ({name_list(bad)}); {fix}")


class NonFiniteLossCallback(TrainerCallback):
    """Stop training when the logged training loss or the validation loss is NaN or inf.

    Needs TrainingArguments(logging_nan_inf_filter=False): by default Trainer replaces a NaN step's
    loss by the running mean, so the log looks healthy while the weights are already NaN. The check
    runs when Trainer logs (each epoch here), before that epoch is evaluated or checkpointed, so the
    work dir keeps only finite checkpoints.
    """

    def __init__(self) -> None:
        self.last_step = 0

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.last_step = state.global_step

    def _stop(self, state, which: str, value: float) -> None:
        epoch = math.ceil(state.epoch or 0)
        raise NonFiniteError(
            f"the {which} became {value} in epoch {epoch} (optimizer steps {self.last_step + 1}-{state.global_step}); "
            "the model diverged. Lower --learning-rate, raise --warmup-steps, or use --precision fp32 "
            "(fp16 overflows more easily than bf16). If it diverges from the first epoch whatever you change, the "
            "inputs are bad: a clip with extreme values, or a corrupt cache (delete <cache_dir>/features and "
            "<cache_dir>/encoders to rebuild them). The checkpoints "
            "of earlier epochs are kept in the work dir; nothing was published"
        )

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self._stop(state, "training loss", loss)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if loss is not None and not math.isfinite(loss):
            self._stop(state, "validation loss", loss)


def check_output_file(path: Path, flag: str, example: str, error: type[Exception] = ConfigError) -> None:
    """An output file can be written before any work is done for it: not a folder, below folders (missing ones are
    created), writable (a real probe: permissions, read-only mounts, /proc all answer). flag names the option in
    the refusal; example is a file name to suggest."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{flag} {path} is a folder; pass a file name such as {path / example}")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise error(f"{flag} {path}: cannot overwrite it: permission denied; pass another file")
        return
    existing = next(p for p in path.parents if p.exists())
    if not existing.is_dir():
        raise error(f"{flag} {path}: {existing} is a file, not a folder; pass a path whose parents are folders")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as failure:
        raise error(
            f"{flag} {path}: cannot write in {existing} ({failure.strerror or failure}); choose a folder you can "
            "write to"
        ) from failure
