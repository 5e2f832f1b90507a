"""Batched inference of a saved classifier over a feature dataset."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from lib.training import Runtime


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, dataset: Dataset, batch_size: int, runtime: Runtime) -> np.ndarray:
    """Logits (float32, shape clips x classes) in dataset order."""
    model = model.to(runtime.device).eval()
    dtype = runtime.autocast_dtype
    autocast = torch.autocast(runtime.device, dtype=dtype) if dtype is not None else nullcontext()
    outputs = []
    for batch in DataLoader(dataset.with_format("torch", columns=["input_values"]), batch_size=batch_size):
        with autocast:
            logits = model(input_values=batch["input_values"].to(runtime.device)).logits
        outputs.append(logits.float().cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, model.config.num_labels), np.float32)
