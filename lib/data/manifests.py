"""Reading a dataset's own files, every problem named by file and line: CSV manifests (rows, cells, fold numbers,
class ids) and Speech Commands' list files; the rows as Row, and which of them name no file (check_rows)."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lib.core.errors import ScanError, display_path
from lib.data.audio import AUDIO_SUFFIXES
from lib.data.scan import BadFile

logger = logging.getLogger(__name__)

# The fix read_csv names for a column a file lacks: a dataset's own file, or a manifest whose columns are settings.
OWN_FILE = "is it the dataset's own file?"
NAME_COLUMNS = "name yours with data.path_column / data.label_column"


@dataclass(frozen=True)
class Row:
    """One manifest row: where it is (file, line), its clip, its label, and its split or fold."""

    where: str
    path: Path
    label: str
    split: str | None = None
    fold: int | None = None


def read_list_file(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, relative path) of each non-blank line of a Speech Commands list file."""
    if not path.is_file():
        raise ScanError(
            f"{display_path(path)} is missing: a speech_commands root holds validation_list.txt and testing_list.txt "
            "as the download has them; point data.root (--root) at that folder"
        )
    with open(path, encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            if entry := text.strip():
                yield line, entry.replace("\\", "/").removeprefix("./")


def check_rows(rows: list[Row], multi_label: bool = False) -> list[BadFile]:
    """Refuse a path listed twice (multi_label: twice with one label, or in two splits or folds); the rows naming
    files that are not there, as bad files."""
    first: dict[object, str] = {}
    placed: dict[str, Row] = {}
    missing = []
    for row in rows:
        path = os.path.normpath(row.path)
        key = (path, row.label) if multi_label else path
        if key in first:
            raise ScanError(
                f"{row.where}: {display_path(row.path)} is listed already ({first[key]}); a clip belongs to one "
                + ("split and has each label once" if multi_label else "split and one label")
                + ": remove the repeated row"
            )
        first[key] = row.where
        other = placed.setdefault(path, row)
        if (other.split, other.fold) != (row.split, row.fold):
            raise ScanError(
                f"{row.where}: {display_path(row.path)} is in {where_placed(row)} here but in {where_placed(other)} at "
                f"{other.where}; a clip belongs to one split: fix the row"
            )
        if other is not row:
            continue  # a multi-label clip's further label: its file was checked with the first
        if row.path.is_dir():
            raise ScanError(f"{row.where}: {display_path(row.path)} is a folder, not a clip; fix the row")
        if not row.path.is_file():
            missing.append(BadFile(path=display_path(row.path), reason=f"listed in {row.where} but not there"))
        elif row.path.suffix.lower() not in AUDIO_SUFFIXES:
            raise ScanError(
                f"{row.where}: {display_path(row.path)} is not a .wav, .flac, .ogg or .mp3 file; convert it, or "
                "remove the row"
            )
    return missing


def where_placed(row: Row) -> str:
    return f"split {row.split}" if row.split is not None else f"fold {row.fold}"


def read_csv(path: Path, required: tuple[str, ...], fix: str) -> Iterator[tuple[str, dict[str, str]]]:
    """("<file> line N", row) of each data row; the header must name every required column (else fix says what
    to do)."""
    header = csv_header(path)
    if absent := [name for name in required if name not in header]:
        raise ScanError(
            f"{display_path(path)} has no column {', '.join(map(repr, absent))} (its columns: {header}); {fix}"
        )
    with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: a spreadsheet's byte-order mark
        reader = csv.DictReader(handle)
        for row in reader:
            if any((value or "").strip() for value in row.values() if isinstance(value, str)):  # blank lines: no rows
                # "file_name, label": a hand-written header's spaces are not part of the names
                yield f"{display_path(path)} line {reader.line_num}", {
                    (key or "").strip(): value for key, value in row.items() if isinstance(value, str)}


def csv_header(path: Path) -> list[str]:
    if not path.is_file():
        raise ScanError(
            f"{display_path(path)} is missing; data.root (--root) must be the dataset's folder as downloaded"
        )
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return [name.strip() for name in next(csv.reader(handle), [])]
    except UnicodeDecodeError as error:
        raise ScanError(f"{display_path(path)} is not UTF-8 text ({error}); save it as UTF-8 CSV") from error


def cell(row: dict[str, str], column: str, where: str) -> str:
    value = (row.get(column) or "").strip()
    if not value:
        raise ScanError(f"{where}: the {column!r} column is empty; fill it in, or remove the row")
    return value


def fold_number(row: dict[str, str], column: str, where: str, folds: range | None = None) -> int:
    text = cell(row, column, where)
    try:
        number = int(text)
    except ValueError:
        raise ScanError(f"{where}: {column} {text!r} is not a fold number; fix the row") from None
    if folds is not None and number not in folds:
        raise ScanError(
            f"{where}: {column} {number} is outside the dataset's folds {fold_range(list(folds))}; fix the row"
        )
    return number


def check_one_label_per_id(rows: Iterator[tuple[str, dict[str, str]]], id_column: str, label_column: str) -> None:
    """A class id that names two classes (or a class with two ids) means the manifest was edited wrongly."""
    seen: dict[str, tuple[str, str]] = {}
    for where, row in rows:
        ident, label = (row.get(id_column) or "").strip(), (row.get(label_column) or "").strip()
        for key, value, other in ((f"id {ident}", label, label_column), (f"class {label}", ident, id_column)):
            if key in seen and seen[key][0] != value:
                raise ScanError(
                    f"{where}: {key} has {other} {value!r} here but {seen[key][0]!r} at {seen[key][1]}; fix the row"
                )
            seen.setdefault(key, (value, where))


# Characters that join several labels in a manifest's cell, when its labels look joined (warn_joined_labels).
JOINERS = (",", ";", "|", "/")


def warn_joined_labels(rows: list[Row], multi_label: bool, separator: str) -> None:
    """Warn of a label that is other labels of the manifest joined ("dog;bark" beside "dog" and "bark"): a
    multi-label manifest read with another data.label_separator, or one read single-label."""
    names = {row.label for row in rows}
    for name in sorted(names):
        for joiner in (joiner for joiner in JOINERS if joiner in name and not (multi_label and joiner == separator)):
            parts = [part.strip() for part in name.split(joiner)]
            if all(part in names for part in parts):
                fix = (f"set data.label_separator to {joiner!r}" if multi_label else
                       "if a clip has several labels, train multi-label: --task multi_label"
                       + (f" with data.label_separator {joiner!r}" if joiner != "," else ""))
                where = next(row.where for row in rows if row.label == name)
                logger.warning("the label %r looks like the labels %s joined by %r (%s); %s", name,
                               ", ".join(map(repr, parts)), joiner, where, fix)
                break


def fold_range(folds: list[int]) -> str:
    """1-4 for consecutive folds, else 1, 3, 5."""
    if len(folds) > 2 and folds == list(range(folds[0], folds[-1] + 1)):
        return f"{folds[0]}-{folds[-1]}"
    return ", ".join(map(str, folds))
