"""Each dataset layout scans to exactly the split its dataset documents; a bad manifest row is one line naming it."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lib.config import DataConfig
from lib.core.errors import ScanError
from lib.data.layouts import fingerprint_data, scan_data
from tests.layouts import (
    make_csv_dataset,
    make_esc50,
    make_speech_commands,
    make_urbansound8k,
    scanned,
    write_csv,
)


def data(layout: str, root: Path, **values) -> DataConfig:
    return DataConfig(layout=layout, root=root, **values)


def test_speech_commands_splits_by_its_list_files_and_keeps_the_noise_folder_out_of_the_classes(tmp_path):
    expected = make_speech_commands(tmp_path)
    manifest = scan_data(data("speech_commands", tmp_path))
    assert scanned(manifest, tmp_path) == expected
    assert manifest.label_names == ["chirp", "noise_burst", "tone_high", "tone_low"]
    assert manifest.noise_dir == str(tmp_path / "_background_noise_")
    assert "_background_noise_/ is background noise, not a class" in manifest.note


def test_esc50_validates_on_the_last_fold_unless_told_and_labels_by_category(tmp_path):
    expected = make_esc50(tmp_path, seconds=0.5)
    assert scanned(scan_data(data("esc50", tmp_path)), tmp_path) == expected
    fold_2 = scanned(scan_data(data("esc50", tmp_path, fold=2)), tmp_path)
    assert sorted(fold_2["validation"]) == sorted(path for path in {**expected["train"], **expected["validation"]}
                                                  if path.startswith("audio/2-"))
    assert not set(fold_2["validation"]) & set(fold_2["train"])
    assert len(fold_2["train"]) + len(fold_2["validation"]) == 20


def test_urbansound8k_reads_fold_folders_of_mixed_rates_and_depths_and_validates_on_fold_10(tmp_path):
    expected = make_urbansound8k(tmp_path)
    manifest = scan_data(data("urbansound8k", tmp_path))
    assert scanned(manifest, tmp_path) == expected
    assert {clip.sample_rate_hz for clip in manifest.clips} == {8000, 22050, 44100, 48000, 96000}
    assert "validating on fold 10 (the last fold; data.fold picks another), training on folds 1-9" in manifest.note


def test_a_csv_manifest_reads_wav_flac_ogg_and_mp3_relative_to_its_folder(tmp_path):
    expected = make_csv_dataset(tmp_path / "ds")
    manifest = scan_data(data("csv", tmp_path / "ds"))  # a folder: its metadata.csv
    assert scanned(manifest, tmp_path / "ds") == expected
    assert {Path(clip.path).suffix for clip in manifest.clips} == {".wav", ".flac", ".ogg", ".mp3"}
    assert scanned(scan_data(data("csv", tmp_path / "ds" / "metadata.csv")), tmp_path / "ds") == expected


def test_a_csv_of_folds_with_renamed_columns_validates_on_the_chosen_fold(tmp_path):
    make_csv_dataset(tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "metadata.csv")))
    write_csv(tmp_path / "folds.csv", ("audio", "class", "k"),
              [[row["file_name"], row["label"], 1 + index % 3] for index, row in enumerate(rows)])
    manifest = scan_data(data("csv", tmp_path / "folds.csv", path_column="audio", label_column="class",
                              fold_column="k", fold=2))
    found = scanned(manifest, tmp_path)
    assert sorted(found["validation"]) == sorted(row["file_name"] for i, row in enumerate(rows) if i % 3 == 1)
    assert len(found["train"]) == len(rows) - len(found["validation"])


def test_relabelling_a_clip_in_the_manifest_changes_the_fingerprint(tmp_path):
    make_esc50(tmp_path, seconds=0.2)
    before = fingerprint_data(data("esc50", tmp_path))
    manifest = tmp_path / "meta" / "esc50.csv"
    lines = manifest.read_text().splitlines()
    lines[1] = lines[1].replace(",0,chirp,", ",1,noise_burst,")  # 1-101000-A-0.wav, now in the other class
    manifest.write_text("\n".join(lines) + "\n")
    assert fingerprint_data(data("esc50", tmp_path)) != before


def edited(path: Path, line: int, old: str, new: str) -> Path:
    lines = path.read_text().splitlines()
    assert old in lines[line - 1], lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(("line", "old", "new", "message"), [
    (3, ",1,1,noise_burst,", ",7,1,noise_burst,", r"esc50.csv line 3: fold 7 is outside the dataset's folds 1-5; fix"),
    (4, ",2,tone_high,", ",2,,", r"esc50.csv line 4: the 'category' column is empty; fill it in, or remove the row"),
    (5, "1-101030-A-3.wav", "1-101000-A-0.wav",
     r"esc50.csv line 5: .*audio/1-101000-A-0.wav is listed already \(.*esc50.csv line 2\); a clip belongs to one"),
    (2, ",1,0,chirp,", ",1,0,tone_low,",
     r"esc50.csv line 5: class tone_low has target '3' here but '0' at .*esc50.csv line 2; fix the row"),
])
def test_a_bad_esc50_row_is_one_line_naming_it(tmp_path, line, old, new, message):
    make_esc50(tmp_path, seconds=0.2)
    edited(tmp_path / "meta" / "esc50.csv", line, old, new)
    with pytest.raises(ScanError, match=message) as refused:
        scan_data(data("esc50", tmp_path))
    assert "\n" not in str(refused.value)


def test_a_row_naming_a_missing_file_is_a_bad_file_named_by_its_row_and_skippable(tmp_path, caplog):
    make_urbansound8k(tmp_path)
    (tmp_path / "audio" / "fold3" / "10300-0-0-0.wav").unlink()
    with pytest.raises(ScanError, match=r"10300-0-0-0.wav: listed in .*UrbanSound8K.csv line 10 but not there"):
        scan_data(data("urbansound8k", tmp_path))
    with caplog.at_level(logging.WARNING):
        manifest = scan_data(data("urbansound8k", tmp_path, skip_bad_files=True))
    assert len(manifest.train) == 35 and [item.path for item in manifest.skipped] == [
        str(tmp_path / "audio" / "fold3" / "10300-0-0-0.wav")]


def test_speech_commands_list_problems_name_the_list_file_and_line(tmp_path):
    make_speech_commands(tmp_path)
    listed = tmp_path / "testing_list.txt"
    first = (tmp_path / "validation_list.txt").read_text().splitlines()[0]
    listed.write_text(listed.read_text() + first + "\n")
    with pytest.raises(ScanError, match=rf"testing_list.txt line 9: {first} is listed already \(validation_list"):
        scan_data(data("speech_commands", tmp_path))
    listed.write_text("chirp/ffffffff_nohash_0.wav\n")
    with pytest.raises(ScanError, match=r"ffffffff_nohash_0.wav: listed in .*testing_list.txt line 1 but not there"):
        scan_data(data("speech_commands", tmp_path))
    (tmp_path / "validation_list.txt").unlink()
    with pytest.raises(ScanError, match="validation_list.txt is missing: a speech_commands root holds"):
        scan_data(data("speech_commands", tmp_path))


def test_csv_problems_name_the_row_or_the_columns(tmp_path):
    make_csv_dataset(tmp_path)
    manifest = tmp_path / "metadata.csv"
    edited(manifest, 2, ",train", ",val")
    with pytest.raises(ScanError, match=r"metadata.csv line 2: split 'val' is not one of train, validation, test"):
        scan_data(data("csv", tmp_path))
    write_csv(manifest, ("file_name", "label"), [["clips/chirp-0.wav", "chirp"]])
    with pytest.raises(ScanError, match=r"has no 'split' column .* and no 'fold' column .* its columns are"):
        scan_data(data("csv", tmp_path))
    write_csv(manifest, ("file_name", "label", "fold"), [["clips/chirp-0.wav", "chirp", "x"]])
    with pytest.raises(ScanError, match=r"metadata.csv line 2: fold 'x' is not a fold number"):
        scan_data(data("csv", tmp_path))
    write_csv(manifest, ("file_name", "label", "fold"), [["clips/chirp-0.wav", "chirp", 1], ["a.txt", "x", 2]])
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ScanError, match=r"metadata.csv line 3: .*a.txt is not a .wav, .flac, .ogg or .mp3 file"):
        scan_data(data("csv", tmp_path))


def test_a_fold_the_dataset_lacks_is_refused_with_its_folds(tmp_path):
    make_esc50(tmp_path, seconds=0.2)
    with pytest.raises(ScanError, match=r"data.fold \(--fold\) 6: .*esc50.csv's fold column has folds 1-5; choose"):
        scan_data(data("esc50", tmp_path, fold=6))


def test_layout_settings_are_checked_together():
    with pytest.raises(ValueError, match="layout 'esc50' needs data.root"):
        DataConfig(layout="esc50")
    with pytest.raises(ValueError, match=r"takes its split from the dataset's own files, so train_dir cannot"):
        DataConfig(layout="esc50", root="r", train_dir="t")
    with pytest.raises(ValueError, match="data.fold needs folds: layout .folders. has none of its own"):
        DataConfig(train_dir="t", validation_dir="v", fold=2)


def test_longer_clips_are_cropped_at_a_fixed_random_window_in_training_and_the_centre_otherwise(tmp_path):
    from lib.data.audio import load_clip

    ramp = np.linspace(-0.5, 0.5, 48000, dtype=np.float32)  # 3 s: each sample says where it was
    sf.write(str(tmp_path / "long.wav"), ramp, 16000, subtype="FLOAT")
    centre = load_clip(tmp_path / "long.wav", 16000, 1.0, window="centre")
    assert np.array_equal(centre, ramp[16000:32000])
    first = load_clip(tmp_path / "long.wav", 16000, 1.0, window="first")
    assert np.array_equal(first, ramp[:16000])
    random = load_clip(tmp_path / "long.wav", 16000, 1.0, window="random")
    start = int(np.flatnonzero(ramp == random[0])[0])
    assert 0 < start <= 32000 and np.array_equal(random, ramp[start:start + 16000])
    assert np.array_equal(random, load_clip(tmp_path / "long.wav", 16000, 1.0, window="random"))


def test_data_folds_cuts_a_folders_dataset_into_stratified_folds_that_partition_its_clips(tmp_path):
    from lib.data.layouts import dataset_folds
    from lib.example import make_example_dataset

    train_dir, validation_dir = make_example_dataset(tmp_path, train_per_class=7, validation_per_class=2)
    folders = DataConfig(train_dir=train_dir, validation_dir=validation_dir, folds=3)
    folds = dataset_folds(folders)
    every = [path for labels in folds.by_fold.values() for paths in labels.values() for path in paths]
    assert len(every) == len(set(every)) == 36  # 4 classes x 9 clips, each in exactly one fold
    for labels in folds.by_fold.values():
        assert sorted(len(paths) for paths in labels.values()) == [3, 3, 3, 3]  # stratified: 9 clips a class / 3
    validation = scan_data(DataConfig(train_dir=train_dir, validation_dir=validation_dir, folds=3, fold=2)).validation
    assert sorted(clip.path for clip in validation) == sorted(
        str(path) for paths in folds.by_fold[2].values() for path in paths)
    assert dataset_folds(folders).by_fold == folds.by_fold  # a fixed seed: the same folds every time
    with pytest.raises(ScanError, match="data.folds 3: the esc50 dataset has folds of its own"):
        make_esc50(tmp_path / "esc", seconds=0.2)
        dataset_folds(data("esc50", tmp_path / "esc", folds=3))


def test_a_hand_written_header_with_spaces_after_the_commas_is_read(tmp_path):
    expected = make_csv_dataset(tmp_path)
    manifest = tmp_path / "metadata.csv"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(["file_name, label, split", *lines[1:]]) + "\n")
    assert scanned(scan_data(data("csv", tmp_path)), tmp_path) == expected


def test_a_fold_asked_of_a_csv_without_a_fold_column_says_so(tmp_path):
    make_csv_dataset(tmp_path)
    with pytest.raises(ScanError, match=r"data.fold \(--fold\) 2 is set but .*metadata.csv has no 'fold' column"):
        scan_data(data("csv", tmp_path, fold=2))


def test_a_file_that_is_not_the_audio_its_name_says_is_named_as_such(tmp_path):
    from lib.data.audio import probe_clip

    (tmp_path / "page.mp3").write_text("<html>not found</html>")
    _, reason = probe_clip(tmp_path / "page.mp3")
    assert reason.startswith("the file is there but is not MP3 data libsndfile can decode")


def test_every_fold_of_a_cross_validation_is_in_its_fingerprint(tmp_path):
    from lib.data.layouts import dataset_folds
    from lib.data.scan import fingerprint_found

    make_esc50(tmp_path / "small", per_fold=1, seconds=0.2)
    make_esc50(tmp_path / "large", per_fold=2, seconds=0.2)
    small, large = (fingerprint_found(dataset_folds(data("esc50", tmp_path / name)).all_folds())
                    for name in ("small", "large"))
    assert small != large
    edited(tmp_path / "small" / "meta" / "esc50.csv", 2, ",0,chirp,", ",1,noise_burst,")  # one clip relabelled
    assert fingerprint_found(dataset_folds(data("esc50", tmp_path / "small")).all_folds()) != small


def test_data_folds_cuts_a_csv_of_splits_into_folds_even_with_a_fold_chosen(tmp_path):
    from lib.data.layouts import dataset_folds

    expected = make_csv_dataset(tmp_path)
    folds = dataset_folds(data("csv", tmp_path, folds=2, fold=1))
    assert folds.known == [1, 2] and folds.test  # the test rows stay out of every fold
    pooled = sorted(str(path) for labels in folds.by_fold.values() for paths in labels.values() for path in paths)
    assert pooled == sorted(str(tmp_path / path) for path in {**expected["train"], **expected["validation"]})


def test_a_fold_outside_a_datasets_fixed_folds_is_refused_before_reading_it(tmp_path):
    from lib.data.layouts import default_fold

    with pytest.raises(ScanError, match=r"data.fold \(--fold\) 11: urbansound8k has folds 1-10; choose one of them"):
        default_fold(data("urbansound8k", tmp_path / "not-downloaded-yet", fold=11))
    assert default_fold(data("urbansound8k", tmp_path / "not-downloaded-yet")) == 10
