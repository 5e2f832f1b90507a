"""Multi-label datasets: a clip in several class folders, or several labels in a csv cell or rows, is one clip with all
of its labels, in the scan, its folds and the feature cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lib.config import DataConfig
from lib.core.errors import ScanError
from lib.data.features import FeatureParams, build_feature_cache, load_split
from lib.data.layouts import dataset_folds, scan_data
from lib.data.scan import Manifest
from tests.layouts import CLASSES, make_multi_label_csv, make_multi_label_folders


def clip_labels(manifest: Manifest, split: str, key=lambda path: Path(path).stem) -> dict[str, list[str]]:
    return {key(clip.path): [manifest.label_names[index] for index in clip.labels] for clip in manifest.split(split)}


def folders(root: Path) -> DataConfig:
    return DataConfig(train_dir=root / "train", validation_dir=root / "validation")


def test_a_clip_copied_into_each_of_its_class_folders_is_one_clip_with_every_label(tmp_path):
    expected = make_multi_label_folders(tmp_path, per_pair=2)
    manifest = scan_data(folders(tmp_path), multi_label=True)
    assert manifest.multi_label and manifest.label_names == list(CLASSES)
    for split in ("train", "validation"):
        assert clip_labels(manifest, split) == expected[split]
    assert all(clip.label == clip.labels[0] for clip in manifest.train)


def test_the_same_folders_scanned_single_label_stay_a_clip_per_file_and_another_scan(tmp_path):
    expected = make_multi_label_folders(tmp_path, per_pair=2)
    single, multi = scan_data(folders(tmp_path)), scan_data(folders(tmp_path), multi_label=True)
    assert len(single.train) == sum(len(labels) for labels in expected["train"].values())
    assert all(not clip.labels for clip in single.train)
    assert single.fingerprint != multi.fingerprint  # so their feature caches differ


@pytest.mark.parametrize("style", ["cell", "row_per_label", "semicolon"])
def test_a_csv_gives_each_clip_its_labels_from_one_cell_or_a_row_per_label(tmp_path, style):
    expected = make_multi_label_csv(tmp_path, per_pair=2, separator=";" if style == "semicolon" else ",",
                                    row_per_label=style == "row_per_label")
    data = DataConfig(layout="csv", root=tmp_path, label_separator=";" if style == "semicolon" else ",")
    manifest = scan_data(data, multi_label=True)
    for split in ("train", "validation"):
        assert clip_labels(manifest, split, key=lambda path: Path(path).name) == expected[split]


def test_a_csv_repeating_a_clip_and_label_or_splitting_a_clip_is_refused_by_line(tmp_path):
    make_multi_label_csv(tmp_path, per_pair=1, row_per_label=True)
    manifest = tmp_path / "metadata.csv"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(ScanError, match=rf"line {len(lines) + 1}: .* is listed already .*has each label once"):
        scan_data(DataConfig(layout="csv", root=tmp_path), multi_label=True)
    moved = lines[1].rsplit(",", 2)[0] + ",tone_low,validation"  # its file, another label, another split
    manifest.write_text("\n".join([*lines, moved]) + "\n")
    with pytest.raises(ScanError, match=r"is in split validation here but in split train at .* line 2"):
        scan_data(DataConfig(layout="csv", root=tmp_path), multi_label=True)


def test_stratified_folds_keep_every_label_of_a_clip_in_one_fold(tmp_path):
    expected = make_multi_label_folders(tmp_path, per_pair=3)
    data = folders(tmp_path).model_copy(update={"folds": 3})
    folds = dataset_folds(data, warn=False, multi_label=True)
    where: dict[tuple[str, str], set[int]] = {}
    for number, labels in folds.by_fold.items():
        for paths in labels.values():
            for path in paths:
                where.setdefault((path.parts[-3], path.stem), set()).add(number)  # (split folder, clip)
    assert all(len(numbers) == 1 for numbers in where.values())
    assert len(where) == sum(len(clips) for clips in expected.values())
    manifest = scan_data(data.model_copy(update={"fold": 2}), multi_label=True)
    held_out = {(Path(clip.path).parts[-3], Path(clip.path).stem) for clip in manifest.validation}
    assert held_out == {clip for clip, numbers in where.items() if numbers == {2}}


def test_the_feature_cache_holds_each_clip_s_multi_hot_row(tmp_path):
    make_multi_label_folders(tmp_path / "data", per_pair=1)
    manifest = scan_data(folders(tmp_path / "data"), multi_label=True)
    ref, _ = build_feature_cache(manifest, FeatureParams(num_mel_bins=64, max_frames=64), tmp_path / "cache")
    assert ref.multi_label
    rows = load_split(ref, "train").with_format("numpy", columns=["label"])["label"][:]
    expected = np.zeros((len(manifest.train), len(CLASSES)), np.float32)
    for row, clip in enumerate(manifest.train):
        expected[row, clip.labels] = 1
    np.testing.assert_array_equal(rows, expected)


def test_a_multi_label_scan_is_cached_apart_from_a_single_label_one(tmp_path):
    from tasks.data import scan_cache_key
    from tests.helpers import plan_of

    make_multi_label_folders(tmp_path, per_pair=1)
    keys = {task: scan_cache_key(None, {"plan": plan_of(folders(tmp_path), task)})
            for task in ("single_label", "multi_label")}
    assert None not in keys.values() and keys["single_label"] != keys["multi_label"]


def test_different_recordings_of_one_name_in_two_class_folders_are_refused_naming_both(tmp_path):
    make_multi_label_folders(tmp_path, per_pair=1)
    first, second = tmp_path / "train/chirp/chirp-0.wav", tmp_path / "train/tone_low/chirp-0.wav"
    second.write_bytes((tmp_path / "train/tone_low/tone_low-0.wav").read_bytes())  # another recording, one name
    with pytest.raises(ScanError, match=rf"{first}.*{second}.*different recordings: rename one"):
        scan_data(folders(tmp_path), multi_label=True)
    second.unlink()
    second.symlink_to(first)  # a link is the same recording
    assert clip_labels(scan_data(folders(tmp_path), multi_label=True), "train")["chirp-0"] == ["chirp", "tone_low"]


def test_a_label_that_is_other_labels_joined_is_named_with_the_fix(tmp_path, caplog):
    make_multi_label_csv(tmp_path, per_pair=1, separator=";")
    scan_data(DataConfig(layout="csv", root=tmp_path), multi_label=True)  # read with the default ','
    assert "'chirp;noise_burst' looks like the labels 'chirp', 'noise_burst' joined by ';'" in caplog.text
    assert "set data.label_separator to ';'" in caplog.text
    caplog.clear()
    scan_data(DataConfig(layout="csv", root=tmp_path, label_separator=";"), multi_label=True)
    assert "looks like the labels" not in caplog.text


def test_data_folds_on_a_csv_without_a_split_or_fold_column_names_the_column_it_needs(tmp_path):
    make_multi_label_csv(tmp_path, per_pair=1)
    manifest = tmp_path / "metadata.csv"
    manifest.write_text(manifest.read_text().replace(",split\n", ",part\n", 1))
    with pytest.raises(ScanError, match="data.folds 3 cuts folds from a manifest's train and validation rows"):
        scan_data(DataConfig(layout="csv", root=tmp_path, folds=3, fold=1), multi_label=True)


def test_a_fold_cut_from_split_folders_is_cached_apart_from_the_split(tmp_path):
    from tasks.data import scan_cache_key
    from tests.helpers import plan_of

    make_multi_label_folders(tmp_path, per_pair=2)
    data = folders(tmp_path)
    keys = {(folds, fold): scan_cache_key(None, {"plan": plan_of(data.model_copy(update={"folds": folds,
                                                                                         "fold": fold}))})
            for folds, fold in ((None, None), (3, 1), (3, 2), (4, 2))}
    assert len(set(keys.values())) == 4


def test_a_rare_label_that_never_comes_first_is_spread_over_the_folds_and_counted_by_the_guard(tmp_path):
    make_multi_label_folders(tmp_path, per_pair=3)
    rare = sorted((tmp_path / "train" / "chirp").glob("chirp+noise_burst-*.wav"))[:3]
    for path in rare:  # three clips that are also 'zzz', a label sorted after their others
        (tmp_path / "train" / "zzz").mkdir(exist_ok=True)
        (tmp_path / "train" / "zzz" / path.name).write_bytes(path.read_bytes())
    folds = dataset_folds(folders(tmp_path).model_copy(update={"folds": 3}), warn=False, multi_label=True)
    assert sorted(len(labels.get("zzz", [])) for labels in folds.by_fold.values()) == [1, 1, 1]
    with pytest.raises(ScanError, match="the smallest class, 'zzz', has 3 clips, fewer than the folds"):
        dataset_folds(folders(tmp_path).model_copy(update={"folds": 4}), warn=False, multi_label=True)


def test_two_rare_labels_sharing_a_clip_each_reach_every_fold():
    from lib.data.folds import iterative_folds

    # x on clips 0-2, y on clips 0, 3 and 4: placing clip 0 by x alone used to leave a fold without y
    labels = [{"x", "y"}, {"x"}, {"x"}, {"y"}, {"y"}] + [{"a"}, {"b"}, {"a", "b"}] * 8
    fold_of = iterative_folds(labels, 3)
    for label in ("x", "y", "a", "b"):
        assert {fold for fold, clip in zip(fold_of, labels, strict=True) if label in clip} == {0, 1, 2}, label
    assert sorted(np.bincount(fold_of)) == [9, 10, 10]  # the folds' sizes differ by one at most


def test_a_cell_naming_a_label_twice_is_refused_by_its_line(tmp_path):
    make_multi_label_csv(tmp_path, per_pair=1)
    manifest = tmp_path / "metadata.csv"
    lines = manifest.read_text().splitlines()
    path = lines[1].split(",", 1)[0]
    manifest.write_text("\n".join([*lines[:1], f'{path},"chirp,chirp",train', *lines[2:]]) + "\n")
    with pytest.raises(ScanError, match=r"line 2: the 'label' column names 'chirp' twice; remove one"):
        scan_data(DataConfig(layout="csv", root=tmp_path), multi_label=True)
