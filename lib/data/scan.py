"""Listing -> Manifest: which clips exist, their labels, and a content fingerprint; and the folders layout's listing.

Layout "folders": ``<split_dir>/<class>/**/*.wav``; the label map is the sorted list of train subfolders.
The other layouts (lib.data.layouts) list their clips from the dataset's own files into the same Listing.
The fingerprint (relative path, size, mtime of every clip, and with ``fingerprint="content"`` a
hash of its bytes) keys every downstream cache.

About 520 lines: the folders layout's listing (list_class .. list_folders) is the seam to split along next;
it stays here for now because pretraining's scan (lib.data.unlabeled) and the tests import it from here.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from lib.core.errors import ScanError, display_path, is_utf8
from lib.core.hashing import digest
from lib.data.audio import AUDIO_SUFFIXES, probe_clip
from lib.data.leaks import cross_split_clips, leaked_from, warn_duplicate_content
from lib.data.multilabel import check_one_recording, multi_label_clips

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation")  # what training reads (features, trunk cache)
TEST_SPLIT = "test"  # optional (data.test_dir): featurised and scored, never trained or tuned on
SUBSAMPLE_EVERY = 10  # the notebook's b_just_test kept every 10th clip
FingerprintMode = Literal["stat", "content"]


class Clip(BaseModel):
    path: str
    label: int  # a multi-label clip's first
    sample_rate_hz: int
    num_samples: int
    channels: int
    labels: list[int] = Field(default_factory=list)  # a multi-label clip's every class, ascending; else empty


class BadFile(BaseModel):
    path: str
    reason: str


@dataclass
class Listing:
    """Which clip files each split holds, under which label, before any header is read."""

    classes: dict[str, dict[str, list[Path]]]  # split -> label -> sorted clip paths
    roots: dict[str, Path]  # split -> the folder its clips are fingerprinted relative to
    ignored: dict[str, int]
    layout: str = "folders"
    missing: list[BadFile] = field(default_factory=list)  # manifest rows naming files that are not there
    note: str | None = None
    noise_dir: Path | None = None
    fold: int | None = None  # the fold validated on, where the dataset has folds

    @property
    def folders(self) -> bool:
        """Whether each split is its own folder of class folders (else one dataset root, split by its files or
        cut into folds)."""
        return self.layout == "folders" and len(set(self.roots.values())) == len(self.roots)

    def where(self, split: str) -> str:
        """How messages name a split: its folder, or the layout's split."""
        return f"{split} folder {self.roots[split]}" if self.folders else f"the {self.layout} {split} split"


class Manifest(BaseModel):
    """What a scan found; small enough to cache and hand between tasks."""

    train_dir: str
    validation_dir: str
    label_names: list[str]
    train: list[Clip]
    validation: list[Clip]
    fingerprint: str
    test_dir: str | None = None
    test: list[Clip] = Field(default_factory=list)
    ignored: dict[str, int] = Field(default_factory=dict)
    skipped: list[BadFile] = Field(default_factory=list)
    layout: str = "folders"  # data.layout; with the others train_dir and validation_dir are both data.root
    note: str | None = None  # how the layout drew the split (e.g. the fold validated on)
    noise_dir: str | None = None  # the dataset's own background-noise recordings (Speech Commands), not a class
    # A cross-validation's scan: each fold's clips (fold-1, ...), train and validation left empty.
    folds: dict[str, list[Clip]] = Field(default_factory=dict)
    multi_label: bool = False  # each clip has its classes in Clip.labels (model.task multi_label)

    @property
    def label2id(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.label_names)}

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits scanned: train, validation and, with a test folder, test; or a cross-validation's folds."""
        scanned = tuple(self.folds) if self.folds else SPLITS
        return (*scanned, TEST_SPLIT) if self.test_dir is not None else scanned

    def split(self, name: str) -> list[Clip]:
        return {"train": self.train, "validation": self.validation, TEST_SPLIT: self.test, **self.folds}[name]

    @property
    def clips(self) -> list[Clip]:
        return [clip for split in self.splits for clip in self.split(split)]

    def length_mismatches(self, clip_seconds: float) -> tuple[int, int]:
        """(clips shorter, clips longer) than clip_seconds, from their headers (truncated files are bad files)."""
        clips = self.clips
        short = sum(1 for c in clips if c.num_samples < clip_seconds * c.sample_rate_hz - 0.5)
        long = sum(1 for c in clips if c.num_samples > clip_seconds * c.sample_rate_hz + 0.5)
        return short, long

    def length_report(self, clip_seconds: float, shortest: int = 3, cut: str = "trimmed") -> str | None:
        """One log line on padded and trimmed (or cropped: cut) clips, naming the shortest few; None when every
        clip fits."""
        short, long = self.length_mismatches(clip_seconds)
        if not short:
            return f"{long} clips longer than {clip_seconds:.2f} s were {cut}" if long else None
        # The shortest clips are the ones most likely to be mistakes (a cut recording, an empty take).
        by_length = sorted((c.num_samples / c.sample_rate_hz, c.path) for c in self.clips)
        names = ", ".join(f"{path} {seconds:.3f} s" for seconds, path in by_length[:min(shortest, short)])
        report = f"{short} clips shorter than {clip_seconds:.2f} s were zero-padded (shortest: {names})"
        return f"{report}; {long} longer ones {cut}" if long else report


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


# Why a symlinked folder into the rest of the dataset is not followed, as the warning says it.
LABELLED_LINK_RISK = "elsewhere in the dataset (another class or split), whose clips would get this class's label"


def list_class(
    folder: str, ignored: dict[str, int], dataset_roots: tuple[Path, ...] = (), warn: bool = True,
    link_risk: str = LABELLED_LINK_RISK,
) -> list[Path]:
    """Every clip under one class folder, nested ones included; symlinked subfolders followed, each real one once.

    A symlinked folder that leads elsewhere inside the dataset (up to the split, into another class
    or split) is not followed: its clips would be trained under this class's label, or validated on.
    It is counted, and named in a warning (link_risk says why) unless warn is False: a listing made
    only for a fingerprint (a cache key) stays quiet, the scan that follows it warns once.
    """
    clips: list[Path] = []
    stat = os.stat(folder)
    seen = {(stat.st_dev, stat.st_ino)}  # a symlink back up the tree must not loop forever
    own = Path(os.path.realpath(folder))
    roots = [Path(os.path.realpath(root)) for root in dataset_roots]
    pending = [folder]
    while pending:
        try:
            entries = sorted(os.scandir(pending.pop()), key=lambda e: e.name)
        except OSError:  # e.g. no permission: counted, as os.walk used to skip it silently
            ignored["unreadable_folder"] += 1
            continue
        for entry in entries:
            if _is_hidden(entry.name):
                ignored["hidden"] += 1
            elif entry.is_dir():  # follows symlinks
                stat = entry.stat()
                real = Path(os.path.realpath(entry.path))
                if entry.is_symlink() and not real.is_relative_to(own) and any(
                    real.is_relative_to(root) or root.is_relative_to(real) for root in roots
                ):
                    ignored["folder_link_into_the_dataset"] += 1
                    if warn:
                        logger.warning(
                            "not following %s: it links to %s, %s; remove the link",
                            display_path(entry.path), display_path(real), link_risk,
                        )
                elif (stat.st_dev, stat.st_ino) in seen:  # a loop, or a second link to one folder
                    ignored["folder_already_scanned"] += 1
                else:
                    seen.add((stat.st_dev, stat.st_ino))
                    pending.append(entry.path)
            elif Path(entry.name).suffix.lower() not in AUDIO_SUFFIXES:
                ignored["non_audio"] += 1
            elif not entry.is_file() and os.path.exists(entry.path):
                # A FIFO, socket or device named .wav: opening a FIFO blocks until someone writes to it.
                ignored["not_a_regular_file"] += 1
            else:  # a regular file, or a dangling symlink, which the probe reports as a bad file
                clips.append(Path(entry.path))
    return sorted(clips)


def ignored_counts() -> dict[str, int]:
    """What a listing passes over, by reason (reported with the scan)."""
    return {
        "hidden": 0, "non_audio": 0, "outside_class_folder": 0, "not_a_regular_file": 0,
        "folder_already_scanned": 0, "unreadable_folder": 0, "folder_link_into_the_dataset": 0,
    }


def list_split(
    split_dir: Path, split: str, dataset_roots: tuple[Path, ...] = (), warn: bool = True
) -> tuple[dict[str, list[Path]], dict[str, int]]:
    """Map class name -> sorted clip paths under one split folder, plus counts of ignored entries.

    warn: see list_class."""
    if not split_dir.is_dir():
        raise ScanError(
            f"{split} folder {split_dir} does not exist or is not a folder; "
            f"pass --{split.replace('_', '-')}-dir pointing at a folder of <class>/*.wav subfolders"
        )
    ignored = ignored_counts()
    classes: dict[str, list[Path]] = {}
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if _is_hidden(entry.name):
            ignored["hidden"] += 1
            continue
        if not entry.is_dir():
            ignored["outside_class_folder"] += 1
            continue
        # Nested subfolders belong to their top-level class folder.
        classes[entry.name] = list_class(entry.path, ignored, dataset_roots or (split_dir,), warn)
    return classes, ignored


def _content_digest(path: Path) -> str:
    # Streamed in blocks by hashlib (never the whole file in memory); only regular files reach here.
    # SHA-1 detects edits, not attacks, and with CPU SHA extensions runs about 2x blake2b (measured).
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, lambda: hashlib.sha1(usedforsecurity=False)).hexdigest()


def fingerprint_listing(
    listing: dict[str, dict[str, list[Path]]], roots: dict[str, Path], mode: FingerprintMode = "stat",
    digests: dict[tuple[str, Path], str] | None = None, labelled: bool = False,
) -> str:
    """Hash of (split, relative path, size, mtime[, content hash]) for every clip: changes when any clip does.

    "stat" misses an edit that keeps both the size and the mtime; "content" reads every byte to catch it
    (and records each clip's content hash in digests, (split, path) -> hash, if given). labelled adds each
    clip's label, for layouts where a manifest, not the clip's folder, gives it.
    """
    hasher = hashlib.sha256()  # streamed: one line per clip

    def update(text: str) -> None:
        hasher.update(text.encode("utf-8", "surrogateescape"))  # names need not be UTF-8 (see is_utf8)

    # A split absent from the listing adds nothing: a run without a test folder keeps its fingerprint. The
    # usual splits first, in the order they always had; then any other (a cross-validation's fold-1, ...).
    usual = [split for split in (*SPLITS, TEST_SPLIT) if split in listing]
    for split in usual + sorted(split for split in listing if split not in usual):
        for label, paths in sorted(listing[split].items()):
            for path in paths:
                # A manifest may name clips outside its folder (../audio/x.wav): relpath, not relative_to.
                relative = Path(os.path.relpath(path, roots[split])).as_posix() + (f"\0{label}" if labelled else "")
                try:
                    stat = path.stat()
                    content = ""
                    if mode == "content":
                        content_digest = _content_digest(path)
                        content = f"\0{content_digest}"
                        if digests is not None:
                            digests[(split, path)] = content_digest
                except OSError:  # e.g. a dangling symlink: the scan reports it as a bad file
                    update(f"{split}\0{relative}\0unreadable\n")
                    continue
                update(f"{split}\0{relative}\0{stat.st_size}\0{stat.st_mtime_ns}{content}\n")
        update(f"{split}-classes\0{','.join(sorted(listing[split]))}\n")
    return hasher.hexdigest()


def drop_cross_split_clips(
    listing: dict[str, dict[str, list[Path]]], roots: dict[str, Path], skip_bad_files: bool
) -> tuple[dict[str, dict[str, list[Path]]], list[BadFile]]:
    """The listing without the clips of another split (cross_split_clips), and those as bad files; refused (one
    ScanError naming them all) unless skip_bad_files, and always where a class folder holds nothing else.

    roots: each split's own folder (layout folders), or {} where one dataset root holds every split."""
    bad = [BadFile(path=path, reason=reason) for path, reason in cross_split_clips(listing, roots)]
    if bad and not skip_bad_files:  # before the layout checks, which a class folder of links would fail first
        stop_or_skip(bad, skip_bad_files)
    leaked = {item.path for item in bad}
    skipped = sorted(leaked)
    kept = {
        split: {name: [p for p in paths if display_path(p) not in leaked] for name, paths in classes.items()}
        for split, classes in listing.items()
    }
    for split, classes in ((split, classes) for split, classes in kept.items() if split in roots):
        emptied = sorted(
            name for name, paths in classes.items() if not paths and leaked_from(skipped, roots[split] / name)
        )
        if emptied:
            raise ScanError(
                f"{split} class folder(s) {emptied}: every clip in them is a file of another split (links, skipped "
                f"by --skip-bad-files: {', '.join(leaked_from(skipped, roots[split] / emptied[0])[:2])}, ...); a class "
                "made of another split's clips measures nothing: remove the links"
            )
    return kept, bad


def split_roots(train_dir: Path, validation_dir: Path, test_dir: Path | None = None) -> dict[str, Path]:
    """Split name -> folder, test only when given."""
    roots = {"train": Path(train_dir), "validation": Path(validation_dir)}
    return roots | ({TEST_SPLIT: Path(test_dir)} if test_dir is not None else {})


def fingerprint_folders(
    train_dir: Path, validation_dir: Path, mode: FingerprintMode = "stat", test_dir: Path | None = None
) -> str:
    """Content fingerprint: a listing and a stat per file ("stat"), plus every clip's bytes hashed ("content").

    Quiet: the scan that follows a cache miss names what its listing passes over."""
    roots = split_roots(train_dir, validation_dir, test_dir)
    listing = {split: list_split(root, split, tuple(roots.values()), warn=False)[0] for split, root in roots.items()}
    return fingerprint_listing(listing, roots, mode)


def fingerprint_found(found: Listing, mode: FingerprintMode = "stat") -> str:
    """fingerprint_folders for any layout's listing (and its missing rows, which a fixed file changes)."""
    missing = "|".join(sorted(item.path for item in found.missing))
    return digest(f"{fingerprint_listing(found.classes, found.roots, mode, labelled=not found.folders)}|{missing}", 64)


def check_distinct_splits(roots: dict[str, Path]) -> None:
    """No two splits may be one folder (resolve() follows symlinks and "..", so an alias is caught too)."""
    for first, second in combinations(roots, 2):
        if roots[first].resolve() == roots[second].resolve():
            raise ScanError(
                f"--{first}-dir {roots[first]} and --{second}-dir {roots[second]} are the same folder "
                f"({roots[first].resolve()}); {second} must be held-out clips, or its metrics only measure "
                f"memorisation: pass a separate {second} folder"
            )


def list_folders(
    train_dir: Path, validation_dir: Path, test_dir: Path | None = None, warn: bool = True
) -> Listing:
    """Layout folders: each split's class folders (warn: see list_class)."""
    roots = split_roots(train_dir, validation_dir, test_dir)
    check_distinct_splits(roots)
    classes: dict[str, dict[str, list[Path]]] = {}
    ignored_total: dict[str, int] = {}
    for split in roots:
        classes[split], ignored = list_split(roots[split], split, tuple(roots.values()), warn)
        for key, count in ignored.items():
            ignored_total[key] = ignored_total.get(key, 0) + count
        # Class names become labels in JSON, Arrow and the model config: a name that is not UTF-8 cannot
        # be skipped like one bad file, since that would silently change the label set.
        undecodable = [display_path(roots[split] / name) for name in classes[split] if not is_utf8(name)]
        if undecodable:
            raise ScanError(
                f"{split} class folder {', '.join(undecodable)} has a name that is not valid UTF-8 "
                "(bytes shown as \\xNN); rename it (e.g. convmv -f latin1 -t utf8 -r --notest DIR)"
            )
    return Listing(classes=classes, roots=roots, ignored=ignored_total)


def scan_dataset(
    train_dir: Path,
    validation_dir: Path,
    quick_subsample: bool = False,
    skip_bad_files: bool = False,
    fingerprint: FingerprintMode = "stat",
    test_dir: Path | None = None,
) -> Manifest:
    """Scan the split folders (train, validation, and test if given), check the layout, read each clip's header."""
    return scan_listing(list_folders(train_dir, validation_dir, test_dir), quick_subsample, skip_bad_files, fingerprint)


def scan_listing(
    found: Listing, quick_subsample: bool = False, skip_bad_files: bool = False, fingerprint: FingerprintMode = "stat",
    multi_label: bool = False,
) -> Manifest:
    """Check a layout's listing (labels, empty classes, links across splits), read each clip's header.

    multi_label: a clip listed under several labels (the same file name in several class folders, or a manifest's
    several labels) is one clip with all of them (Clip.labels)."""
    roots, splits = found.roots, list(found.roots)
    digests: dict[tuple[str, Path], str] = {}
    listing_fingerprint = fingerprint_listing(found.classes, roots, fingerprint, digests, labelled=not found.folders)
    # A clip whose real file lies in another split (a linked file or class folder) is not held out: refused or
    # skipped like a bad file, before any header is read.
    listing, bad = drop_cross_split_clips(found.classes, roots if found.folders else {}, skip_bad_files)
    bad = found.missing + bad
    if found.missing and not skip_bad_files:  # rows naming absent files: said before the splits they leave empty
        stop_or_skip(bad, skip_bad_files)
    warn_duplicate_content(digests)

    by_fold = "train" not in listing  # a cross-validation's folds: every fold trains in turn
    trained = [split for split in splits if split != TEST_SPLIT] if by_fold else ["train"]
    label_names = sorted({label for split in trained for label in listing[split]})
    if not label_names:
        raise ScanError(f"train folder {roots['train']} has no class subfolders; expected train/<class>/*.wav"
                        if found.folders else f"{found.where(trained[0])} has no clips")
    for split in (split for split in splits if split not in trained):
        unknown = sorted(set(listing[split]) - set(label_names))
        if unknown:
            fix = ("Rename or remove them, or add them to train" if found.folders else
                   "a class must have training clips: fix its labels" + (", or choose another fold (data.fold)"
                                                                         if found.fold is not None else ""))
            raise ScanError(
                f"{found.where(split)} has classes absent from train: {unknown}; train classes are {label_names}. "
                + fix
            )
    for split in splits:
        empty = [name for name, paths in listing[split].items() if not paths]
        if empty:
            raise ScanError(
                f"{split} classes without any .wav clip: {empty} (in {roots[split]}); "
                "add clips or remove the empty folders"
            )
        if not any(listing[split].values()):
            absent = f"; {len(found.missing)} listed clips are missing (e.g. {found.missing[0].path})" \
                if found.missing else ""
            raise ScanError(
                f"{split} folder {roots[split]} holds no audio clips (.wav, .flac, .ogg, .mp3)" if found.folders
                else f"{found.where(split)} holds no clips{absent}"
            )
    if len(label_names) == 1:
        raise ScanError(
            f"train folder {roots['train']} has only one class ({label_names[0]!r}); a classifier needs at "
            "least two class subfolders: add the other classes, or point --train-dir at the folder above"
            if found.folders else f"{found.where(trained[0])} has only one class ({label_names[0]!r}); a "
            "classifier needs at least two: check the label column"
        )
    for split in (split for split in splits if split != "train"):
        missing = sorted(set(label_names) - set(listing[split]))
        if missing:
            logger.warning("train classes with no %s clips: %s; their %s metrics will be empty", split, missing, split)

    label2id = {name: index for index, name in enumerate(label_names)}
    clips: dict[str, list[Clip]] = {}
    for split in splits:
        clips[split] = []
        if multi_label:
            class_root = roots[split] if found.layout == "folders" else None
            grouped = multi_label_clips(listing[split], class_root)
            if class_root is not None:  # elsewhere a clip's labels are rows naming its one path
                check_one_recording(grouped)
            kept_clips = grouped[::SUBSAMPLE_EVERY] if quick_subsample else grouped
            classes = [sorted(label2id[name] for name in names) for _, names in kept_clips]
            clips[split] = probe_clips([paths[0] for paths, _ in kept_clips], classes, bad, multi_label=True)
            continue
        for class_name, paths in listing[split].items():
            kept = paths[::SUBSAMPLE_EVERY] if quick_subsample else paths
            clips[split] += probe_clips(kept, [[label2id[class_name]]] * len(kept), bad)
    stop_or_skip(bad, skip_bad_files)
    for split in splits:
        if not clips[split]:
            raise ScanError(f"{split} split has no usable clips after skipping {len(bad)} bad files")

    return Manifest(
        train_dir=str(roots[splits[0]]),
        validation_dir=str(roots[splits[1] if len(splits) > 1 else splits[0]]),
        label_names=label_names,
        train=clips.get("train", []),
        validation=clips.get("validation", []),
        folds={split: clips[split] for split in splits if split != TEST_SPLIT} if by_fold else {},
        test_dir=str(roots[TEST_SPLIT]) if TEST_SPLIT in roots else None,
        test=clips.get(TEST_SPLIT, []),
        # Identifies the exact clip set: the listing, the subsample and what was skipped.
        fingerprint=digest(
            f"{listing_fingerprint}|subsample={quick_subsample}|skipped={sorted(b.path for b in bad)}"
            + ("|multi_label" if multi_label else ""), 64
        ),
        ignored={key: count for key, count in found.ignored.items() if count},
        skipped=bad,
        layout=found.layout,
        note=found.note,
        noise_dir=str(found.noise_dir) if found.noise_dir else None,
        multi_label=multi_label,
    )


def probe_clips(paths: list[Path], labels: list[list[int]], bad: list[BadFile], multi_label: bool = False
                ) -> list[Clip]:
    """A Clip (header facts) per usable path with its labels (a list each: one class, or a multi-label clip's
    several); the others go to `bad` with the reason."""
    clips = []
    for path, classes in zip(paths, labels, strict=True):
        info, reason = probe_clip(path)
        if info is None:
            bad.append(BadFile(path=display_path(path), reason=reason))
            continue
        clips.append(
            Clip(
                path=str(path), label=classes[0], sample_rate_hz=info.samplerate, num_samples=info.frames,
                channels=info.channels, labels=classes if multi_label else [],
            )
        )
    return clips


def stop_or_skip(bad: list[BadFile], skip_bad_files: bool) -> None:
    """One error naming every bad file, or (skip_bad_files) one warning line per skipped file."""
    if bad and not skip_bad_files:
        raise ScanError(format_bad_files({item.path: item.reason for item in bad}))
    for item in bad:
        logger.warning("skipping %s: %s", item.path, item.reason)


# How the "holds no audio clips" error names what a folder held instead (ignored_counts' reasons).
IGNORED_AS = {
    "non_audio": "files that are not .wav, .flac, .ogg or .mp3 (convert them)",
    "hidden": "hidden entries",
    "not_a_regular_file": "FIFOs, sockets or devices named .wav",
    "folder_already_scanned": "links to a folder already listed",
    "unreadable_folder": "folders it could not read (permissions?)",
    "folder_link_into_the_dataset": "links into another pretraining folder",
}


def no_clips_message(name: str, root: Path, ignored: dict[str, int]) -> str:
    """A pretraining folder without an audio clip, and what it held that was ignored, if anything."""
    held = "; ".join(f"{count} {IGNORED_AS.get(reason, reason)}" for reason, count in ignored.items() if count)
    return f"{name} {root} holds no audio clips (searched at any depth)" + (f"; ignored there: {held}" if held else "")


def format_bad_files(bad: dict[str, str], during: str | None = None, setting: str = "data.skip_bad_files") -> str:
    """The one message for clips that cannot be used (scan, features, prediction): each with its reason, and the fix."""
    lines = [f"{len(bad)} bad audio file(s) found" + (f" while {during}:" if during else ":")]
    lines += [f"  - {path}: {reason}" for path, reason in bad.items()]
    lines.append(f"Fix or remove them, or pass --skip-bad-files ({setting}=true) to skip them.")
    return "\n".join(lines)
