import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lib.core.errors import ScanError
from lib.data.scan import fingerprint_folders, scan_dataset
from tests.helpers import plan_of


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
    with pytest.raises(ScanError, match="validation folder .* holds no audio clips"):
        scan_dataset(train, validation)
    with pytest.raises(ScanError, match="does not exist"):
        scan_dataset(tmp_path / "missing", validation)


def test_train_class_missing_from_validation_only_warns(tmp_path, caplog):
    train, validation = layout(tmp_path, {"train": {"a": 1, "b": 1}, "validation": {"a": 1}})
    manifest = scan_dataset(train, validation)
    assert manifest.label_names == ["a", "b"]
    assert "no validation clips: ['b']" in caplog.text


def test_bad_files_are_all_listed_or_skipped_and_counted(tmp_path):
    train, validation = layout(tmp_path, {"train": {"a": 2, "b": 1}, "validation": {"a": 1}})
    (train / "a" / "fake.wav").write_text("not audio")
    write_wav(train / "a" / "empty.wav", seconds=0)
    with pytest.raises(ScanError) as error:
        scan_dataset(train, validation)
    message = str(error.value)
    assert "2 bad audio file(s)" in message and "fake.wav" in message and "empty.wav" in message
    assert "--skip-bad-files" in message

    manifest = scan_dataset(train, validation, skip_bad_files=True)
    assert len(manifest.train) == 3
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
    train, validation = layout(tmp_path, {"train": {"a": 1, "b": 1}, "validation": {"a": 1}})
    (train / "a" / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    fingerprint_folders(train, validation)  # no crash while hashing the listing
    with pytest.raises(ScanError, match="gone.wav: not a readable audio file"):
        scan_dataset(train, validation)


def test_length_mismatches_count_short_and_long_clips(tmp_path):
    train, validation = layout(tmp_path, {"train": {"a": 1, "b": 1}, "validation": {"a": 1}})  # 0.1 s clips
    write_wav(train / "a" / "long.wav", seconds=2.0)
    write_wav(validation / "a" / "exact.wav", seconds=1.0)
    assert scan_dataset(train, validation).length_mismatches(1.0) == (3, 1)


def test_a_truncated_wav_is_a_bad_file_while_a_short_clip_is_kept(tmp_path):
    train, validation = layout(tmp_path, {"train": {"a": 1, "b": 1}, "validation": {"a": 1}})  # 0.1 s clips
    cut = write_wav(train / "a" / "cut.wav", seconds=1.0)  # 44-byte header + 32000 bytes of samples
    cut.write_bytes(cut.read_bytes()[:16022])  # a copy interrupted half-way
    streamed = write_wav(train / "b" / "streamed.wav", seconds=0.5)
    raw = bytearray(streamed.read_bytes())
    raw[40:44] = b"\xff\xff\xff\xff"  # a writer that could not seek back marks the size unknown
    streamed.write_bytes(bytes(raw))
    tagged = write_wav(train / "b" / "tagged.wav", seconds=0.5)
    with sf.SoundFile(str(tagged), "r+") as handle:
        handle.title = "a LIST chunk after the samples"

    with pytest.raises(ScanError) as error:
        scan_dataset(train, validation)
    message = str(error.value)
    assert "1 bad audio file(s)" in message
    assert "cut.wav: truncated: the header promises 32000 bytes of samples but the file holds 15978" in message

    manifest = scan_dataset(train, validation, skip_bad_files=True)
    assert [Path(item.path).name for item in manifest.skipped] == ["cut.wav"]
    assert sorted(Path(clip.path).name for clip in manifest.train) == ["00.wav", "00.wav", "streamed.wav", "tagged.wav"]


def test_length_report_names_the_shortest_padded_clips(tmp_path):
    train, validation = layout(tmp_path, {"train": {"a": 1, "b": 1}, "validation": {"a": 1}})  # 0.1 s clips
    write_wav(train / "a" / "tiny.wav", seconds=0.05)
    write_wav(train / "b" / "long.wav", seconds=2.0)
    write_wav(validation / "a" / "exact.wav", seconds=1.0)
    report = scan_dataset(train, validation).length_report(1.0, shortest=2)
    assert report == (
        f"4 clips shorter than 1.00 s were zero-padded (shortest: {train / 'a' / 'tiny.wav'} 0.050 s, "
        f"{train / 'a' / '00.wav'} 0.100 s); 1 longer ones trimmed"
    )
    assert scan_dataset(train, validation).length_report(0.05) == "5 clips longer than 0.05 s were trimmed"


def test_a_single_class_is_refused(tmp_path):
    train, validation = layout(tmp_path, {"train": {"only": 2}, "validation": {"only": 1}})
    with pytest.raises(ScanError, match=r"train folder .* has only one class \('only'\).*at least two"):
        scan_dataset(train, validation)


def test_the_same_folder_for_train_and_validation_is_refused(tmp_path, monkeypatch):
    train, _ = layout(tmp_path, {"train": {"a": 1, "b": 1}})
    (tmp_path / "alias").symlink_to(train)
    monkeypatch.chdir(tmp_path)
    for validation in (train, tmp_path / "alias", Path("train"), Path("alias/../train/.")):
        with pytest.raises(ScanError, match=r"--train-dir .* and --validation-dir .* are the same folder"):
            scan_dataset(train, validation)


def test_symlinked_folders_inside_a_class_are_followed_once(tmp_path):
    train, validation = layout(tmp_path, {"train": {"a": 1, "b": 1}, "validation": {"a": 1}})
    write_wav(tmp_path / "extra" / "x.wav")
    write_wav(tmp_path / "extra" / "deeper" / "y.wav")
    (tmp_path / "extra" / "again").symlink_to(tmp_path / "extra")  # a loop inside the linked folder
    (train / "a" / "more").symlink_to(tmp_path / "extra")
    (train / "a" / "loop").symlink_to(train / "a")  # a loop back to the class folder

    manifest = scan_dataset(train, validation)
    assert sorted(Path(clip.path).name for clip in manifest.train if clip.label == 0) == ["00.wav", "x.wav", "y.wav"]
    assert manifest.ignored == {"folder_already_scanned": 2}
    assert fingerprint_folders(train, validation) == fingerprint_folders(train, validation)


def test_a_folder_link_into_another_class_or_split_is_not_followed(tmp_path, caplog):
    train, validation = layout(tmp_path, {"train": {"a": 2, "b": 3}, "validation": {"a": 1, "b": 1}})
    (train / "a" / "up").symlink_to(train)  # would pull every class in under label a
    (train / "a" / "other").symlink_to(train / "b")
    (train / "a" / "held_out").symlink_to(validation / "b")  # would train on validation clips

    fingerprint_folders(train, validation)  # the cache key's listing, before the scan: quiet
    manifest = scan_dataset(train, validation)
    assert [Path(clip.path).parent.name for clip in manifest.train] == ["a", "a", "b", "b", "b"]
    assert manifest.ignored == {"folder_link_into_the_dataset": 3}
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 3  # once each, by the scan
    assert warnings[0] == (
        f"not following {train / 'a' / 'held_out'}: it links to {validation / 'b'}, elsewhere in the dataset (another "
        "class or split), whose clips would get this class's label; remove the link"
    )


def test_a_fifo_named_wav_is_ignored_and_never_opened(tmp_path):
    train, validation = layout(tmp_path, {"train": {"a": 1, "b": 1}, "validation": {"a": 1}})
    fifo = train / "a" / "x.wav"
    os.mkfifo(fifo)
    result = {}

    def scan():
        result["fingerprint"] = fingerprint_folders(train, validation, "content")
        result["manifest"] = scan_dataset(train, validation, fingerprint="content")

    thread = threading.Thread(target=scan, daemon=True)
    thread.start()
    thread.join(timeout=30)
    if thread.is_alive():  # unblock the reader so the test process can exit, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("the scan opened the FIFO and blocked")
    assert len(result["manifest"].train) == 2
    assert result["manifest"].ignored == {"not_a_regular_file": 1}


@pytest.mark.skipif(sys.platform != "linux", reason="other systems refuse file names that are not valid UTF-8")
def test_a_file_or_class_name_that_is_not_utf8_is_named_escaped(tmp_path):
    from lib.data.features import FeatureParams, build_feature_cache

    train, validation = layout(tmp_path, {"train": {"a": 1, "b": 1}, "validation": {"a": 1}})
    clip_bytes = (train / "a" / "00.wav").read_bytes()
    with open(os.path.join(os.fsencode(train / "a"), b"\xff.wav"), "wb") as handle:
        handle.write(clip_bytes)
    fingerprint_folders(train, validation)  # hashing the listing must not crash either

    with pytest.raises(ScanError) as error:
        scan_dataset(train, validation)
    message = str(error.value)
    assert f"{train / 'a'}/\\xff.wav: the name is not valid UTF-8" in message and "rename" in message
    manifest = scan_dataset(train, validation, skip_bad_files=True)
    assert [item.path for item in manifest.skipped] == [f"{train / 'a'}/\\xff.wav"]
    assert len(manifest.train) == 2
    manifest.model_dump_json()  # the manifest is persisted by Prefect as JSON
    ref, _ = build_feature_cache(manifest, FeatureParams(num_mel_bins=64, max_frames=64), tmp_path / "cache")
    assert list(ref.skipped) == [f"{train / 'a'}/\\xff.wav"] and ref.num_clips == {"train": 2, "validation": 1}
    ref.model_dump_json()  # member.json lists the skipped files

    os.mkdir(os.path.join(os.fsencode(train), b"caf\xe9"))
    with open(os.path.join(os.fsencode(train), b"caf\xe9", b"0.wav"), "wb") as handle:
        handle.write(clip_bytes)
    with pytest.raises(ScanError, match=r"class folder .*/caf\\xe9 .* not valid UTF-8.*rename"):
        scan_dataset(train, validation, skip_bad_files=True)


def test_a_sample_rate_below_1_khz_is_a_bad_file(tmp_path):
    train, validation = layout(tmp_path, {"train": {"a": 1, "b": 1}, "validation": {"a": 1}})
    write_wav(train / "a" / "slow.wav", seconds=16000, sample_rate=1)  # 32 KB that claims 4.4 hours
    with pytest.raises(ScanError, match=r"slow.wav: sample rate 1 Hz is below 1000 Hz"):
        scan_dataset(train, validation)


def test_content_fingerprint_sees_a_same_size_same_mtime_edit(tmp_path):
    from lib.config import DataConfig
    from tasks.data import scan_cache_key

    train, validation = layout(tmp_path, {"train": {"a": 1, "b": 1}, "validation": {"a": 1}})
    data = {mode: DataConfig(train_dir=train, validation_dir=validation, fingerprint=mode)
            for mode in ("stat", "content")}
    before = {mode: fingerprint_folders(train, validation, mode) for mode in data}
    scanned = {mode: scan_dataset(train, validation, fingerprint=mode).fingerprint for mode in data}
    keys = {mode: scan_cache_key(None, {"plan": plan_of(config)}) for mode, config in data.items()}
    assert before["stat"] != before["content"] and scanned["stat"] != scanned["content"]

    clip = train / "a" / "00.wav"
    stat = clip.stat()
    edited = bytearray(clip.read_bytes())
    edited[-1] ^= 0x55
    clip.write_bytes(bytes(edited))
    os.utime(clip, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert clip.stat().st_size == stat.st_size and clip.stat().st_mtime_ns == stat.st_mtime_ns

    assert fingerprint_folders(train, validation, "stat") == before["stat"]
    assert scan_dataset(train, validation, fingerprint="stat").fingerprint == scanned["stat"]
    assert scan_cache_key(None, {"plan": plan_of(data["stat"])}) == keys["stat"]
    assert fingerprint_folders(train, validation, "content") != before["content"]
    assert scan_dataset(train, validation, fingerprint="content").fingerprint != scanned["content"]
    assert scan_cache_key(None, {"plan": plan_of(data["content"])}) != keys["content"]


def test_fingerprint_flag_sets_the_data_section():
    from flows.cli import build_parser, overrides_from_args

    for command in ("finetune", "ensemble"):
        args = build_parser().parse_args([command, "--fingerprint", "content"])
        assert overrides_from_args(args) == {"data": {"fingerprint": "content"}}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["finetune", "--fingerprint", "mtime"])


# --- the optional test split ---------------------------------------------------------------------


def test_test_split_is_scanned_with_the_same_rules(tmp_path):
    train, validation = layout(tmp_path, {"train": {"a": 2, "b": 2}, "validation": {"a": 1, "b": 1},
                                          "test": {"a": 2, "b": 1}})
    manifest = scan_dataset(train, validation, test_dir=tmp_path / "test")
    assert manifest.splits == ("train", "validation", "test")
    assert [clip.label for clip in manifest.test] == [0, 0, 1]
    assert scan_dataset(train, validation).splits == ("train", "validation")  # optional
    write_wav(tmp_path / "test" / "zz" / "00.wav")
    with pytest.raises(ScanError, match=r"test folder .*test has classes absent from train: \['zz'\]"):
        scan_dataset(train, validation, test_dir=tmp_path / "test")
    with pytest.raises(ScanError, match=r"--validation-dir .* and --test-dir .* are the same folder"):
        scan_dataset(train, validation, test_dir=validation)
    with pytest.raises(ScanError, match=r"test folder .*missing does not exist .*pass --test-dir"):
        scan_dataset(train, validation, test_dir=tmp_path / "missing")


def test_a_test_folder_changes_the_fingerprint_and_its_absence_keeps_the_old_one(tmp_path):
    import hashlib

    train, validation = layout(tmp_path, {"train": {"a": 1, "b": 1}, "validation": {"a": 1}, "test": {"a": 1}})
    # Without a test folder the fingerprint is what it was before test folders existed (feature caches stay valid).
    old = hashlib.sha256()
    for split, root in (("train", train), ("validation", validation)):
        for path in sorted(root.rglob("*.wav")):
            stat = path.stat()
            old.update(f"{split}\0{path.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        old.update(f"{split}-classes\0{','.join(sorted(p.name for p in root.iterdir()))}\n".encode())
    assert fingerprint_folders(train, validation) == old.hexdigest()
    with_test = fingerprint_folders(train, validation, test_dir=tmp_path / "test")
    assert with_test != old.hexdigest()
    manifest = scan_dataset(train, validation, test_dir=tmp_path / "test")
    write_wav(tmp_path / "test" / "a" / "00.wav", seconds=0.2)  # a test clip changes
    assert fingerprint_folders(train, validation, test_dir=tmp_path / "test") != with_test
    assert scan_dataset(train, validation, test_dir=tmp_path / "test").fingerprint != manifest.fingerprint


def test_the_fine_tune_scan_cache_key_never_raises_so_the_scan_task_reports_its_own_error(tmp_path):
    from lib.config import DataConfig
    from tasks.data import scan_cache_key

    train, validation = layout(tmp_path, {"train": {"a": 1, "b": 1}, "validation": {"a": 1, "b": 1}})
    key = scan_cache_key(None, {"plan": plan_of(DataConfig(train_dir=train, validation_dir=validation))})
    assert key.startswith("astft-scan-")
    # no key (the task runs uncached and raises the scan's one-line error) where Prefect would log a traceback
    missing = DataConfig(train_dir=train, validation_dir=tmp_path / "missing")
    assert scan_cache_key(None, {"plan": plan_of(missing)}) is None
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    looping = plan_of(DataConfig(train_dir=train, validation_dir=tmp_path / "loop"))
    assert scan_cache_key(None, {"plan": looping}) is None


def test_a_train_class_folder_linked_to_a_validation_class_is_refused_naming_both_paths(tmp_path):
    train, validation = layout(tmp_path, {"train": {"a": 2}, "validation": {"a": 2, "b": 2}})
    (train / "b").symlink_to(validation / "b")
    with pytest.raises(ScanError, match=r"train/b/00\.wav: the same file as validation clip .*validation/b/00\.wav"):
        scan_dataset(train, validation)


def test_a_train_file_linked_to_a_validation_clip_is_refused_or_skipped_naming_both(tmp_path, caplog):
    train, validation = layout(tmp_path, {"train": {"a": 2, "b": 2}, "validation": {"a": 2, "b": 2}})
    (train / "a" / "leak.wav").symlink_to(validation / "a" / "01.wav")
    with pytest.raises(ScanError, match=r"(?s)1 bad audio file.*train/a/leak\.wav: the same file as validation clip"):
        scan_dataset(train, validation)
    manifest = scan_dataset(train, validation, skip_bad_files=True)
    assert sorted(Path(clip.path).name for clip in manifest.train) == ["00.wav", "00.wav", "01.wav", "01.wav"]
    assert [item.path for item in manifest.skipped] == [str(train / "a" / "leak.wav")]
    assert "validation/a/01.wav" in manifest.skipped[0].reason


def test_two_splits_linking_one_file_elsewhere_are_refused(tmp_path):
    train, validation = layout(tmp_path, {"train": {"a": 2, "b": 2}, "validation": {"a": 2, "b": 2}})
    outside = write_wav(tmp_path / "elsewhere" / "x.wav")
    (train / "a" / "x.wav").symlink_to(outside)
    (validation / "a" / "x.wav").symlink_to(outside)
    with pytest.raises(ScanError, match=r"validation/a/x\.wav: the same file as train clip .*train/a/x\.wav"):
        scan_dataset(train, validation)


def test_links_within_one_split_are_not_leaks(tmp_path):
    train, validation = layout(tmp_path, {"train": {"a": 2, "b": 2}, "validation": {"a": 1, "b": 1}})
    (train / "b" / "again.wav").symlink_to(train / "a" / "00.wav")
    assert len(scan_dataset(train, validation).train) == 5


def test_copies_across_splits_are_named_in_a_warning_when_content_is_hashed(tmp_path, caplog):
    train, validation = layout(tmp_path, {"train": {"a": 1, "b": 1}, "validation": {"a": 1, "b": 1}})
    write_wav(train / "a" / "00.wav", seconds=0.2)  # every other clip is the same 0.1 s of silence
    caplog.set_level("WARNING", logger="lib.data.scan")
    scan_dataset(train, validation, fingerprint="stat")
    assert "same bytes" not in caplog.text  # stat mode reads no content
    scan_dataset(train, validation, fingerprint="content")
    assert "2 clip(s) have the same bytes as a clip in another split" in caplog.text
    assert "train/b/00.wav = " in caplog.text and "validation/a/00.wav" in caplog.text


def test_a_hard_link_from_train_to_a_validation_clip_is_the_same_file(tmp_path):
    train, validation = layout(tmp_path, {"train": {"a": 2, "b": 2}, "validation": {"a": 2, "b": 2}})
    os.link(validation / "a" / "01.wav", train / "a" / "hard.wav")
    # neither name is the original: the later split's is the one named (validation, beside the train path)
    with pytest.raises(ScanError, match=r"validation/a/01\.wav: the same file as train clip .*train/a/hard\.wav"):
        scan_dataset(train, validation)


def test_a_class_folder_of_links_skipped_whole_says_so_not_that_it_is_empty(tmp_path):
    train, validation = layout(tmp_path, {"train": {"a": 2}, "validation": {"a": 2, "b": 2}})
    (train / "b").symlink_to(validation / "b")
    with pytest.raises(ScanError, match=r"train class folder\(s\) \['b'\]: every clip in them is a file of another "
                                        r"split \(links, skipped by --skip-bad-files: .*train/b/00\.wav"):
        scan_dataset(train, validation, skip_bad_files=True)
