"""The data section of a fine-tuning run config: how the dataset is laid out (folders, or a dataset as downloaded),
its folds, and the clip length each dataset layout brings (with_dataset_features)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from lib.config.base import (
    OMITTED_AT_DEFAULT,
    CacheDir,
    FeatureWorkers,
    OptionalLocation,
    ScanFingerprint,
    Section,
    SkipBadFiles,
)

DatasetLayout = Literal["folders", "speech_commands", "esc50", "urbansound8k", "csv"]
# The layouts whose split (or folds) the dataset's own files give: data.root, not train_dir/validation_dir.
ROOT_LAYOUTS = ("speech_commands", "esc50", "urbansound8k", "csv")
# Clip length and frames of each dataset as AST/SSAST train on it (docs/datasets/); a longer clip of a dataset
# layout is cropped (none of the three has one).
DATASET_FEATURES: dict[str, dict[str, object]] = {
    "speech_commands": {"clip_seconds": 1.0, "max_frames": 128, "long_clips": "crop"},
    "esc50": {"clip_seconds": 5.0, "max_frames": 512, "long_clips": "crop"},
    "urbansound8k": {"clip_seconds": 4.0, "max_frames": 400, "long_clips": "crop"},
    "csv": {"long_clips": "crop"},
}


class DataConfig(Section):
    layout: Annotated[DatasetLayout, OMITTED_AT_DEFAULT] = Field(
        "folders",
        description=(
            "How the dataset is laid out: 'folders' is train_dir/CLASS/*.wav and validation_dir/CLASS/*.wav; "
            "'speech_commands', 'esc50' and 'urbansound8k' read those datasets as downloaded, their split or folds "
            "from their own list files and CSV (docs/datasets/); 'csv' reads a manifest of path, label and split "
            "or fold columns (default 'folders': the notebook's layout)."
        ),
    )
    root: OptionalLocation = Field(
        None,
        description=(
            "The dataset's folder as downloaded (layouts speech_commands, esc50, urbansound8k), or the manifest "
            "(layout csv: a .csv file, or a folder holding metadata.csv as Hugging Face's audiofolder has it; "
            "relative paths in it are read from its folder). Default null: layout folders uses train_dir."
        ),
    )
    train_dir: OptionalLocation = Field(
        None, description="Folder with one subfolder of .wav clips per class (layout folders; required there)."
    )
    validation_dir: OptionalLocation = Field(
        None, description="Folder with the same class subfolders as train_dir (layout folders; required there)."
    )
    test_dir: OptionalLocation = Field(
        None,
        description=(
            "Optional held-out folder with the same layout: every member and the ensemble are also scored on it. "
            "Only reported: validation alone chooses epochs, temperatures, members and weights (default null: no "
            "test set, as the notebook; speech_commands and csv layouts take their test split from the dataset)."
        ),
    )
    fold: Annotated[int | None, OMITTED_AT_DEFAULT] = Field(
        None, ge=1, le=1000,
        description=(
            "With a dataset of folds (esc50, urbansound8k, a csv with a fold column): the fold validated on, the "
            "others trained on (default null: the last fold)."
        ),
    )
    folds: Annotated[int | None, OMITTED_AT_DEFAULT] = Field(
        None, ge=2, le=100,
        description=(
            "For a dataset without folds of its own: cut its train and validation clips into this many folds, "
            "stratified by class with a fixed seed (scikit-learn's StratifiedKFold), for astft crossval or one fold "
            "(data.fold) (default null: the dataset's own split)."
        ),
    )
    path_column: Annotated[str, OMITTED_AT_DEFAULT] = Field("file_name", min_length=1, description=(
        "Layout csv: the column of clip paths (default 'file_name': Hugging Face audiofolder's metadata.csv)."
    ))
    label_column: Annotated[str, OMITTED_AT_DEFAULT] = Field("label", min_length=1, description=(
        "Layout csv: the column of class names (default 'label': ours)."
    ))
    label_separator: Annotated[str, OMITTED_AT_DEFAULT] = Field(",", min_length=1, max_length=8, description=(
        "Layout csv with model.task multi_label: what separates a cell's labels, as in \"dog,bark\" (default ',': "
        "FSD50K's and AudioSet's manifests); a clip may also have a row per label."
    ))
    split_column: Annotated[str, OMITTED_AT_DEFAULT] = Field("split", min_length=1, description=(
        "Layout csv: the column of train/validation/test per row, if the manifest has one, else its folds are used "
        "(default 'split': ours, the names of datasets' splits)."
    ))
    fold_column: Annotated[str, OMITTED_AT_DEFAULT] = Field("fold", min_length=1, description=(
        "Layout csv: the column of fold numbers per row, used when there is no split column or data.fold is set "
        "(default 'fold': ESC-50's and UrbanSound8K's name for it)."
    ))
    quick_subsample: bool = Field(
        False,
        description="Keep every 10th clip of each class for a dry run (default false: the notebook's b_just_test).",
    )
    noise_dir: OptionalLocation = Field(
        None, description=(
            "Folder of background-noise recordings of any length (searched at any depth) that "
            "training.augmentation.background_noise_probability mixes into training clips (default null: with "
            "layout speech_commands its _background_noise_/, else none)."
        ),
    )
    skip_bad_files: SkipBadFiles = False
    fingerprint: ScanFingerprint = "stat"
    cache_dir: CacheDir = Path(".astft-cache")
    feature_workers: FeatureWorkers = 0

    @model_validator(mode="after")
    def _layout_needs_its_folders(self) -> Self:
        if self.layout == "folders":
            missing = [name for name in ("train_dir", "validation_dir") if getattr(self, name) is None]
            if missing:
                raise ValueError(
                    f"layout 'folders' needs {' and '.join(missing)} (--train-dir, --validation-dir); or set "
                    f"data.layout to one of {', '.join(ROOT_LAYOUTS)} with data.root"
                )
            if self.root is not None:
                raise ValueError(
                    "data.root belongs to the dataset layouts; with layout 'folders' the split is train_dir and "
                    "validation_dir: set data.layout, or remove root"
                )
            if self.fold is not None and self.folds is None:
                raise ValueError(
                    "data.fold needs folds: layout 'folders' has none of its own; set data.folds to cut them, or "
                    "remove data.fold"
                )
            return self
        if self.root is None:
            raise ValueError(f"layout {self.layout!r} needs data.root (--root): the dataset's folder as downloaded")
        if self.layout == "speech_commands" and self.fold is not None and self.folds is None:
            raise ValueError(
                "data.fold needs folds: speech_commands has a split (its list files), not folds; set data.folds to "
                "cut them from its train and validation clips, or remove data.fold"
            )
        given = [name for name in ("train_dir", "validation_dir", "test_dir") if getattr(self, name) is not None]
        if given:
            raise ValueError(
                f"layout {self.layout!r} takes its split from the dataset's own files, so {', '.join(given)} "
                f"cannot be set with it: remove {'it' if len(given) == 1 else 'them'}, or use layout 'folders'"
            )
        return self


def with_dataset_features(raw: object) -> object:
    """A run config's raw input with its dataset layout's features (DATASET_FEATURES) wherever it sets none: ESC-50
    runs on 5 s clips and 512 frames unless told otherwise. Before validation, so the values read as given."""
    if not isinstance(raw, dict):
        return raw
    data = raw.get("data")
    layout = data.get("layout") if isinstance(data, dict) else getattr(data, "layout", None)
    defaults = DATASET_FEATURES.get(layout) if isinstance(layout, str) else None
    features = raw.get("features", {})
    if not defaults or not isinstance(features, dict):
        return raw
    return {**raw, "features": {**defaults, **features}}
