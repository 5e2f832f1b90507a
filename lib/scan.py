"""Folder layout -> Manifest: which clips exist, their labels, and a content fingerprint.

Layout: ``<split_dir>/<class>/**/*.wav``; the label map is the sorted list of train subfolders.
The fingerprint (relative path, size, mtime of every clip) keys every downstream cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import soundfile as sf
from pydantic import BaseModel, Field

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = frozenset({".wav"})
SPLITS = ("train", "validation")
SUBSAMPLE_EVERY = 10  # the notebook's b_just_test kept every 10th clip


class ScanError(ValueError):
    """The dataset folders do not have the expected layout; the message names the folder and the fix."""


class Clip(BaseModel):
    path: str
    label: int
    sample_rate_hz: int
    num_samples: int
    channels: int


class BadFile(BaseModel):
    path: str
    reason: str


class Manifest(BaseModel):
    """What a scan found; small enough to cache and hand between tasks."""

    train_dir: str
    validation_dir: str
    label_names: list[str]
    train: list[Clip]
    validation: list[Clip]
    fingerprint: str
    ignored: dict[str, int] = Field(default_factory=dict)
    skipped: list[BadFile] = Field(default_factory=list)

    @property
    def label2id(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.label_names)}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))

    def split(self, name: str) -> list[Clip]:
        return {"train": self.train, "validation": self.validation}[name]

    def length_mismatches(self, clip_seconds: float) -> tuple[int, int]:
        """(clips shorter, clips longer) than clip_seconds, from their headers; truncated files count as short."""
        clips = self.train + self.validation
        short = sum(1 for c in clips if c.num_samples < clip_seconds * c.sample_rate_hz - 0.5)
        long = sum(1 for c in clips if c.num_samples > clip_seconds * c.sample_rate_hz + 0.5)
        return short, long


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def list_split(split_dir: Path, split: str) -> tuple[dict[str, list[Path]], dict[str, int]]:
    """Map class name -> sorted clip paths under one split folder, plus counts of ignored entries."""
    if not split_dir.is_dir():
        raise ScanError(
            f"{split} folder {split_dir} does not exist or is not a folder; "
            f"pass --{split.replace('_', '-')}-dir pointing at a folder of <class>/*.wav subfolders"
        )
    ignored = {"hidden": 0, "non_audio": 0, "outside_class_folder": 0}
    classes: dict[str, list[Path]] = {}
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if _is_hidden(entry.name):
            ignored["hidden"] += 1
            continue
        if not entry.is_dir():
            ignored["outside_class_folder"] += 1
            continue
        clips: list[Path] = []
        # Nested subfolders belong to their top-level class folder.
        for root, dirs, files in os.walk(entry.path, followlinks=False):
            hidden_dirs = [d for d in dirs if _is_hidden(d)]
            ignored["hidden"] += len(hidden_dirs)
            dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
            for name in sorted(files):
                if _is_hidden(name):
                    ignored["hidden"] += 1
                elif Path(name).suffix.lower() not in AUDIO_SUFFIXES:
                    ignored["non_audio"] += 1
                else:
                    clips.append(Path(root) / name)
        classes[entry.name] = sorted(clips)
    return classes, ignored


def fingerprint_listing(listing: dict[str, dict[str, list[Path]]], roots: dict[str, Path]) -> str:
    """Hash of (split, relative path, size, mtime) for every clip: changes when any clip does."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for class_name, paths in sorted(listing[split].items()):
            for path in paths:
                relative = path.relative_to(roots[split]).as_posix()
                try:
                    stat = path.stat()
                except OSError:  # e.g. a dangling symlink: the scan reports it as a bad file
                    digest.update(f"{split}\0{relative}\0unreadable\n".encode())
                    continue
                digest.update(f"{split}\0{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        digest.update(f"{split}-classes\0{','.join(sorted(listing[split]))}\n".encode())
    return digest.hexdigest()


def fingerprint_folders(train_dir: Path, validation_dir: Path) -> str:
    """Cheap content fingerprint (a listing and a stat per file; no audio is opened)."""
    roots = {"train": Path(train_dir), "validation": Path(validation_dir)}
    listing = {split: list_split(roots[split], split)[0] for split in SPLITS}
    return fingerprint_listing(listing, roots)


def _probe(path: Path) -> tuple[sf._SoundFileInfo | None, str | None]:
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        return None, f"not a readable audio file ({error})"
    if info.frames == 0:
        return None, "zero-length audio (no samples)"
    if info.samplerate <= 0 or info.channels <= 0:
        return None, f"invalid header (sample rate {info.samplerate}, channels {info.channels})"
    return info, None


def scan_dataset(
    train_dir: Path,
    validation_dir: Path,
    quick_subsample: bool = False,
    skip_bad_files: bool = False,
) -> Manifest:
    """Scan both splits, check the layout, read each clip's header, and return a Manifest."""
    roots = {"train": Path(train_dir), "validation": Path(validation_dir)}
    listing: dict[str, dict[str, list[Path]]] = {}
    ignored_total: dict[str, int] = {}
    for split in SPLITS:
        listing[split], ignored = list_split(roots[split], split)
        for key, count in ignored.items():
            ignored_total[key] = ignored_total.get(key, 0) + count
    fingerprint = fingerprint_listing(listing, roots)

    label_names = sorted(listing["train"])
    if not label_names:
        raise ScanError(f"train folder {roots['train']} has no class subfolders; expected train/<class>/*.wav")
    unknown = sorted(set(listing["validation"]) - set(label_names))
    if unknown:
        raise ScanError(
            f"validation folder {roots['validation']} has classes absent from train: {unknown}; "
            f"train classes are {label_names}. Rename or remove them, or add them to train"
        )
    for split in SPLITS:
        empty = [name for name, paths in listing[split].items() if not paths]
        if empty:
            raise ScanError(
                f"{split} classes without any .wav clip: {empty} (in {roots[split]}); "
                "add clips or remove the empty folders"
            )
        if not any(listing[split].values()):
            raise ScanError(f"{split} folder {roots[split]} holds no .wav clips")
    missing_in_validation = sorted(set(label_names) - set(listing["validation"]))
    if missing_in_validation:
        logger.warning(
            "train classes with no validation clips: %s; their validation metrics will be empty",
            missing_in_validation,
        )

    label2id = {name: index for index, name in enumerate(label_names)}
    clips: dict[str, list[Clip]] = {}
    bad: list[BadFile] = []
    for split in SPLITS:
        clips[split] = []
        for class_name, paths in listing[split].items():
            if quick_subsample:
                paths = paths[::SUBSAMPLE_EVERY]
            for path in paths:
                info, reason = _probe(path)
                if info is None:
                    bad.append(BadFile(path=str(path), reason=reason))
                    continue
                clips[split].append(
                    Clip(
                        path=str(path),
                        label=label2id[class_name],
                        sample_rate_hz=info.samplerate,
                        num_samples=info.frames,
                        channels=info.channels,
                    )
                )
    if bad and not skip_bad_files:
        raise ScanError(format_bad_files(bad))
    for item in bad:
        logger.warning("skipping %s: %s", item.path, item.reason)
    for split in SPLITS:
        if not clips[split]:
            raise ScanError(f"{split} split has no usable clips after skipping {len(bad)} bad files")

    return Manifest(
        train_dir=str(roots["train"]),
        validation_dir=str(roots["validation"]),
        label_names=label_names,
        train=clips["train"],
        validation=clips["validation"],
        # Identifies the exact clip set: the listing, the subsample and what was skipped.
        fingerprint=hashlib.sha256(
            f"{fingerprint}|subsample={quick_subsample}|skipped={sorted(b.path for b in bad)}".encode()
        ).hexdigest(),
        ignored={key: count for key, count in ignored_total.items() if count},
        skipped=bad,
    )


def format_bad_files(bad: list[BadFile]) -> str:
    lines = [f"{len(bad)} bad audio file(s) found:"]
    lines += [f"  - {item.path}: {item.reason}" for item in bad]
    lines.append("Fix or remove them, or pass --skip-bad-files (data.skip_bad_files=true) to skip them.")
    return "\n".join(lines)
