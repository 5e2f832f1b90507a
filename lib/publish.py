"""Publish a member folder under <output>/best/<name>/, replacing an earlier one safely.

The new member is assembled completely in a staging folder beside the destination, then moved in
by rename. POSIX has no atomic swap of two non-empty folders, so the old member is first renamed
to a backup name and deleted only after the new one is in place; if a crash happens between those
two renames, the next publish (or recover_member) restores the backup. At no point is a
half-written member visible under the final name.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)

# Trainer's pickled arguments: not needed to load the member, and a pickle is unsafe to hand out.
_NOT_PUBLISHED = shutil.ignore_patterns("training_args.bin")


def _finalise_tree(path: Path) -> None:
    """fsync every file, and make them readable by the group/others the umask allows.

    (save_pretrained writes model.safetensors with mode 0600; published members are read by other
    users and workers sharing the output folder.)
    """
    umask = os.umask(0)
    os.umask(umask)
    for root, _, files in os.walk(path):
        for name in files:
            file_path = os.path.join(root, name)
            os.chmod(file_path, 0o666 & ~umask)
            with open(file_path, "rb") as handle:
                os.fsync(handle.fileno())


def backup_path(destination: Path) -> Path:
    return destination.with_name(f".{destination.name}.previous")


def recover_member(destination: Path) -> None:
    """Undo an interrupted publish: bring the backup back if the member itself is missing."""
    backup = backup_path(destination)
    if backup.exists() and not destination.exists():
        logger.warning("restoring %s from an interrupted publish", destination)
        os.rename(backup, destination)
    elif backup.exists():
        shutil.rmtree(backup)


def publish_member(
    best_root: Path,
    name: str,
    sources: dict[str, Path],
    json_files: dict[str, object],
) -> Path:
    """Copy `sources` (folders are merged in, files copied) plus `json_files` into best_root/name."""
    best_root = Path(best_root)
    best_root.mkdir(parents=True, exist_ok=True)
    destination = best_root / name
    recover_member(destination)

    staging = best_root / f".{name}.staging-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
        for target, source in sources.items():
            source = Path(source)
            if source.is_dir():
                shutil.copytree(
                    source, staging / target if target else staging, dirs_exist_ok=True, ignore=_NOT_PUBLISHED
                )
            else:
                shutil.copy2(source, staging / target)
        for target, payload in json_files.items():
            (staging / target).write_text(json.dumps(payload, indent=2, default=str))
        _finalise_tree(staging)

        backup = backup_path(destination)
        if destination.exists():
            os.rename(destination, backup)
        os.rename(staging, destination)
        shutil.rmtree(backup, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination
