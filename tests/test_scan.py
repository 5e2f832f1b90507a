import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lib.scan import ScanError, fingerprint_folders, scan_dataset


def write_wav(path: Path, seconds: float = 0.1, sample_rate: int = 16000, channels: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.zeros((int(seconds * sample_rate), channels), np.float32)
    sf.write(str(path), data, sample_rate, subtype="PCM_16")
    return path


def layout(root: Path, spec: dict[str, dict[str, int]]) -> tuple[Path, Path]:
    for split, classes in spec.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for name, count in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for index in range(count):
                write_wav(root / split / name / f"{index:02d}.wav")
    return root / "train", root / "validation"


def test_label_map_is_sorted_train_folders_and_ignores_junk(tmp_path):
    train, validation = layout(
        tmp_path, {"train": {"b_cat": 2, "a_dog": 3, "Zebra": 1}, "validation": {"a_dog": 1, "b_cat": 1, "Zebra": 1}}
    )
    (train / "a_dog" / "notes.txt").write_text("x")
    (train / "a_dog" / ".hidden.wav").write_bytes(b"")
    (train / ".cache").mkdir()
    (train / "README.md").write_text("loose file")
    write_wav(train / "a_dog" / "nested" / "deep.WAV")

    manifest = scan_dataset(train, validation)

    assert manifest.label_names == ["Zebra", "a_dog", "b_cat"]  # code-point order, as sorted(os.listdir)
    assert manifest.label2id == {"Zebra": 0, "a_dog": 1, "b_cat": 2}
    assert [clip.label for clip in manifest.train] == [0, 1, 1, 1, 1, 2, 2]
    assert any(clip.path.endswith("nested/deep.WAV") for clip in manifest.train)
    assert manifest.ignored == {"hidden": 2, "non_audio": 1, "outside_class_folder": 1}
    assert manifest.train[0].sample_rate_hz == 16000 and manifest.train[0].num_samples == 1600


def test_validation_class_unknown_to_train_is_an_error(tmp_path):
    train, validation = layout(tmp_path, {"train": {"a": 1}, "validation": {"a": 1, "zz": 1}})
    with pytest.raises(ScanError, match=r"absent from train: \['zz'\]"):
        scan_dataset(train, validation)


def test_empty_class_and_empty_split_are_errors(tmp_path):
    train, validation = layout(tmp_path / "one", {"train": {"a": 1, "b": 0}, "validation": {"a": 1}})
    with pytest.raises(ScanError, match=r"without any \.wav clip: \['b'\]"):
        scan_dataset(train, validation)
    train, validation = layout(tmp_path / "two", {"train": {"a": 1}, "validation": {}})
    with pytest.raises(ScanError, match="validation folder .* holds no .wav clips"):
        scan_dataset(train, validation)
    with pytest.raises(ScanError, match="does not exist"):
        scan_dataset(tmp_path / "missing", validation)


def test_train_class_missing_from_validation_only_warns(tmp_path, caplog):
    train, validation = layout(tmp_path, {"train": {"a": 1, "b": 1}, "validation": {"a": 1}})
    manifest = scan_dataset(train, validation)
    assert manifest.label_names == ["a", "b"]
    assert "no validation clips: ['b']" in caplog.text


def test_bad_files_are_all_listed_or_skipped_and_counted(tmp_path):
    train, validation = layout(tmp_path, {"train": {"a": 2}, "validation": {"a": 1}})
    (train / "a" / "fake.wav").write_text("not audio")
    write_wav(train / "a" / "empty.wav", seconds=0)
    with pytest.raises(ScanError) as error:
        scan_dataset(train, validation)
    message = str(error.value)
    assert "2 bad audio file(s)" in message and "fake.wav" in message and "empty.wav" in message
    assert "--skip-bad-files" in message

    manifest = scan_dataset(train, validation, skip_bad_files=True)
    assert len(manifest.train) == 2
    assert sorted(Path(item.path).name for item in manifest.skipped) == ["empty.wav", "fake.wav"]


def test_quick_subsample_keeps_every_tenth_clip_of_each_class(tmp_path):
    train, validation = layout(tmp_path, {"train": {"a": 25, "b": 3}, "validation": {"a": 10, "b": 1}})
    manifest = scan_dataset(train, validation, quick_subsample=True)
    names = [(clip.label, Path(clip.path).name) for clip in manifest.train]
    assert names == [(0, "00.wav"), (0, "10.wav"), (0, "20.wav"), (1, "00.wav")]
    assert len(manifest.validation) == 2
    assert manifest.fingerprint != scan_dataset(train, validation).fingerprint


def test_fingerprint_tracks_content_changes_only(tmp_path):
    train, validation = layout(tmp_path, {"train": {"a": 2}, "validation": {"a": 1}})
    first = fingerprint_folders(train, validation)
    assert fingerprint_folders(train, validation) == first
    (train / "a" / "readme.txt").write_text("ignored files do not count")
    assert fingerprint_folders(train, validation) == first

    clip = train / "a" / "00.wav"
    stat = clip.stat()
    os.utime(clip, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    touched = fingerprint_folders(train, validation)
    assert touched != first
    write_wav(train / "a" / "02.wav")
    assert fingerprint_folders(train, validation) not in (first, touched)


def test_a_dangling_symlink_is_reported_as_a_bad_file(tmp_path):
    train, validation = layout(tmp_path, {"train": {"a": 1}, "validation": {"a": 1}})
    (train / "a" / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    fingerprint_folders(train, validation)  # no crash while hashing the listing
    with pytest.raises(ScanError, match="gone.wav: not a readable audio file"):
        scan_dataset(train, validation)


def test_length_mismatches_count_short_and_long_clips(tmp_path):
    train, validation = layout(tmp_path, {"train": {"a": 1}, "validation": {"a": 1}})  # 0.1 s clips
    write_wav(train / "a" / "long.wav", seconds=2.0)
    write_wav(validation / "a" / "exact.wav", seconds=1.0)
    assert scan_dataset(train, validation).length_mismatches(1.0) == (2, 1)
