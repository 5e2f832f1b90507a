"""A dataset's clips by fold (Folds), its own folds or data.folds cut from its split, and one fold chosen to validate
on or every fold at once (a cross-validation's manifest).

Cut folds are stratified by class (scikit-learn's StratifiedKFold), or for multi-label clips by iterative
stratification (iterative_folds), with a fixed seed: every run of a dataset sees the same folds.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lib.core.errors import ScanError, display_path
from lib.data.manifests import Row, check_rows, fold_range
from lib.data.multilabel import multi_label_clips
from lib.data.scan import SPLITS, TEST_SPLIT, BadFile, Listing, ignored_counts


@dataclass
class Folds:
    """A dataset's clips by fold, before a fold is chosen to validate on."""

    by_fold: dict[int, dict[str, list[Path]]]  # fold -> label -> sorted clip paths
    known: list[int]  # the dataset's folds (ESC-50: 1..5, whatever its CSV holds)
    source: str  # where the folds come from, as messages name it
    layout: str
    root: Path
    missing: list[BadFile] = field(default_factory=list)
    ignored: dict[str, int] = field(default_factory=ignored_counts)
    test: dict[str, list[Path]] = field(default_factory=dict)  # held out of every fold (Speech Commands' test list)
    noise_dir: Path | None = None

    @property
    def present(self) -> list[int]:
        return sorted(self.by_fold)

    def check(self, fold: int) -> None:
        if fold not in self.by_fold:
            raise ScanError(f"data.fold (--fold) {fold}: {self.source} has folds {fold_range(self.present)}; "
                            "choose one of them")

    def choose(self, fold: int | None) -> Listing:
        """fold (default the dataset's last) validates, the others train; test stays test."""
        chosen = fold if fold is not None else self.known[-1]
        self.check(chosen)
        classes: dict[str, dict[str, list[Path]]] = {split: {} for split in SPLITS}
        for number, labels in self.by_fold.items():
            for label, paths in labels.items():
                classes["validation" if number == chosen else "train"].setdefault(label, []).extend(paths)
        trained = [number for number in self.present if number != chosen]
        how = "data.fold" if fold is not None else "the last fold; data.fold picks another"
        listing = self._listing(classes, (
            f"{self.layout}: validating on fold {chosen} ({how}), training on folds {fold_range(trained)}; the "
            f"protocol's figure is the mean over all {len(self.present)} folds (astft crossval)"
        ))
        listing.fold = chosen
        return listing

    def all_folds(self) -> Listing:
        """Every fold as its own split, fold-<N> (and test): what cross-validation scans once."""
        classes = {fold_split(number): labels for number, labels in sorted(self.by_fold.items())}
        return self._listing(classes, f"{self.layout}: {len(classes)} folds from {self.source}")

    def _listing(self, classes: dict[str, dict[str, list[Path]]], note: str) -> Listing:
        if any(self.test.values()):
            classes[TEST_SPLIT] = self.test
        return Listing(
            classes=sorted_classes(classes), roots=dict.fromkeys(classes, self.root), ignored=self.ignored,
            layout=self.layout, missing=self.missing, note=note, noise_dir=self.noise_dir,
        )


FOLD_PREFIX = "fold-"


def fold_split(number: int) -> str:
    """The split name of a fold in a cross-validation manifest and feature cache: fold-3."""
    return f"{FOLD_PREFIX}{number}"


def rows_to_folds(
    rows: list[Row], manifest: Path, layout: str, folds: range | None, base: Path, source: str,
    multi_label: bool = False,
) -> Folds:
    """A manifest's rows by fold (its fold column)."""
    missing = check_rows(rows, multi_label)
    if not rows:
        raise ScanError(f"{display_path(manifest)} has no rows")
    by_fold: dict[int, dict[str, list[Path]]] = {}
    for row in rows:
        labels = by_fold.setdefault(row.fold, {})
        if row.path.is_file():
            labels.setdefault(row.label, []).append(row.path)
    present = sorted(by_fold)
    return Folds(by_fold=by_fold, known=list(folds) if folds is not None else present, source=source,
                 layout=layout, root=base, missing=missing)


# Folds cut by data.folds do not depend on the training seed: every run of a dataset sees the same folds.
FOLD_SEED = 0


def stratified_folds(listing: Listing, count: int, multi_label: bool = False) -> Folds:
    """count folds of a dataset's train and validation clips together, stratified by class (scikit-learn's
    StratifiedKFold, shuffled with FOLD_SEED; a multi-label clip goes to one fold with all its labels, by
    iterative_folds); its test clips stay test."""
    from sklearn.model_selection import StratifiedKFold

    # a unit is what goes to one fold: (path, label) of a clip, or of each of a multi-label clip's labels
    if multi_label:
        units = [list(zip(paths, labels, strict=True)) for split in SPLITS
                 for paths, labels in multi_label_clips(
                     listing.classes[split], listing.roots[split] if listing.layout == "folders" else None)]
    else:
        units = [[entry] for entry in sorted((path, label) for split in SPLITS
                                             for label, paths in listing.classes[split].items() for path in paths)]
    counts = Counter(label for unit in units for _, label in unit)
    smallest = min(counts, key=lambda label: (counts[label], label)) if counts else None
    if smallest is None or counts[smallest] < count:
        raise ScanError(
            f"data.folds {count}: the smallest class, {smallest!r}, has {counts[smallest]} clips, fewer than "
            "the folds; a fold would validate without it: lower data.folds"
        )
    if multi_label:
        fold_of = iterative_folds([{label for _, label in unit} for unit in units], count)
    else:
        splitter = StratifiedKFold(n_splits=count, shuffle=True, random_state=FOLD_SEED)
        fold_of = [0] * len(units)
        for number, (_, held_out) in enumerate(splitter.split([[0]] * len(units), [u[0][1] for u in units])):
            for index in held_out:
                fold_of[index] = number
    by_fold: dict[int, dict[str, list[Path]]] = {}
    for unit, number in zip(units, fold_of, strict=True):
        for path, label in unit:
            by_fold.setdefault(number + 1, {}).setdefault(label, []).append(path)
    by_fold = dict(sorted(by_fold.items()))
    root = next(iter(listing.roots.values()))
    return Folds(
        by_fold=by_fold, known=list(range(1, count + 1)),
        source=f"data.folds {count} (train and validation clips, stratified by "
               + ("label, iteratively" if multi_label else "class") + f", seed {FOLD_SEED})",
        layout=listing.layout, root=root if not listing.folders else Path(os.path.commonpath(
            [listing.roots[split] for split in SPLITS])),
        missing=listing.missing, ignored=listing.ignored, test=listing.classes.get(TEST_SPLIT, {}),
        noise_dir=listing.noise_dir,
    )


def iterative_folds(labels: list[set[str]], count: int, seed: int = FOLD_SEED) -> list[int]:
    """The fold (0..count-1) of each multi-label clip (its set of labels), by iterative stratification (Sechidis,
    Tsoumakas and Vlahavas, 2011): the label with the fewest clips left to place goes first, each of its clips to the
    fold that lacks that label most (then clips overall), so that every label of at least `count` clips reaches every
    fold. Written here: scikit-learn stratifies by one label per clip, and a label that comes with others would be
    left to chance (and scikit-multilearn, which has it, is not a dependency)."""
    rng = np.random.default_rng(seed)
    totals = Counter(label for clip in labels for label in clip)
    wanted = {label: np.full(count, total / count) for label, total in totals.items()}
    room = np.full(count, len(labels) / count)
    fold_of = [-1] * len(labels)
    unplaced = set(range(len(labels)))
    while unplaced:
        left = Counter(label for index in unplaced for label in labels[index])
        label = min(left, key=lambda name: (left[name], name))
        clips = sorted(index for index in unplaced if label in labels[index])
        for index in rng.permutation(clips):
            fold = max(range(count), key=lambda number: (wanted[label][number], room[number], -number))
            fold_of[index] = fold
            unplaced.discard(index)
            room[fold] -= 1
            for other in labels[index]:
                wanted[other][fold] -= 1
    return fold_of


def sorted_classes(classes: dict[str, dict[str, list[Path]]]) -> dict[str, dict[str, list[Path]]]:
    return {split: {label: sorted(paths) for label, paths in sorted(by.items())} for split, by in classes.items()}
