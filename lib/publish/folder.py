"""Publish a member under <output>/best/<name>, replacing an earlier one atomically.

publish_trained_member assembles what a trained and evaluated member publishes: the best model,
its reports and train log, and the JSON files it describes itself with (member_manifest).

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

Members published by an older astft are real folders. The first publish over one moves it to a
backup name and links the new version in its place: that migration, once per member, is the only
moment without a member under the name (between those two renames). If it is interrupted there,
the next publish (or recover_member) puts the backup back first.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
from pathlib import Path

from lib.model.checkpoint import EncoderRef
from lib.core.layout import MEMBER_FILE
from lib.core.layout import CONFUSION_FILE, REPORT_FILES
from lib.evaluate.evaluation import EvalResult
from lib.data.features import FeatureCacheRef
from lib.core.guards import check_finite_folder
from lib.recipes.member import TrainOutcome
from lib.core.layout import check_member_destination
from lib.recipes.plan import RunPlan
from lib.core.layout import CONFUSION_PLOT_FILE, TRAINING_CURVES_FILE
from lib.evaluate.plots import confusion_matrix_plot, training_curves
from lib.core.staging import OWNER_PATTERN, owned_name, remove_abandoned
from lib.core.layout import LOG_HISTORY_FILE

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
    """Where a real member folder (older layout) waits while a link takes its place."""
    return destination.with_name(f".{destination.name}.previous")


def recover_member(destination: Path) -> None:
    """Undo a migration interrupted between its two renames: bring the backup back if the member is missing."""
    backup = backup_path(destination)
    if backup.exists() and not os.path.lexists(destination):
        logger.warning("restoring %s from an interrupted publish", destination)
        os.rename(backup, destination)
    elif backup.exists():
        shutil.rmtree(backup)


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
        if destination.is_dir() and not destination.is_symlink():
            # Migration from the real-folder layout: no rename swaps a folder for a link.
            os.rename(destination, backup_path(destination))
        os.replace(link, destination)
    finally:
        if os.path.lexists(link):  # the rename failed: the link is still ours to remove
            os.unlink(link)
    _fsync_folder(destination.parent)
    if backup_path(destination).exists():
        shutil.rmtree(backup_path(destination))
    if superseded and superseded != version.name:
        shutil.rmtree(destination.parent / superseded, ignore_errors=True)


def publish_member(
    best_root: Path,
    name: str,
    sources: dict[str, Path],
    json_files: dict[str, object],
    kind: str = "member",
) -> Path:
    """Copy `sources` (folders are merged in, files copied) plus `json_files` into best_root/name.

    kind names what is published ("member", or "encoder" under ssl/) in the refusal to replace a folder."""
    best_root = Path(best_root)
    best_root.mkdir(parents=True, exist_ok=True)
    destination = best_root / name
    recover_member(destination)
    # also in plan_run / plan_pretrain; re-checked: the folder may have appeared since
    check_member_destination(destination, kind)

    version = best_root / owned_name(f".{name}.v-")
    try:
        version.mkdir()
        for target, source in sources.items():
            source = Path(source)
            if source.is_dir():
                shutil.copytree(
                    source, version / target if target else version, dirs_exist_ok=True, ignore=_NOT_PUBLISHED
                )
            else:
                shutil.copy2(source, version / target)
        for target, payload in json_files.items():
            (version / target).write_text(json.dumps(payload, indent=2, default=str))
        _finalise_tree(version)
        _switch_link(destination, version)
    finally:
        if _target(destination) != version.name:  # failed before the switch: nobody can see it
            shutil.rmtree(version, ignore_errors=True)
    # What earlier publishes of this name left (killed ones, or one that failed after its switch):
    # versions and links of this process or of ended ones, never the live version, nor one that
    # another running publish may still be building. Another host's wait for that host's next publish.
    remove_abandoned(
        best_root,
        rf"\.{re.escape(name)}\.(?:v|link)-{OWNER_PATTERN}",
        also_own=True,
        keep=lambda entry: entry.name == _target(destination) or _target(destination) is None,
    )
    return destination


def publish_trained_member(
    plan: RunPlan,
    features: FeatureCacheRef,
    encoder: EncoderRef,
    outcome: TrainOutcome,
    evaluation: EvalResult,
    flow_run_id: str | None = None,
) -> Path:
    """Publish the best model, its evaluation reports, train log and manifest to plan.best_root/<name>."""
    name, report_dir = plan.config.name, Path(evaluation.report_dir)
    # Last line of defence: however it came about, a NaN member never replaces the published one.
    for folder in (Path(outcome.best_model_dir), report_dir):
        check_finite_folder(folder, f"member {name}", f"not published; {plan.best_root / name} is left as it was")
    sources = {
        "": Path(outcome.best_model_dir),
        **{report: report_dir / report for report in REPORT_FILES if (report_dir / report).is_file()},
        Path(outcome.train_log).name: Path(outcome.train_log),
        **member_plots(outcome, report_dir),
    }
    return publish_member(plan.best_root, name, sources, member_manifest(plan, features, encoder, outcome, flow_run_id))


def member_plots(outcome: TrainOutcome, report_dir: Path) -> dict[str, Path]:
    """training_curves.png (from the work dir's log_history.json) and confusion_matrix.png, written into report_dir."""
    history = json.loads((Path(outcome.work_dir) / LOG_HISTORY_FILE).read_text())
    confusion = json.loads((Path(report_dir) / CONFUSION_FILE).read_text())
    return {
        TRAINING_CURVES_FILE: training_curves(
            history, outcome.metric, outcome.best_epoch, Path(report_dir) / TRAINING_CURVES_FILE
        ),
        CONFUSION_PLOT_FILE: confusion_matrix_plot(
            confusion["matrix"], confusion["labels"], Path(report_dir) / CONFUSION_PLOT_FILE
        ),
    }


def member_manifest(
    plan: RunPlan, features: FeatureCacheRef, encoder: EncoderRef, outcome: TrainOutcome, flow_run_id: str | None
) -> dict[str, dict]:
    """The JSON files a member describes itself with: run config, label map, and member.json (how it was made)."""
    config, labels = plan.config, features.label_names
    return {
        "run_config.json": config.model_dump(mode="json"),
        "label_map.json": {
            "label2id": {label: i for i, label in enumerate(labels)},
            "id2label": {str(i): label for i, label in enumerate(labels)},
        },
        MEMBER_FILE: {
            "name": config.name,
            "freezing": config.model.freezing,
            "parameters": outcome.parameters,
            "feature_params": features.params.model_dump(),
            "feature_cache_key": features.key,
            "skipped_files": features.skipped,
            "encoder": encoder.report.model_dump(),
            # what the checkpoint held, by content (its files' stats), since its folder may be re-published
            "encoder_cache_key": Path(encoder.path).name,
            "training": outcome.model_dump(exclude={"parameters"}),
            "run_fingerprint": plan.fingerprint,
            "trained_by": trained_by(flow_run_id),
        },
    }


def trained_by(flow_run_id: str | None) -> dict[str, str | None]:
    """Where a published model was trained: host, Prefect worker and flow run."""
    return {
        "host": socket.gethostname(),
        # set by Prefect workers for the flow runs they start; None for local runs
        "worker": os.environ.get("PREFECT__WORKER_NAME"),
        "flow_run_id": flow_run_id,
    }
