"""The Trainer's view of a feature cache split gives the rows load_split gives, in every stored dtype and task."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from lib.config import DataConfig
from lib.data.feature_rows import FeatureRows
from lib.data.features import FeatureParams, build_feature_cache, load_split
from lib.data.layouts import scan_data
from tests.layouts import make_multi_label_folders


@pytest.mark.parametrize(("storage", "multi_label"), [("float32", False), ("float16", False), ("float32", True)])
def test_the_rows_are_load_split_s_rows(tmp_path, storage, multi_label):
    make_multi_label_folders(tmp_path / "data", per_pair=2)
    data = DataConfig(train_dir=tmp_path / "data/train", validation_dir=tmp_path / "data/validation")
    params = FeatureParams(num_mel_bins=64, max_frames=64, storage_dtype=storage)
    ref, _ = build_feature_cache(scan_data(data, multi_label), params, tmp_path / "cache")
    split = load_split(ref, "train")
    rows = FeatureRows(split)
    assert len(rows) == len(split)
    for index in (0, 7, len(split) - 1):
        ours, theirs = rows[index], split[index]
        assert ours["input_values"].dtype == torch.float32
        assert torch.equal(ours["input_values"], theirs["input_values"])
        assert torch.equal(ours["label"], theirs["label"])
    batch = rows.__getitems__([3, 1])
    assert torch.equal(batch[0]["input_values"], split[3]["input_values"])
    with pytest.raises(IndexError):
        rows[len(split)]
    again = pickle.loads(pickle.dumps(rows))  # as a spawned DataLoader worker gets it
    assert again._chunks is None and torch.equal(again[5]["input_values"], split[5]["input_values"])
    assert np.array_equal(again.labels, rows.labels)
