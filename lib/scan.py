"""Folder layout -> Manifest: which clips exist, their labels, and a content fingerprint.

Layout: ``<split_dir>/<class>/**/*.wav``; the label map is the sorted list of train subfolders.
The fingerprint (relative path, size, mtime of every clip, and with ``fingerprint="content"`` a
hash of its bytes) keys every downstream cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
from itertools import combinations
from pathlib import Path
from typing import Literal

import soundfile as sf
from pydantic import BaseModel, Field

from lib.hashing import digest

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = frozenset({".wav"})
SPLITS = ("train", "validation")  # what training reads (features, trunk cache)
TEST_SPLIT = "test"  # optional (data.test_dir): featurised and scored, never trained or tuned on
SUBSAMPLE_EVERY = 10  # the notebook's b_just_test kept every 10th clip
# Below this a header is corrupt rather than low-fidelity (telephone audio is 8 kHz), and resampling
# from it would blow a few KB up to gigabytes (a 1 Hz header makes 16000 output samples per input one).
MIN_SAMPLE_RATE_HZ = 1000
FingerprintMode = Literal["stat", "content"]


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
    test_dir: str | None = None
    test: list[Clip] = Field(default_factory=list)
    ignored: dict[str, int] = Field(default_factory=dict)
    skipped: list[BadFile] = Field(default_factory=list)

    @property
    def label2id(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.label_names)}

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits scanned: train, validation and, with a test folder, test."""
        return (*SPLITS, TEST_SPLIT) if self.test_dir is not None else SPLITS

    def split(self, name: str) -> list[Clip]:
        return {"train": self.train, "validation": self.validation, TEST_SPLIT: self.test}[name]

    @property
    def clips(self) -> list[Clip]:
        return [clip for split in self.splits for clip in self.split(split)]

    def length_mismatches(self, clip_seconds: float) -> tuple[int, int]:
        """(clips shorter, clips longer) than clip_seconds, from their headers (truncated files are bad files)."""
        clips = self.clips
        short = sum(1 for c in clips if c.num_samples < clip_seconds * c.sample_rate_hz - 0.5)
        long = sum(1 for c in clips if c.num_samples > clip_seconds * c.sample_rate_hz + 0.5)
        return short, long

    def length_report(self, clip_seconds: float, shortest: int = 3) -> str | None:
        """One log line on padded and trimmed clips, naming the shortest few; None when every clip fits."""
        short, long = self.length_mismatches(clip_seconds)
        if not short:
            return f"{long} clips longer than {clip_seconds:.2f} s were trimmed" if long else None
        # The shortest clips are the ones most likely to be mistakes (a cut recording, an empty take).
        by_length = sorted((c.num_samples / c.sample_rate_hz, c.path) for c in self.clips)
        names = ", ".join(f"{path} {seconds:.3f} s" for seconds, path in by_length[:min(shortest, short)])
        report = f"{short} clips shorter than {clip_seconds:.2f} s were zero-padded (shortest: {names})"
        return f"{report}; {long} longer ones trimmed" if long else report


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_utf8(name: str) -> bool:
    # Python keeps the bytes of a name that is not UTF-8 as lone surrogates, which then break every
    # str.encode(): hashing, JSON, Arrow, logging. Such names are caught here, once.
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def display_path(path: str | os.PathLike) -> str:
    """The path as printable text: bytes that are not UTF-8 shown as \\xNN escapes, so messages never crash."""
    text = os.fspath(path)
    return text if _is_utf8(text) else os.fsencode(text).decode("utf-8", "backslashreplace")


# Why a symlinked folder into the rest of the dataset is not followed, as the warning says it.
LABELLED_LINK_RISK = "elsewhere in the dataset (another class or split), whose clips would get this class's label"
UNLABELED_LINK_RISK = (
    "inside another pretraining folder (a --data-dir or the --validation-dir), whose clips would be listed twice, "
    "or validated on and trained on at once"
)


def _list_class(
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


def _ignored_counts() -> dict[str, int]:
    """What a listing passes over, by reason (reported with the scan)."""
    return {
        "hidden": 0, "non_audio": 0, "outside_class_folder": 0, "not_a_regular_file": 0,
        "folder_already_scanned": 0, "unreadable_folder": 0, "folder_link_into_the_dataset": 0,
    }


def list_split(
    split_dir: Path, split: str, dataset_roots: tuple[Path, ...] = (), warn: bool = True
) -> tuple[dict[str, list[Path]], dict[str, int]]:
    """Map class name -> sorted clip paths under one split folder, plus counts of ignored entries.

    warn: see _list_class."""
    if not split_dir.is_dir():
        raise ScanError(
            f"{split} folder {split_dir} does not exist or is not a folder; "
            f"pass --{split.replace('_', '-')}-dir pointing at a folder of <class>/*.wav subfolders"
        )
    ignored = _ignored_counts()
    classes: dict[str, list[Path]] = {}
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if _is_hidden(entry.name):
            ignored["hidden"] += 1
            continue
        if not entry.is_dir():
            ignored["outside_class_folder"] += 1
            continue
        # Nested subfolders belong to their top-level class folder.
        classes[entry.name] = _list_class(entry.path, ignored, dataset_roots or (split_dir,), warn)
    return classes, ignored


def _content_digest(path: Path) -> str:
    # Streamed in blocks by hashlib (never the whole file in memory); only regular files reach here.
    # SHA-1 detects edits, not attacks, and with CPU SHA extensions runs about 2x blake2b (measured).
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, lambda: hashlib.sha1(usedforsecurity=False)).hexdigest()


def fingerprint_listing(
    listing: dict[str, dict[str, list[Path]]], roots: dict[str, Path], mode: FingerprintMode = "stat"
) -> str:
    """Hash of (split, relative path, size, mtime[, content hash]) for every clip: changes when any clip does.

    "stat" misses an edit that keeps both the size and the mtime; "content" reads every byte to catch it.
    """
    hasher = hashlib.sha256()  # streamed: one line per clip

    def update(text: str) -> None:
        hasher.update(text.encode("utf-8", "surrogateescape"))  # names need not be UTF-8 (see _is_utf8)

    # A split absent from the listing adds nothing: a run without a test folder keeps its fingerprint.
    for split in (split for split in (*SPLITS, TEST_SPLIT) if split in listing):
        for class_name, paths in sorted(listing[split].items()):
            for path in paths:
                relative = path.relative_to(roots[split]).as_posix()
                try:
                    stat = path.stat()
                    content = f"\0{_content_digest(path)}" if mode == "content" else ""
                except OSError:  # e.g. a dangling symlink: the scan reports it as a bad file
                    update(f"{split}\0{relative}\0unreadable\n")
                    continue
                update(f"{split}\0{relative}\0{stat.st_size}\0{stat.st_mtime_ns}{content}\n")
        update(f"{split}-classes\0{','.join(sorted(listing[split]))}\n")
    return hasher.hexdigest()


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


def sample_rate_problem(rate_hz: int) -> str | None:
    """Why a header's (positive) sample rate cannot be the clip's real one, or None."""
    if rate_hz >= MIN_SAMPLE_RATE_HZ:
        return None
    return (
        f"sample rate {rate_hz} Hz is below {MIN_SAMPLE_RATE_HZ} Hz, so the header is most likely corrupt; "
        "re-export the clip at its real sample rate"
    )


def _riff_shortfall(path: Path) -> tuple[int, int] | None:
    """(bytes of samples the RIFF header promises, bytes the file holds) when a wav is cut short, else None."""
    with open(path, "rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
            return None  # RF64, W64 or another container: libsndfile's own checks apply
        file_bytes = os.fstat(handle.fileno()).st_size
        while len(chunk := handle.read(8)) == 8:
            size = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"data":
                # 0 and 0xFFFFFFFF are what writers that cannot seek back (pipes, streams) leave behind.
                present = file_bytes - handle.tell()
                return (size, present) if size not in (0, 0xFFFFFFFF) and present < size else None
            handle.seek(size + (size & 1), os.SEEK_CUR)  # chunks are padded to even sizes
    return None


def _probe(path: Path) -> tuple[sf._SoundFileInfo | None, str | None]:
    if not _is_utf8(str(path)):
        return None, (
            "the name is not valid UTF-8 (bytes shown as \\xNN); rename the file or its folder "
            "(e.g. convmv -f latin1 -t utf8 -r --notest DIR)"
        )
    try:
        info = sf.info(str(path))
        shortfall = _riff_shortfall(path)
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        return None, f"not a readable audio file ({error})"
    if info.frames == 0:
        return None, "zero-length audio (no samples)"
    if info.samplerate <= 0 or info.channels <= 0:
        return None, f"invalid header (sample rate {info.samplerate}, channels {info.channels})"
    if problem := sample_rate_problem(info.samplerate):
        return None, problem
    if shortfall is not None:
        return None, truncation_reason(shortfall)
    return info, None


def truncation_reason(shortfall: tuple[int, int]) -> str:
    # libsndfile reads what is there, which would then be zero-padded and used as a whole clip.
    return (
        f"truncated: the header promises {shortfall[0]} bytes of samples but the file holds {shortfall[1]} "
        "(an interrupted copy or download?); copy it again"
    )


def truncation_problem(path: str | os.PathLike) -> str | None:
    """Why a wav is cut short (its header promises more samples than it holds), or None; for readers
    that were not preceded by a scan (lib.predict's inputs)."""
    shortfall = _riff_shortfall(Path(path))
    return None if shortfall is None else truncation_reason(shortfall)


def check_distinct_splits(roots: dict[str, Path]) -> None:
    """No two splits may be one folder (resolve() follows symlinks and "..", so an alias is caught too)."""
    for first, second in combinations(roots, 2):
        if roots[first].resolve() == roots[second].resolve():
            raise ScanError(
                f"--{first}-dir {roots[first]} and --{second}-dir {roots[second]} are the same folder "
                f"({roots[first].resolve()}); {second} must be held-out clips, or its metrics only measure "
                f"memorisation: pass a separate {second} folder"
            )


def scan_dataset(
    train_dir: Path,
    validation_dir: Path,
    quick_subsample: bool = False,
    skip_bad_files: bool = False,
    fingerprint: FingerprintMode = "stat",
    test_dir: Path | None = None,
) -> Manifest:
    """Scan the splits (train, validation, and test if given), check the layout, read each clip's header."""
    roots = split_roots(train_dir, validation_dir, test_dir)
    check_distinct_splits(roots)
    listing: dict[str, dict[str, list[Path]]] = {}
    ignored_total: dict[str, int] = {}
    for split in roots:
        listing[split], ignored = list_split(roots[split], split, tuple(roots.values()))
        for key, count in ignored.items():
            ignored_total[key] = ignored_total.get(key, 0) + count
        # Class names become labels in JSON, Arrow and the model config: a name that is not UTF-8 cannot
        # be skipped like one bad file, since that would silently change the label set.
        undecodable = [display_path(roots[split] / name) for name in listing[split] if not _is_utf8(name)]
        if undecodable:
            raise ScanError(
                f"{split} class folder {', '.join(undecodable)} has a name that is not valid UTF-8 "
                "(bytes shown as \\xNN); rename it (e.g. convmv -f latin1 -t utf8 -r --notest DIR)"
            )
    listing_fingerprint = fingerprint_listing(listing, roots, fingerprint)

    label_names = sorted(listing["train"])
    if not label_names:
        raise ScanError(f"train folder {roots['train']} has no class subfolders; expected train/<class>/*.wav")
    for split in list(roots)[1:]:
        unknown = sorted(set(listing[split]) - set(label_names))
        if unknown:
            raise ScanError(
                f"{split} folder {roots[split]} has classes absent from train: {unknown}; "
                f"train classes are {label_names}. Rename or remove them, or add them to train"
            )
    for split in roots:
        empty = [name for name, paths in listing[split].items() if not paths]
        if empty:
            raise ScanError(
                f"{split} classes without any .wav clip: {empty} (in {roots[split]}); "
                "add clips or remove the empty folders"
            )
        if not any(listing[split].values()):
            raise ScanError(f"{split} folder {roots[split]} holds no .wav clips")
    if len(label_names) == 1:
        raise ScanError(
            f"train folder {roots['train']} has only one class ({label_names[0]!r}); a classifier needs at "
            "least two class subfolders: add the other classes, or point --train-dir at the folder above"
        )
    for split in list(roots)[1:]:
        missing = sorted(set(label_names) - set(listing[split]))
        if missing:
            logger.warning("train classes with no %s clips: %s; their %s metrics will be empty", split, missing, split)

    label2id = {name: index for index, name in enumerate(label_names)}
    clips: dict[str, list[Clip]] = {}
    bad: list[BadFile] = []
    for split in roots:
        clips[split] = []
        for class_name, paths in listing[split].items():
            clips[split] += _probe_clips(paths[::SUBSAMPLE_EVERY] if quick_subsample else paths, label2id[class_name], bad)
    _stop_or_skip(bad, skip_bad_files)
    for split in roots:
        if not clips[split]:
            raise ScanError(f"{split} split has no usable clips after skipping {len(bad)} bad files")

    return Manifest(
        train_dir=str(roots["train"]),
        validation_dir=str(roots["validation"]),
        label_names=label_names,
        train=clips["train"],
        validation=clips["validation"],
        test_dir=str(roots[TEST_SPLIT]) if TEST_SPLIT in roots else None,
        test=clips.get(TEST_SPLIT, []),
        # Identifies the exact clip set: the listing, the subsample and what was skipped.
        fingerprint=digest(f"{listing_fingerprint}|subsample={quick_subsample}|skipped={sorted(b.path for b in bad)}", 64),
        ignored={key: count for key, count in ignored_total.items() if count},
        skipped=bad,
    )


def _probe_clips(paths: list[Path], label: int, bad: list[BadFile]) -> list[Clip]:
    """A Clip (header facts) per usable path; the others go to `bad` with the reason."""
    clips = []
    for path in paths:
        info, reason = _probe(path)
        if info is None:
            bad.append(BadFile(path=display_path(path), reason=reason))
            continue
        clips.append(
            Clip(
                path=str(path), label=label, sample_rate_hz=info.samplerate, num_samples=info.frames,
                channels=info.channels,
            )
        )
    return clips


def _stop_or_skip(bad: list[BadFile], skip_bad_files: bool) -> None:
    """One error naming every bad file, or (skip_bad_files) one warning line per skipped file."""
    if bad and not skip_bad_files:
        raise ScanError(format_bad_files({item.path: item.reason for item in bad}))
    for item in bad:
        logger.warning("skipping %s: %s", item.path, item.reason)


# Pretraining: folders of clips whose labels are ignored. The same listing, probe and bad-file rules as
# scan_dataset, handed on as a Manifest with one pseudo-class, so the feature cache takes it unchanged.
UNLABELED_CLASS = "unlabeled"


def unlabeled_roots(data_dirs: list[Path], validation_dir: Path | None = None) -> dict[str, Path]:
    """Flag-style name -> folder: data_dirs[i] for each pretraining folder, validation_dir if given."""
    roots = {f"--data-dir {index + 1} (data.data_dirs[{index}])": Path(folder) for index, folder in enumerate(data_dirs)}
    return roots | ({"--validation-dir (data.validation_dir)": Path(validation_dir)} if validation_dir is not None else {})


def check_unlabeled_roots(roots: dict[str, Path]) -> None:
    """Each root is a folder, and no two are the same or one inside another; paths only, no listing.

    plan_pretrain runs it before any work (an error is one line there), list_unlabeled again."""
    for name, root in roots.items():
        if not root.is_dir():
            found = " is a file, not a folder" if root.exists() else ": no such folder"
            raise ScanError(f"{name} {root}{found}; pass a folder of .wav clips (searched at any depth)")
    for (first, first_root), (second, second_root) in combinations(roots.items(), 2):
        if first_root.resolve() == second_root.resolve():
            raise ScanError(
                f"{first} {first_root} and {second} {second_root} are the same folder ({first_root.resolve()}): its "
                "clips would be listed twice, or held out and trained on at once; pass each folder once, and a "
                "--validation-dir apart from the --data-dir folders"
            )
        outer, inner = sorted((first_root.resolve(), second_root.resolve()), key=lambda path: len(path.parts))
        if inner.is_relative_to(outer):
            raise ScanError(
                f"{first} {first_root} and {second} {second_root} overlap ({inner} lies in {outer}): its clips would "
                "be listed twice, or held out and trained on at once; pass folders apart from each other"
            )


def list_unlabeled(
    roots: dict[str, Path], warn: bool = True
) -> tuple[dict[str, list[Path]], dict[str, dict[str, int]]]:
    """Every clip under each root, at any depth, and what was ignored under each (counts by reason, the
    non-zero ones); the roots must exist and be apart (check_unlabeled_roots). warn: see _list_class."""
    check_unlabeled_roots(roots)
    listing, ignored = {}, {}
    for name, root in roots.items():
        counts = _ignored_counts()
        listing[name] = _list_class(str(root), counts, tuple(roots.values()), warn, UNLABELED_LINK_RISK)
        ignored[name] = {key: count for key, count in counts.items() if count}
    return listing, ignored


def fingerprint_unlabeled(roots: dict[str, Path], mode: FingerprintMode = "stat") -> str:
    """fingerprint_listing of each root (path relative to it, size, mtime[, content hash] per clip), combined.

    Quiet, as fingerprint_folders."""
    listing, _ = list_unlabeled(roots, warn=False)
    return _unlabeled_fingerprint(listing, roots, mode)


def _unlabeled_fingerprint(listing: dict[str, list[Path]], roots: dict[str, Path], mode: FingerprintMode) -> str:
    parts = [
        f"{name}\0{fingerprint_listing({'train': {UNLABELED_CLASS: paths}}, {'train': roots[name]}, mode)}"
        for name, paths in listing.items()
    ]
    return digest("\n".join(parts), 64)


# How the "holds no .wav clips" error names what a folder held instead (_ignored_counts' reasons).
IGNORED_AS = {
    "non_audio": "files not named .wav (astft reads only .wav: convert them)",
    "hidden": "hidden entries",
    "not_a_regular_file": "FIFOs, sockets or devices named .wav",
    "folder_already_scanned": "links to a folder already listed",
    "unreadable_folder": "folders it could not read (permissions?)",
    "folder_link_into_the_dataset": "links into another pretraining folder",
}


def no_clips_message(name: str, root: Path, ignored: dict[str, int]) -> str:
    """A pretraining folder without a .wav clip, and what it held that was ignored, if anything."""
    held = "; ".join(f"{count} {IGNORED_AS.get(reason, reason)}" for reason, count in ignored.items() if count)
    return f"{name} {root} holds no .wav clips (searched at any depth)" + (f"; ignored there: {held}" if held else "")


def held_out(relative_path: str, fraction: float) -> bool:
    """Whether a clip is held out: a hash of its path (relative to its folder) below `fraction`, so the split
    is the same on every machine and a clip keeps its side when clips are added or the dataset moves."""
    return int(digest(relative_path, 12), 16) < fraction * 16**12


def scan_unlabeled(
    data_dirs: list[Path],
    validation_dir: Path | None = None,
    holdout_fraction: float = 0.1,
    skip_bad_files: bool = False,
    fingerprint: FingerprintMode = "stat",
) -> Manifest:
    """Every clip under data_dirs (any depth) -> train, with validation_dir's clips, or a held-out share of
    data_dirs', as validation; one pseudo-class (labels are ignored). Bad files as in scan_dataset."""
    roots = unlabeled_roots(data_dirs, validation_dir)
    listing, ignored_by_root = list_unlabeled(roots)
    for name, paths in listing.items():
        if not paths:
            raise ScanError(no_clips_message(name, roots[name], ignored_by_root[name]))
    ignored: dict[str, int] = {}
    for counts in ignored_by_root.values():
        for key, count in counts.items():
            ignored[key] = ignored.get(key, 0) + count
    bad: list[BadFile] = []
    clips = {name: _probe_clips(paths, 0, bad) for name, paths in listing.items()}
    _stop_or_skip(bad, skip_bad_files)
    validation_name = next((name for name in roots if name.startswith("--validation-dir")), None)
    train, validation = [], clips.pop(validation_name) if validation_name else []
    for name, found in clips.items():
        for clip in found:
            relative = Path(clip.path).relative_to(roots[name]).as_posix()
            (validation if validation_name is None and held_out(relative, holdout_fraction) else train).append(clip)
    if validation_name is None and not validation and len(train) > 1:
        validation.append(train.pop())  # too few clips for the fraction to pick one: hold out the last
    for split, found in (("train", train), ("validation", validation)):
        if not found:
            raise ScanError(
                f"no usable {split} clips for pretraining ({len(bad)} bad files skipped); "
                + ("add clips to the data folders" if split == "train" else "add clips, or pass --validation-dir")
            )
    listing_fingerprint = _unlabeled_fingerprint(listing, roots, fingerprint)
    return Manifest(
        train_dir=str(roots[next(iter(roots))]),
        validation_dir=str(roots[validation_name]) if validation_name else str(roots[next(iter(roots))]),
        label_names=[UNLABELED_CLASS],
        train=train,
        validation=validation,
        fingerprint=digest(
            f"{listing_fingerprint}|holdout={None if validation_name else holdout_fraction}|"
            f"skipped={sorted(b.path for b in bad)}",
            64,
        ),
        ignored=ignored,
        skipped=bad,
    )


def format_bad_files(bad: dict[str, str], during: str | None = None, setting: str = "data.skip_bad_files") -> str:
    """The one message for clips that cannot be used (scan, features, prediction): each with its reason, and the fix."""
    lines = [f"{len(bad)} bad audio file(s) found" + (f" while {during}:" if during else ":")]
    lines += [f"  - {path}: {reason}" for path, reason in bad.items()]
    lines.append(f"Fix or remove them, or pass --skip-bad-files ({setting}=true) to skip them.")
    return "\n".join(lines)
