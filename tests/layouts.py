"""Small datasets laid out exactly as Speech Commands, ESC-50, UrbanSound8K and a CSV manifest are downloaded (file
names, list files, CSV columns, folds, mixed rates, depths and lengths), each with the split it documents.

Each builder returns `expected`: split -> {path relative to the root: label}, decided here from the dataset's
own rules, so a test compares the scan with it clip by clip. Clips are the example's synthetic classes.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

from lib.example import synth_clip

CLASSES = ("chirp", "noise_burst", "tone_high", "tone_low")
Expected = dict[str, dict[str, str]]


def _write(path: Path, label: str, rng: np.random.Generator, rate: int, seconds: float, subtype: str = "PCM_16"):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), synth_clip(label, rng, rate, seconds), rate, subtype=subtype)


def make_speech_commands(root: Path, speakers: int = 6, seed: int = 0) -> Expected:
    """<word>/<speaker>_nohash_<n>.wav (1 s, some shorter, 16 kHz), validation_list.txt and testing_list.txt naming
    whole speakers' clips (as the dataset's hash of the speaker does), _background_noise_/ of long recordings,
    README.md and LICENSE; every clip in neither list is train."""
    rng = np.random.default_rng(seed)
    expected: Expected = {"train": {}, "validation": {}, "test": {}}
    ids = [f"{index:08x}" for index in range(0xA1B2C3D0, 0xA1B2C3D0 + speakers)]
    split_of = {ids[0]: "validation", ids[1]: "test"}  # the others train
    for word in CLASSES:
        for speaker in ids:
            for take in range(2):
                relative = f"{word}/{speaker}_nohash_{take}.wav"
                _write(root / relative, word, rng, 16000, 1.0 if take == 0 else 0.8)
                expected[split_of.get(speaker, "train")][relative] = word
    for split, name in (("validation", "validation_list.txt"), ("test", "testing_list.txt")):
        (root / name).write_text("".join(f"{relative}\n" for relative in sorted(expected[split])))
    for name in ("white_noise", "running_tap"):
        _write(root / "_background_noise_" / f"{name}.wav", "noise_burst", rng, 16000, 3.0)
    (root / "README.md").write_text("Speech Commands (fixture)\n")
    (root / "LICENSE").write_text("CC BY 4.0\n")
    return expected


ESC50_COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")


def make_esc50(root: Path, per_fold: int = 1, seconds: float = 5.0, seed: int = 0) -> Expected:
    """audio/<fold>-<src>-<take>-<target>.wav (5 s, 44.1 kHz mono) and meta/esc50.csv with its seven columns,
    folds 1..5; the expected split validates on fold 5 (the last), trains on 1-4."""
    rng = np.random.default_rng(seed)
    rows = []
    expected: Expected = {"train": {}, "validation": {}}
    for fold in range(1, 6):
        for target, category in enumerate(CLASSES):
            for index in range(per_fold):
                source = 100000 + 1000 * fold + 10 * target + index
                name = f"{fold}-{source}-A-{target}.wav"
                _write(root / "audio" / name, category, rng, 44100, seconds)
                rows.append([name, fold, target, category, str(target < 2), source, "A"])
                expected["validation" if fold == 5 else "train"][f"audio/{name}"] = category
    write_csv(root / "meta" / "esc50.csv", ESC50_COLUMNS, rows)
    return expected


URBANSOUND8K_COLUMNS = ("slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class")
# UrbanSound8K's files differ in rate, depth and length; these cycle through the kinds it has.
URBANSOUND8K_FORMATS = ((44100, "PCM_16", 4.0), (48000, "PCM_24", 2.5), (22050, "PCM_U8", 4.0), (96000, "FLOAT", 0.7),
                        (8000, "PCM_16", 3.2))


def make_urbansound8k(root: Path, seed: int = 0) -> Expected:
    """audio/fold1..fold10/<fsID>-<classID>-<occurrence>-<slice>.wav of mixed rates, bit depths and lengths up to
    4 s, and metadata/UrbanSound8K.csv with its eight columns; the expected split validates on fold 10."""
    rng = np.random.default_rng(seed)
    rows = []
    expected: Expected = {"train": {}, "validation": {}}
    for fold in range(1, 11):
        for class_id, name in enumerate(CLASSES):
            fs_id = 10000 + 100 * fold + class_id
            file_name = f"{fs_id}-{class_id}-0-{fold % 3}.wav"
            rate, subtype, seconds = URBANSOUND8K_FORMATS[(fold + class_id) % len(URBANSOUND8K_FORMATS)]
            _write(root / "audio" / f"fold{fold}" / file_name, name, rng, rate, seconds, subtype)
            rows.append([file_name, fs_id, 0.0, seconds, 1 + class_id % 2, fold, class_id, name])
            expected["validation" if fold == 10 else "train"][f"audio/fold{fold}/{file_name}"] = name
    write_csv(root / "metadata" / "UrbanSound8K.csv", URBANSOUND8K_COLUMNS, rows)
    return expected


CSV_FORMATS = (("wav", {"subtype": "PCM_16"}), ("flac", {}), ("ogg", {"subtype": "VORBIS"}),
               ("mp3", {"subtype": "MPEG_LAYER_III"}))


def make_csv_dataset(root: Path, per_class: int = 6, seed: int = 0) -> Expected:
    """clips/<n>.<wav|flac|ogg|mp3> (1.5 s, 16 kHz) and metadata.csv (file_name, label, split) beside them, as
    Hugging Face's audiofolder has it: every fourth clip of a class validates, the fifth tests."""
    rng = np.random.default_rng(seed)
    rows, expected = [], {"train": {}, "validation": {}, "test": {}}
    for label in CLASSES:
        for index in range(per_class):
            extension, options = CSV_FORMATS[index % len(CSV_FORMATS)]
            relative = f"clips/{label}-{index}.{extension}"
            (root / "clips").mkdir(parents=True, exist_ok=True)
            sf.write(str(root / relative), synth_clip(label, rng, 16000, 1.5), 16000, **options)
            split = "validation" if index % 6 == 3 else "test" if index % 6 == 4 else "train"
            rows.append([relative, label, split])
            expected[split][relative] = label
    write_csv(root / "metadata.csv", ("file_name", "label", "split"), rows)
    return expected


def write_csv(path: Path, columns: tuple[str, ...], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def scanned(manifest, root: Path) -> Expected:
    """A manifest as split -> {path relative to root: label}, to compare with a builder's expected."""
    return {
        split: {Path(clip.path).relative_to(root).as_posix(): manifest.label_names[clip.label]
                for clip in manifest.split(split)}
        for split in manifest.splits
    }


MULTI_LABEL_PAIRS = tuple((first, second) for index, first in enumerate(CLASSES) for second in CLASSES[index + 1:])


def mixed_clip(labels: tuple[str, ...], rng: np.random.Generator, rate: int = 16000, seconds: float = 1.0):
    """The example's synthetic sources of each label, summed at half level: a clip where all of them sound."""
    return np.clip(sum(synth_clip(label, rng, rate, seconds) for label in labels) / len(labels), -1, 1)


def multi_label_clips(per_pair: int, seed: int) -> list[tuple[str, tuple[str, ...], np.ndarray]]:
    """(name, labels, samples): per_pair clips of every pair of the example's sources, and one clip of each single
    source per pair count (so a clip can also hold one label)."""
    rng = np.random.default_rng(seed)
    clips = []
    for take in range(per_pair):
        for labels in MULTI_LABEL_PAIRS + tuple((label,) for label in CLASSES):
            clips.append((f"{'+'.join(labels)}-{take}", labels, mixed_clip(labels, rng)))
    return clips


def make_multi_label_folders(root: Path, per_pair: int = 3, seed: int = 0) -> dict[str, dict[str, list[str]]]:
    """train/<label>/<clip>.wav and validation/<label>/<clip>.wav, a clip copied into the folder of each of its
    labels; expected: split -> clip name -> its labels."""
    expected: dict[str, dict[str, list[str]]] = {}
    for split, takes, offset in (("train", per_pair, 0), ("validation", max(1, per_pair // 2), 1000)):
        expected[split] = {}
        for name, labels, samples in multi_label_clips(takes, seed + offset):
            for label in labels:
                path = root / split / label / f"{name}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(str(path), samples, 16000, subtype="PCM_16")
            expected[split][name] = sorted(labels)
    return expected


def make_multi_label_csv(root: Path, per_pair: int = 3, seed: int = 0, separator: str = ",",
                         row_per_label: bool = False) -> dict[str, dict[str, list[str]]]:
    """audio/<clip>.wav and metadata.csv (file_name, label, split) with a clip's labels in one cell joined by
    separator, or (row_per_label) a row per label; expected as make_multi_label_folders's."""
    expected: dict[str, dict[str, list[str]]] = {}
    rows = []
    for split, takes, offset in (("train", per_pair, 0), ("validation", max(1, per_pair // 2), 1000)):
        expected[split] = {}
        for name, labels, samples in multi_label_clips(takes, seed + offset):
            path = root / "audio" / f"{split}-{name}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(path), samples, 16000, subtype="PCM_16")
            cells = [[label] for label in labels] if row_per_label else [[separator.join(labels)]]
            rows += [[f"audio/{path.name}", *cell, split] for cell in cells]
            expected[split][path.name] = sorted(labels)
    with open(root / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "label", "split"])
        writer.writerows(rows)
    return expected
