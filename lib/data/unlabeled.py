"""Unlabeled folders -> Manifest for pretraining: clips at any depth, one pseudo-class, a held-out share by hash."""

from __future__ import annotations

import logging
from itertools import combinations
from pathlib import Path

from lib.core.errors import ScanError
from lib.core.hashing import digest
from lib.data.scan import (
    BadFile,
    FingerprintMode,
    Manifest,
    fingerprint_listing,
    ignored_counts,
    list_class,
    no_clips_message,
    probe_clips,
    stop_or_skip,
)

logger = logging.getLogger(__name__)

# Fewer held-out clips than this make the per-epoch masked-patch accuracy (which picks the best epoch) noisy.
MIN_HELD_OUT_CLIPS = 8


UNLABELED_LINK_RISK = (
    "inside another pretraining folder (a --data-dir or the --validation-dir), whose clips would be listed twice, "
    "or validated on and trained on at once"
)


def unlabeled_roots(data_dirs: list[Path], validation_dir: Path | None = None) -> dict[str, Path]:
    """Flag-style name -> folder: data_dirs[i] for each pretraining folder, validation_dir if given."""
    roots = {
        f"--data-dir {index + 1} (data.data_dirs[{index}])": Path(folder) for index, folder in enumerate(data_dirs)
    }
    if validation_dir is not None:
        roots["--validation-dir (data.validation_dir)"] = Path(validation_dir)
    return roots


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
    non-zero ones); the roots must exist and be apart (check_unlabeled_roots). warn: see list_class."""
    check_unlabeled_roots(roots)
    listing, ignored = {}, {}
    for name, root in roots.items():
        counts = ignored_counts()
        listing[name] = list_class(str(root), counts, tuple(roots.values()), warn, UNLABELED_LINK_RISK)
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
    clips = {name: probe_clips(paths, [[0]] * len(paths), bad) for name, paths in listing.items()}
    stop_or_skip(bad, skip_bad_files)
    validation_name = next((name for name in roots if name.startswith("--validation-dir")), None)
    train, validation = [], clips.pop(validation_name) if validation_name else []
    for name, found in clips.items():
        for clip in found:
            relative = Path(clip.path).relative_to(roots[name]).as_posix()
            (validation if validation_name is None and held_out(relative, holdout_fraction) else train).append(clip)
    if validation_name is None and not validation and len(train) > 1:
        validation.append(train.pop())  # too few clips for the fraction to pick one: hold out the last
    if validation_name is None and 0 < len(validation) < MIN_HELD_OUT_CLIPS:
        total = len(train) + len(validation)
        logger.warning(
            "data.holdout_fraction=%g holds out only %d of %d clips (%.0f%%) for validation; fewer than %d make the "
            "masked-patch accuracy that picks the best epoch noisy, and these clips are not trained on: add clips, "
            "or pass --validation-dir (data.validation_dir) with a folder of held-out clips",
            holdout_fraction, len(validation), total, 100 * len(validation) / total, MIN_HELD_OUT_CLIPS,
        )
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


# Pretraining: folders of clips whose labels are ignored. The same listing, probe and bad-file rules as
# scan_dataset, handed on as a Manifest with one pseudo-class, so the feature cache takes it unchanged.
UNLABELED_CLASS = "unlabeled"
