"""Batched inference of a saved classifier, under the runtime's autocast."""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from lib.core.runtime import Runtime


@torch.inference_mode()
def batch_logits(model: torch.nn.Module, input_values: torch.Tensor, runtime: Runtime) -> np.ndarray:
    """Logits (float32, clips x classes) of one batch of features; the model is on runtime.device, in eval mode."""
    dtype = runtime.autocast_dtype
    with torch.autocast(runtime.device, dtype=dtype, enabled=dtype is not None):
        logits = model(input_values=input_values.to(runtime.device)).logits
    return logits.float().cpu().numpy()


def predict_logits(model: torch.nn.Module, dataset: Dataset, batch_size: int, runtime: Runtime) -> np.ndarray:
    """Logits (float32, shape clips x classes) in dataset order."""
    model = model.to(runtime.device).eval()
    outputs = [
        batch_logits(model, batch["input_values"], runtime)
        for batch in DataLoader(dataset.with_format("torch", columns=["input_values"]), batch_size=batch_size)
    ]
    return np.concatenate(outputs) if outputs else np.zeros((0, model.config.num_labels), np.float32)
