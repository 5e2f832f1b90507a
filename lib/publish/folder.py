"""publish_folder: a model folder to <root>/<name> (members: best/, encoders: ssl/), replacing the last one atomically.

What goes in (a PublishSpec) is each recipe's: lib.recipes.member_publish.publish_member and
lib.recipes.pretrain.publish_encoder.

best/<name> is a symbolic link to a version folder beside it, .<name>.v-<owner>-<token>/. The
new member is assembled completely in a new version folder, then the link is switched to it with
one rename (os.replace of a new link over the old one), which POSIX makes atomic: whoever opens
best/<name> (predict, the ensemble, from_pretrained) finds the old member or the new one, whole,
at every moment, whenever the process is killed. The link's target is relative, so best/ keeps
working when moved or copied (`cp -r` copies the link as a link, and the version folder with it).
After the switch the superseded versions are removed; a version or link that a killed publish
left behind is removed by the next publish of that name, once the process that made it has ended
(lib.core.staging names each one after its owner). All of them are hidden (a leading dot), so listing
best/ for members never sees them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

from lib.core.guards import check_finite_folder
from lib.core.layout import check_publish_destination
from lib.core.staging import OWNER_PATTERN, owned_name, remove_abandoned

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


def _fsync_folder(path: Path) -> None:
    """Make a rename in this folder durable (the files themselves were synced before)."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _target(destination: Path) -> str | None:
    """The version folder destination links to now (None: not a link); read afresh, another publish may switch it."""
    try:
        return Path(os.readlink(destination)).name
    except OSError:
        return None


def _switch_link(destination: Path, version: Path) -> None:
    """Point destination at version (a sibling folder) with one atomic rename; remove what it pointed at."""
    link = destination.with_name(owned_name(f".{destination.name}.link-"))
    os.symlink(version.name, link)  # relative: valid wherever best/ is moved or copied
    superseded = _target(destination)
    try:
        os.replace(link, destination)
    finally:
        if os.path.lexists(link):  # the rename failed: the link is still ours to remove
            os.unlink(link)
    _fsync_folder(destination.parent)
    if superseded and superseded != version.name:
        shutil.rmtree(destination.parent / superseded, ignore_errors=True)


@dataclass
class PublishSpec:
    """What a recipe publishes: sources copied in (a folder merged at "", files under their names) and JSON files."""

    root: Path  # <output_dir>/best or <output_dir>/ssl
    name: str
    kind: str  # "member" or "encoder", as refusals name it
    sources: dict[str, Path]
    json_files: dict[str, object] = field(default_factory=dict)
    text_files: dict[str, str] = field(default_factory=dict)  # e.g. the model card, README.md
    # folders whose weights and reports must be finite: a NaN model never replaces the published one
    finite: tuple[Path, ...] = ()


def publish_folder(spec: PublishSpec) -> Path:
    """Assemble spec in a new hidden version folder under spec.root, then switch <root>/<name> to it."""
    root, name, kind = Path(spec.root), spec.name, spec.kind
    for folder in spec.finite:
        check_finite_folder(folder, f"{kind} {name}", f"not published; {root / name} is left as it was")
    root.mkdir(parents=True, exist_ok=True)
    destination = root / name
    # also in plan_run / plan_pretrain; re-checked: the folder may have appeared since
    check_publish_destination(destination, kind)

    version = root / owned_name(f".{name}.v-")
    try:
        version.mkdir()
        for target, source in spec.sources.items():
            source = Path(source)
            if source.is_dir():
                shutil.copytree(
                    source, version / target if target else version, dirs_exist_ok=True, ignore=_NOT_PUBLISHED
                )
            else:
                shutil.copy2(source, version / target)
        for target, payload in spec.json_files.items():
            (version / target).write_text(json.dumps(payload, indent=2, default=str))
        for target, text in spec.text_files.items():
            (version / target).write_text(text, encoding="utf-8")
        _finalise_tree(version)
        _switch_link(destination, version)
    finally:
        if _target(destination) != version.name:  # failed before the switch: nobody can see it
            shutil.rmtree(version, ignore_errors=True)
    # Earlier publishes' leftovers (why: docs/decisions.md, "Abandoned folders: judged by owner, not age").
    remove_abandoned(
        root,
        rf"\.{re.escape(name)}\.(?:v|link)-{OWNER_PATTERN}",
        also_own=True,
        keep=lambda entry: entry.name == _target(destination) or _target(destination) is None,
    )
    return destination


def trained_by(flow_run_id: str | None) -> dict[str, str | None]:
    """Where a published model was trained: host, Prefect worker and flow run."""
    return {
        "host": socket.gethostname(),
        # set by Prefect workers for the flow runs they start; None for local runs
        "worker": os.environ.get("PREFECT__WORKER_NAME"),
        "flow_run_id": flow_run_id,
    }
