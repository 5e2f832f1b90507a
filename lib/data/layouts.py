"""Dataset layouts -> Listing: which clip is in which split under which label, from the dataset's own files.

- folders: train_dir/<class>/, validation_dir/<class>/ (lib.data.scan.list_folders);
- speech_commands: <root>/<word>/*.wav; validation_list.txt and testing_list.txt (paths relative to the root)
  name the validation and test clips, every other clip is train; _background_noise_/ is not a class;
- esc50: <root>/audio/*.wav and <root>/meta/esc50.csv (filename, fold, target, category, ...), label = category,
  folds 1..5;
- urbansound8k: <root>/audio/fold<N>/<slice_file_name> and <root>/metadata/UrbanSound8K.csv (slice_file_name,
  fsID, start, end, salience, fold, classID, class), label = class, folds 1..10;
- csv: a manifest of path, label and split or fold columns (names configurable), paths relative to its folder.

A dataset of folds validates on data.fold (default the last) and trains on the others; data.folds cuts folds from
a dataset that has none; a cross-validation scans every fold at once (Folds.all_folds). Manifest rows are named
by file and line in every error; a row naming a file that is not there is a bad file (skipped only with
data.skip_bad_files), every other bad row stops the scan.

The folds themselves (a dataset's own, or cut by data.folds) are lib.data.folds.
"""

from __future__ import annotations

import os
from pathlib import Path

from lib.config import DataConfig
from lib.core.errors import ScanError, display_path
from lib.data.folds import Folds, rows_to_folds, sorted_classes, stratified_folds
from lib.data.manifests import (
    NAME_COLUMNS,
    OWN_FILE,
    Row,
    cell,
    check_one_label_per_id,
    check_rows,
    csv_header,
    fold_number,
    fold_range,
    read_csv,
    read_list_file,
    warn_joined_labels,
)
from lib.data.scan import (
    SPLITS,
    TEST_SPLIT,
    BadFile,
    FingerprintMode,
    Listing,
    Manifest,
    fingerprint_found,
    ignored_counts,
    list_class,
    list_folders,
    scan_listing,
)

SPEECH_COMMANDS_LISTS = {"validation": "validation_list.txt", TEST_SPLIT: "testing_list.txt"}
SPEECH_COMMANDS_NOISE = "_background_noise_"
ESC50_MANIFEST = "meta/esc50.csv"
ESC50_FOLDS = range(1, 6)
URBANSOUND8K_MANIFEST = "metadata/UrbanSound8K.csv"
URBANSOUND8K_FOLDS = range(1, 11)
CSV_DEFAULT_NAME = "metadata.csv"  # Hugging Face audiofolder's manifest name
CSV_SPLITS = (*SPLITS, TEST_SPLIT)


def list_dataset(data: DataConfig, warn: bool = True, multi_label: bool = False) -> Listing:
    """The listing data.layout describes: its split, or with folds, data.fold (default the last) validating and
    the others training (warn: see lib.data.scan.list_class; multi_label: a csv cell may hold several labels, and a
    clip may have a row per label)."""
    folds = dataset_folds(data, warn, multi_label)
    return list_splits(data, warn, multi_label) if folds is None else folds.choose(data.fold)


def default_fold(data: DataConfig, multi_label: bool = False) -> int | None:
    """The fold a run validates on: data.fold, else the dataset's last (ESC-50 5, UrbanSound8K 10, data.folds K, a
    csv's highest), else None (a dataset of one split)."""
    fixed = {"esc50": ESC50_FOLDS, "urbansound8k": URBANSOUND8K_FOLDS}.get(data.layout)
    if data.fold is not None and fixed is not None and data.fold not in fixed:
        raise ScanError(f"data.fold (--fold) {data.fold}: {data.layout} has folds {fold_range(list(fixed))}; "
                        "choose one of them")
    if data.fold is not None:
        return data.fold
    if fixed is not None and not data.folds:
        return fixed[-1]
    if data.folds or (data.layout == "csv" and csv_has_folds(data)):
        return dataset_folds(data, warn=False, multi_label=multi_label).known[-1]
    return None


def list_splits(data: DataConfig, warn: bool = True, multi_label: bool = False) -> Listing:
    """The split the dataset's files give (train, validation, and test where it has one), folds aside."""
    if data.layout == "folders":
        return list_folders(data.train_dir, data.validation_dir, data.test_dir, warn)
    if data.layout == "speech_commands":
        return speech_commands(Path(data.root), warn)
    if data.layout == "csv":
        rows, manifest, base = csv_rows(data, by_split=True, multi_label=multi_label, warn=warn)
        return split_listing(rows, manifest, base, multi_label)
    raise ScanError(f"layout {data.layout} has folds, not a split")  # esc50, urbansound8k: dataset_folds


def dataset_folds(data: DataConfig, warn: bool = True, multi_label: bool = False) -> Folds | None:
    """The dataset's folds: its own (esc50, urbansound8k, a csv with a fold column but no split column, or with
    data.fold set), or data.folds cut from its train and validation clips; None for a dataset of one split."""
    if data.layout == "esc50":
        folds = esc50(Path(data.root))
    elif data.layout == "urbansound8k":
        folds = urbansound8k(Path(data.root))
    elif data.layout == "csv" and csv_has_folds(data):
        rows, manifest, base = csv_rows(data, by_split=False, multi_label=multi_label, warn=warn)
        source = f"{display_path(manifest)}'s {data.fold_column} column"
        folds = rows_to_folds(rows, manifest, "csv", None, base, source, multi_label)
    else:
        return stratified_folds(list_splits(data, warn, multi_label), data.folds, multi_label) if data.folds else None
    if data.folds:
        raise ScanError(
            f"data.folds {data.folds}: the {data.layout} dataset has folds of its own ({fold_range(folds.known)}, "
            f"{folds.source}); remove data.folds to use them"
        )
    return folds


def scan_data(data: DataConfig, multi_label: bool = False) -> Manifest:
    """Scan the dataset data describes: list it, check it, read each clip's header."""
    found = list_dataset(data, multi_label=multi_label)
    return scan_listing(found, data.quick_subsample, data.skip_bad_files, data.fingerprint, multi_label)


def fingerprint_data(data: DataConfig, mode: FingerprintMode | None = None, multi_label: bool = False) -> str:
    """The listing's fingerprint (lib.data.scan.fingerprint_found), quietly: the scan that follows warns."""
    return fingerprint_found(list_dataset(data, warn=False, multi_label=multi_label), mode or data.fingerprint)


def dataset_folders(data: DataConfig) -> list[Path]:
    """The folders (and manifest) a run reads its clips from: the split folders, or the dataset's root."""
    if data.layout == "folders":
        return [folder for folder in (data.train_dir, data.validation_dir, data.test_dir) if folder is not None]
    return [Path(data.root)]


# --- Speech Commands -------------------------------------------------------------------------------------------


def speech_commands(root: Path, warn: bool = True) -> Listing:
    """Speech Commands (v1 or v2) as downloaded: word folders, split by its two list files."""
    require_folder(root, "speech_commands", "the folder holding the word folders and validation_list.txt")
    ignored = ignored_counts()
    by_relative: dict[str, tuple[str, Path]] = {}
    words: list[str] = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_dir() or entry.name.startswith("_"):
            continue  # LICENSE, README.md, the list files, _background_noise_: not classes
        words.append(entry.name)
        for path in list_class(entry.path, ignored, (root,), warn):
            by_relative[path.relative_to(root).as_posix()] = (entry.name, path)
    assigned: dict[str, tuple[str, str, int]] = {}  # relative path -> (split, list file, line)
    missing: list[BadFile] = []
    for split, name in SPEECH_COMMANDS_LISTS.items():
        list_file = root / name
        for line, entry in read_list_file(list_file):
            where = f"{display_path(list_file)} line {line}"
            if entry in assigned:
                raise ScanError(
                    f"{where}: {entry} is listed already ({assigned[entry][1]} line {assigned[entry][2]}); a clip "
                    "belongs to one split: remove the repeated line"
                )
            assigned[entry] = (split, name, line)
            if entry not in by_relative:
                if (root / entry).is_file():
                    raise ScanError(
                        f"{where}: {entry} is not a clip of a word folder (a .wav under <root>/<word>/); fix the line"
                    )
                missing.append(BadFile(path=display_path(root / entry), reason=f"listed in {where} but not there"))
    classes: dict[str, dict[str, list[Path]]] = {split: {} for split in (*SPLITS, TEST_SPLIT)}
    for relative, (word, path) in sorted(by_relative.items()):
        split = assigned.get(relative, ("train",))[0]
        classes[split].setdefault(word, []).append(path)
    noise = root / SPEECH_COMMANDS_NOISE
    counts = {split: sum(len(paths) for paths in classes[split].values()) for split in classes}
    return Listing(
        classes=classes, roots=dict.fromkeys(classes, root), ignored=ignored, layout="speech_commands",
        missing=missing, noise_dir=noise if noise.is_dir() else None,
        note=(
            f"speech_commands: {len(words)} words; {counts['train']} train, {counts['validation']} validation "
            f"({SPEECH_COMMANDS_LISTS['validation']}) and {counts[TEST_SPLIT]} test clips "
            f"({SPEECH_COMMANDS_LISTS[TEST_SPLIT]}); {SPEECH_COMMANDS_NOISE}/ is background noise, not a class"
        ),
    )


# --- manifests: ESC-50, UrbanSound8K, any CSV -------------------------------------------------------------------


def esc50(root: Path) -> Folds:
    """ESC-50 as downloaded: audio/*.wav, labels and folds 1..5 from meta/esc50.csv."""
    require_folder(root, "esc50", "the folder holding audio/ and meta/esc50.csv")
    manifest = root / ESC50_MANIFEST
    rows = [
        Row(where, root / "audio" / cell(row, "filename", where), cell(row, "category", where),
            fold=fold_number(row, "fold", where, ESC50_FOLDS))
        for where, row in read_csv(manifest, ("filename", "fold", "target", "category"), OWN_FILE)
    ]
    check_one_label_per_id(read_csv(manifest, ("target", "category"), OWN_FILE), "target", "category")
    return rows_to_folds(rows, manifest, "esc50", ESC50_FOLDS, root, f"{display_path(manifest)}'s fold column")


def urbansound8k(root: Path) -> Folds:
    """UrbanSound8K as downloaded: audio/fold<N>/*.wav, labels and folds 1..10 from metadata/UrbanSound8K.csv."""
    require_folder(root, "urbansound8k", "the folder holding audio/fold1..fold10 and metadata/UrbanSound8K.csv")
    manifest = root / URBANSOUND8K_MANIFEST
    rows = []
    for where, row in read_csv(manifest, ("slice_file_name", "fold", "classID", "class"), OWN_FILE):
        number = fold_number(row, "fold", where, URBANSOUND8K_FOLDS)
        rows.append(Row(where, root / "audio" / f"fold{number}" / cell(row, "slice_file_name", where),
                        cell(row, "class", where), fold=number))
    check_one_label_per_id(read_csv(manifest, ("classID", "class"), OWN_FILE), "classID", "class")
    return rows_to_folds(
        rows, manifest, "urbansound8k", URBANSOUND8K_FOLDS, root, f"{display_path(manifest)}'s fold column"
    )


def csv_path(data: DataConfig) -> Path:
    """The manifest data.root names: the .csv itself, or a folder's metadata.csv."""
    root = Path(data.root)
    manifest = root / CSV_DEFAULT_NAME if root.is_dir() else root
    if not manifest.is_file():
        raise ScanError(
            f"data.root (--root) {display_path(root)}: no such CSV file" + (
                f" (a folder must hold {CSV_DEFAULT_NAME})" if root.is_dir() else "") +
            "; point it at the manifest, a .csv with a path and a label column"
        )
    return manifest


def csv_has_folds(data: DataConfig) -> bool:
    """Whether a csv manifest is read by its fold column: it has no split column, or data.fold asks for one of its
    folds (with data.folds, the folds are cut from its split column's train and validation rows)."""
    manifest = csv_path(data)
    header = csv_header(manifest)
    by_split = data.split_column in header and (data.fold is None or data.folds is not None)
    if not by_split and data.fold_column not in header:
        if data.folds is not None:
            raise ScanError(
                f"data.folds {data.folds} cuts folds from a manifest's train and validation rows (its "
                f"{data.split_column!r} column), and {display_path(manifest)} has no such column (its columns are "
                f"{header}): add one, or name yours with data.split_column"
            )
        if data.fold is not None:
            raise ScanError(
                f"data.fold (--fold) {data.fold} is set but {display_path(manifest)} has no {data.fold_column!r} "
                f"column (its columns are {header}): remove data.fold to use its split column, or name the fold "
                "column with data.fold_column"
            )
        raise ScanError(
            f"{display_path(manifest)} has no {data.split_column!r} column (train/validation/test per row) and no "
            f"{data.fold_column!r} column (fold numbers); its columns are {header}: add one, or name yours with "
            "data.split_column / data.fold_column"
        )
    return not by_split


def csv_rows(data: DataConfig, by_split: bool, multi_label: bool = False, warn: bool = True
             ) -> tuple[list[Row], Path, Path]:
    """(rows, manifest, the folder its paths are relative to) of a csv manifest, by split or by fold; multi_label:
    a row per label of a cell holding several (data.label_separator); warn: of labels that look joined (the scan
    warns, a listing made for a cache key or the plan does not)."""
    manifest = csv_path(data)
    base = manifest.parent
    rows = []
    for where, row in read_csv(manifest, (data.path_column, data.label_column), NAME_COLUMNS):
        path = Path(cell(row, data.path_column, where).replace("\\", "/"))  # a manifest written on Windows
        path = path if path.is_absolute() else base / path
        labels = [cell(row, data.label_column, where)]
        if multi_label:
            labels = [label.strip() for label in labels[0].split(data.label_separator) if label.strip()]
            if not labels:
                raise ScanError(f"{where}: the {data.label_column!r} column holds no label, only "
                                f"{data.label_separator!r}; fill it in, or remove the row")
            if repeated := sorted({label for label in labels if labels.count(label) > 1}):
                raise ScanError(f"{where}: the {data.label_column!r} column names {repeated[0]!r} twice; remove one")
        if by_split:
            given = cell(row, data.split_column, where)
            split = given.lower()
            if split not in CSV_SPLITS:
                raise ScanError(
                    f"{where}: {data.split_column} {given!r} is not one of {', '.join(CSV_SPLITS)}; fix the row"
                )
            rows += [Row(where, path, label, split=split) for label in labels]
        else:
            fold = fold_number(row, data.fold_column, where)
            rows += [Row(where, path, label, fold=fold) for label in labels]
    if warn:
        warn_joined_labels(rows, multi_label, data.label_separator)
    return rows, manifest, base


def split_listing(rows: list[Row], manifest: Path, base: Path, multi_label: bool = False) -> Listing:
    """The listing of a manifest whose rows name their split."""
    missing = check_rows(rows, multi_label)
    classes: dict[str, dict[str, list[Path]]] = {split: {} for split in CSV_SPLITS}
    for row in rows:
        if row.path.is_file():
            classes[row.split].setdefault(row.label, []).append(row.path)
    if not any(classes[TEST_SPLIT].values()):
        del classes[TEST_SPLIT]
    for split in SPLITS:
        if not any(rows for rows in classes[split].values()) and not missing:
            raise ScanError(f"{display_path(manifest)} has no {split} rows; every run needs train and validation clips")
    return Listing(
        classes=sorted_classes(classes), roots=dict.fromkeys(classes, base), ignored=ignored_counts(), layout="csv",
        missing=missing, note=f"csv: {display_path(manifest)}, split by its split column",
    )


def require_folder(root: Path, layout: str, what: str) -> None:
    if not root.is_dir():
        raise ScanError(f"data.root (--root) {display_path(root)}: no such folder; for layout {layout} it is {what}")
