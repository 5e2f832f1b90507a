"""A feature cache split as the Trainer's dataset: rows gathered from zero-copy numpy views of the memory-mapped
Arrow buffers (FeatureRows), the values load_split gives.

Why not datasets' own torch formatting (load_split's, which evaluation keeps): it converts each row of a batch
through Python, about 1 ms per batch of 8 at 128 x 128 against 0.03 ms here, and a fine-tune's loop measured 16%
faster side by side on the 2-core machine (tiny AST, 1,200 clips, 2 epochs; docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset


def _values(chunk: pa.Array, shape: tuple[int, ...]) -> np.ndarray:
    """An Array2D chunk (a fixed-size list of fixed-size lists) as a (rows, *shape) numpy view, without a copy."""
    storage = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
    return storage.flatten().flatten().to_numpy(zero_copy_only=True).reshape(len(chunk), *shape)


class FeatureRows(torch.utils.data.Dataset):
    """The rows of a feature cache split (a load_split Dataset): input_values as float32 whatever the stored dtype
    (as datasets' torch format gives them), and label (a class, or a multi-label clip's multi-hot row)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset  # read when the Trainer first asks for a row or the length
        self._labels: np.ndarray | None = None
        self._chunks: list[np.ndarray] | None = None

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = np.asarray(self.dataset.with_format("numpy", columns=["label"])["label"][:])
        return self._labels

    @property
    def chunks(self) -> list[np.ndarray]:
        if self._chunks is None:
            shape = self.dataset.features["input_values"].shape
            self._chunks = [_values(chunk, shape) for chunk in self.dataset.data.column("input_values").chunks]
            self.starts = np.cumsum([0] + [len(chunk) for chunk in self._chunks])
        return self._chunks

    def __getstate__(self) -> dict:
        # a view pickles as all its data: DataLoader workers started by spawn or forkserver get the dataset (its
        # memory-mapped files by path) and make the views again
        return {**self.__dict__, "_chunks": None}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """A batch's rows at once (what the DataLoader asks for)."""
        rows = []
        for index in indices:
            if not 0 <= index < len(self):
                raise IndexError(f"row {index} of a split of {len(self)}")
            chunks = self.chunks
            chunk = int(np.searchsorted(self.starts, index, side="right")) - 1
            values = chunks[chunk][index - self.starts[chunk]].astype(np.float32)  # a copy: torch may write to it
            rows.append({"input_values": torch.from_numpy(values), "label": torch.as_tensor(self.labels[index])})
        return rows
