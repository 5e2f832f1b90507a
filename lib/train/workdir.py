"""A run's work dir: whose it is (run.json), which checkpoint a rerun resumes from, and what a fresh start removes."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from lib.core.errors import ConfigError
from lib.core.layout import (
    BEST_MODEL_DIR,
    EPOCHS_FILE,
    LOCK_FILE,
    LOG_HISTORY_FILE,
    PARTIAL_RUN_FILE,
    RUN_FILE,
)
from lib.train.epochs import read_epoch_records

logger = logging.getLogger(__name__)

RunKind = Literal["finetune", "pretrain"]
RUN_KINDS = {"finetune": "fine-tune run (astft finetune / ensemble)", "pretrain": "pretraining run (astft pretrain)"}


class RunOwner(BaseModel):
    """Whose work dir it is, as run.json records it: the kind of run and its name (--name).

    A run refuses a work dir that another kind of run or another name made: starting would remove
    that run's checkpoints. name None (a caller below the flows) checks the kind only."""

    kind: RunKind = "finetune"
    name: str | None = None


def _marker(work_dir: Path) -> dict | None:
    """run.json's content if it marks work_dir as an astft run's own: a JSON object with a fingerprint and the
    kind of run that wrote it (anything else is not provably ours, and is left alone)."""
    try:
        marker = json.loads((Path(work_dir) / RUN_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    ours = isinstance(marker, dict) and "fingerprint" in marker and marker.get("kind") in RUN_KINDS
    return marker if ours else None


def _write_marker(work_dir: Path, run_fingerprint: str | None, owner: RunOwner | None = None) -> None:
    # Written aside and renamed over, so a kill never leaves a half-written run.json, which would
    # make the run's own work dir look foreign.
    owner = owner or RunOwner()
    previous = _marker(work_dir) or {}
    name = owner.name or previous.get("name")  # a caller without a name keeps the one recorded
    marker = {"fingerprint": run_fingerprint, "kind": owner.kind, **({"name": name} if name else {})}
    # one partial file per process: torchrun's ranks rewrite the same marker at once (each renames its own)
    partial = Path(work_dir) / f"{PARTIAL_RUN_FILE}.{os.getpid()}"
    partial.write_text(json.dumps(marker))
    partial.replace(Path(work_dir) / RUN_FILE)


def check_work_dir(work_dir: Path, owner: RunOwner | None = None) -> None:
    """Refuse a work dir that is not provably this run's: a run deletes checkpoints and logs in it.

    Ours is a folder that does not exist yet, an empty one, or one marked by run.json (written by
    claim_work_dir / prepare_work_dir) for the owner's kind of run and name; one without a name (written by
    a caller below the flows) takes any name.
    Reads only; plan_run and plan_pretrain call it before any work.
    """
    work_dir = Path(work_dir)
    if not work_dir.exists():
        return
    if not work_dir.is_dir():
        raise ConfigError(f"work_dir (--work-dir) {work_dir} is a file; pass a folder (a new one is created)")
    marker = _marker(work_dir)
    leftovers = [entry for entry in work_dir.iterdir()
                 if entry.name != LOCK_FILE and not entry.name.startswith(PARTIAL_RUN_FILE)]  # a killed write's
    if marker is None and leftovers:
        raise ConfigError(
            f"work_dir (--work-dir) {work_dir} is not empty and has no {RUN_FILE} marking it as an astft run's "
            "work dir; a run removes the checkpoint-* folders, best-model/ and training logs of its work dir, so "
            f"it only takes a folder it made. Pick a new or empty folder for --work-dir, or remove {work_dir} "
            "yourself if nothing in it is needed"
        )
    if marker is None or owner is None:
        return
    kind, name = marker["kind"], marker.get("name")
    if kind == owner.kind and (name is None or owner.name is None or name == owner.name):
        return
    made_by = RUN_KINDS[kind] + (f" {name!r}" if name else "")
    this = f"{RUN_KINDS[owner.kind]}" + (f" {owner.name!r}" if owner.name else "")
    raise ConfigError(
        f"work_dir (--work-dir) {work_dir} belongs to another run: its {RUN_FILE} says the {made_by} made it, not "
        f"this {this}, which would remove that run's checkpoints and logs. Pick another --work-dir (or leave it "
        f"unset: each run gets its own folder under --output-dir), or remove {work_dir} yourself if that run's "
        "checkpoints are not needed"
    )


def claim_work_dir(work_dir: Path, owner: RunOwner | None = None) -> None:
    """Create work_dir (or take an empty one) and mark it as the owner's; a marked one is kept as it is.

    owner None: a fine-tune run whose name is not checked (RunOwner())."""
    work_dir = Path(work_dir)
    check_work_dir(work_dir, owner or RunOwner())
    work_dir.mkdir(parents=True, exist_ok=True)
    if _marker(work_dir) is None:
        _write_marker(work_dir, None, owner)  # no config's checkpoints yet: prepare_work_dir starts fresh


def last_complete_checkpoint(work_dir: Path) -> str | None:
    """Newest checkpoint-N whose trainer_state.json (which Trainer writes last) is readable.

    A run killed while saving leaves a checkpoint without it; such leftovers are removed so that
    neither the resume nor Trainer's save_total_limit rotation picks them up. Only in a work dir
    that is ours (check_work_dir): elsewhere a checkpoint-N without trainer_state.json may be
    someone's only copy of a model.
    """
    check_work_dir(work_dir)
    checkpoints = sorted(
        (p for p in Path(work_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for checkpoint in checkpoints:
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
        except (OSError, json.JSONDecodeError):
            logger.warning("removing incomplete checkpoint %s (interrupted while saving)", checkpoint)
            shutil.rmtree(checkpoint)
            continue
        return str(checkpoint)
    return None


def prepare_work_dir(
    work_dir: Path, run_fingerprint: str, owner: RunOwner | None = None, earlier_keys: tuple[str, ...] = ()
) -> str | None:
    """Return the checkpoint to resume from, if the work dir holds one from this same run config.

    earlier_keys: what an earlier astft recorded for this same run (run.json is then rewritten with today's).

    The work dir must be the owner's (claim_work_dir: new, empty or marked by run.json for the same
    kind of run and name), else ConfigError. Checkpoints left by a run with a different config are
    removed, so they can neither be resumed by mistake nor compete with this run's checkpoints in
    save_total_limit rotation.
    """
    work_dir = Path(work_dir)
    claim_work_dir(work_dir, owner)
    previous = _marker(work_dir)["fingerprint"]
    last = last_complete_checkpoint(work_dir)
    if last and (previous == run_fingerprint or previous in earlier_keys):
        _drop_epoch_records_after(work_dir, int(Path(last).name.split("-")[-1]))
        if previous != run_fingerprint:
            _write_marker(work_dir, run_fingerprint, owner)
        return last
    if last:
        logger.warning("work dir %s holds checkpoints of another run config; starting fresh", work_dir)
    for stale in work_dir.glob("checkpoint-*"):
        shutil.rmtree(stale)
    shutil.rmtree(work_dir / BEST_MODEL_DIR, ignore_errors=True)
    # ... and the old run's logs, which would otherwise be published with the new member
    for old_log in [*work_dir.glob("train_log*.txt"), work_dir / LOG_HISTORY_FILE, work_dir / EPOCHS_FILE]:
        old_log.unlink(missing_ok=True)
    _write_marker(work_dir, run_fingerprint, owner)
    return None


def _drop_epoch_records_after(work_dir: Path, step: int) -> None:
    """Keep the epochs file's records up to the resumed checkpoint's step: an epoch logged after it (the run was
    killed between its evaluation and its checkpoint) is trained again, and logged again, by the resumed run."""
    records = read_epoch_records(work_dir)
    kept = [record for record in records if record.step <= step]
    if len(kept) < len(records):
        (Path(work_dir) / EPOCHS_FILE).write_text("".join(record.model_dump_json() + "\n" for record in kept))
