"""Multi-label clips (model.task multi_label): which listed files are one clip, with which labels, and that the
files taken as one clip hold one recording. The scan (lib.data.scan) and the folds (lib.data.layouts) group by it."""

from __future__ import annotations

import filecmp
import os
from pathlib import Path

from lib.core.errors import ScanError, display_path


def clip_identity(path: Path, label: str, class_root: Path | None) -> str:
    """What makes two listed files one multi-label clip. Class folders (class_root: the folder holding them, or one
    above): the path below class_root without its class folder, the first folder of the label's name there
    (train/dog/a.wav and train/bark/a.wav are both a.wav). Otherwise (class_root None): its path, as a manifest's
    rows naming one file."""
    if class_root is None:
        return os.path.normpath(path)
    parts = Path(os.path.relpath(path, class_root)).parts
    if label in parts[:-1]:
        index = parts.index(label)
        parts = parts[:index] + parts[index + 1:]
    return os.path.normpath(Path(*parts))


def multi_label_clips(classes: dict[str, list[Path]], class_root: Path | None) -> list[tuple[list[Path], list[str]]]:
    """(its files, its labels) of each multi-label clip of a split, in identity order (clip_identity); a clip in
    several class folders is read from the first of its files (copies or links of one recording:
    check_one_recording)."""
    grouped: dict[str, tuple[list[Path], list[str]]] = {}
    for label, paths in sorted(classes.items()):
        for path in paths:
            files, labels = grouped.setdefault(clip_identity(path, label, class_root), ([], []))
            files.append(path)
            labels.append(label)
    return [grouped[key] for key in sorted(grouped)]


def check_one_recording(grouped: list[tuple[list[Path], list[str]]]) -> None:
    """Files taken as one multi-label clip must hold one recording (links, or copies with the same bytes): per-class
    numbering (0001.wav in every class folder) would otherwise merge different recordings under every label."""
    for files, labels in grouped:
        for other, label in zip(files[1:], labels[1:], strict=True):
            try:  # one file (a link), or copies with the same bytes
                same = os.path.samefile(files[0], other) or filecmp.cmp(files[0], other, shallow=False)
            except OSError:  # unreadable or a dangling link: the header probe reports it as a bad file
                continue
            if not same:
                raise ScanError(
                    f"{display_path(files[0])} and {display_path(other)} have one name in the class folders "
                    f"{labels[0]!r} and {label!r}, so a multi-label scan takes them for one clip with both labels, "
                    "but they are different recordings: rename one (a clip of several labels is one file copied or "
                    "linked into the folder of each), or train single-label (without --task multi_label)"
                )
