"""The Plan every task of a run takes first, and the plan-time checks both recipes make before any work."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict
from transformers import ASTConfig

from lib.config.runs import FinetuneConfig, PretrainConfig
from lib.config.sections import EncoderConfig, FeatureConfig
from lib.core.errors import CheckpointError, ConfigError
from lib.core.layout import LOCK_FILE, WEIGHTS_FILE, lock_file_for
from lib.core.locks import check_free, check_unlocked, file_lock, folder_lock, holder, is_held
from lib.core.runtime import Runtime
from lib.data.features import FRAME_LENGTH_MS, FeatureParams, fbank_frames
from lib.model.checkpoint import config_for_frames, resolve_encoder_config
from lib.train.workdir import RUN_KINDS, RunKind, RunOwner, check_work_dir


class Plan(BaseModel):
    """A checked run config and what its stages derive from it; every task of a run takes its plan first.

    Subclasses (lib.recipes.finetune.FinetunePlan, lib.recipes.pretrain.PretrainPlan) narrow config and
    set the kind of run (whose work dirs it may take) and the folder under output_dir it publishes to.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    kind: ClassVar[RunKind]
    published_folder: ClassVar[str]

    config: FinetuneConfig | PretrainConfig
    feature_params: FeatureParams  # the features as the encoder takes them (frames, mel bins fitted)
    # None when planned for another machine (the parent of a scale-out): the member's own run resolves it
    runtime: Runtime | None
    fingerprint: str  # of the settings that change the weights: part of the resume key

    @property
    def work_dir(self) -> Path:
        return self.config.run_work_dir

    @property
    def publish_root(self) -> Path:
        """<output_dir>/best for members, <output_dir>/ssl for encoders."""
        return self.config.output_dir / self.published_folder

    @property
    def owner(self) -> RunOwner:
        """Whose work dir it is (run.json): another kind of run's, or another name's, is refused."""
        return RunOwner(kind=self.kind, name=self.config.name)

    @property
    def publish_slot(self) -> Path:
        """Where this run publishes: <output_dir>/best/<name> or <output_dir>/ssl/<name>."""
        return self.publish_root / self.config.name

    @contextmanager
    def run_lock(self, wait: bool = False) -> Iterator[None]:
        """Hold the work dir's lock and the publish slot's: a second run on either is refused (or, with wait or
        --wait, queued). The CLI holds them from plan to exit; a flow (re)takes them from training to publishing."""
        wait = wait or self.config.wait_for_work_dir
        what = f"the {RUN_KINDS[self.kind]} {self.config.name!r}"
        with folder_lock(self.work_dir, what, wait):
            self.publish_root.mkdir(parents=True, exist_ok=True)
            with file_lock(lock_file_for(self.publish_slot), what, wait, refusal=self._slot_in_use, remove=True):
                yield

    def check_unlocked(self) -> None:
        """Plan time: no other run is using the work dir or publishing to this name now (unless --wait)."""
        if self.config.wait_for_work_dir:
            return
        check_unlocked(self.work_dir)
        check_free(lock_file_for(self.publish_slot), self._slot_in_use)

    def waiting_for(self) -> str | None:
        """Whom a queued run (--wait) waits for now: "<folder> is in use by <holder>", or None."""
        for folder, lock_file in ((self.work_dir, self.work_dir / LOCK_FILE),
                                  (self.publish_slot, lock_file_for(self.publish_slot))):
            if is_held(lock_file):
                return f"{folder} is in use by {holder(lock_file)}"
        return None

    def _slot_in_use(self) -> ConfigError:
        return ConfigError(
            f"{self.publish_slot} is being made by {holder(lock_file_for(self.publish_slot))}, another run with "
            f"this name and another work dir: the later one would replace the other's model. Give this run another "
            "--name or --output-dir, or wait for that run to end (--wait queues this run behind it)"
        )


def check_work_dir_apart(
    work_dir: Path, given: bool, protected: dict[str, Path | None], default: str, owner: RunOwner
) -> None:
    """work_dir neither is, nor holds, nor lies in any protected folder (field label -> path), and is the owner's
    (whether another run is using it now: Plan.check_unlocked).

    given: whether --work-dir was passed (else it is `default`, and the fix is another --output-dir)."""
    work_dir = work_dir.resolve()
    for field, path in protected.items():
        if path is None:
            continue
        path = Path(path).resolve()
        relation = (
            "is" if work_dir == path
            else "is inside" if work_dir.is_relative_to(path)
            else "contains" if path.is_relative_to(work_dir)
            else None
        )
        if relation:
            fix = (
                f"leave it unset for {default}" if given
                else f"the default, {default}, lies there: pass --output-dir or --work-dir elsewhere"
            )
            raise ConfigError(
                f"work_dir (--work-dir) {work_dir} {relation} {field} ({path}); a run removes checkpoint-* "
                "folders and logs in its work dir and writes its own there. Pass a --work-dir outside the SSL "
                f"checkpoint, the data and the published models, or {fix}"
            )
    check_writable("work_dir (--work-dir)", work_dir)
    check_work_dir(work_dir, owner)


def check_output_folders(
    outputs: dict[str, Path], data_folders: dict[str, Path | None], written: str = "best/, runs/, features/"
) -> None:
    """The output folders (label -> path) must be (or become) folders, outside what the folder scan reads.

    written: the folders a run puts there, as the error names them (pretraining: ssl/, ssl-runs/, features/)."""
    for label, path in outputs.items():
        _check_can_be_folder(label, path)
        check_writable(label, path)
        for data_label, data_dir in data_folders.items():
            if data_dir is not None and _seen_by_scan(path, data_dir):
                raise ConfigError(
                    f"{label} {path} is inside {data_label} {data_dir}: the next scan would read the folders "
                    f"written there ({written}) as part of the data; choose a folder outside the data folders"
                )


def _check_can_be_folder(label: str, path: Path) -> None:
    """The path is a folder, or its nearest existing parent is one (mkdir creates the rest)."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or existing.is_dir():
        return
    if existing == path:
        raise ConfigError(f"{label} {path} is a file, not a folder; pass a folder (it is created if missing)")
    raise ConfigError(
        f"{label} {path}: {existing} is a file, not a folder, so nothing can be created below it; "
        "pass a path whose parents are folders"
    )


def check_writable(label: str, path: Path) -> None:
    """The folder, or its nearest existing parent (where mkdir creates the rest), can be written to: else the run
    would stop late with a raw OSError (errno 30 on a read-only mount). Free space is not checked here: what the
    caches take depends on the clip count, which only the scan knows."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return
    where = f"{path}" if existing == path else f"{path}: its nearest existing parent {existing}"
    if not os.access(existing, os.W_OK | os.X_OK):  # access() reports EROFS for a read-only mount even for root
        reason = _why_not_writable(existing)
    else:  # root passes access() where the file system itself refuses (/proc, some network mounts): try it
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".astft-probe-", dir=existing))
            return
        except OSError as error:
            reason = error.strerror or str(error)
    raise ConfigError(f"{label} {where} is not writable ({reason}): pass a folder you can write to")


def _why_not_writable(folder: Path) -> str:
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows) or it failed: say both
        return "read-only file system or no permission"
    return "read-only file system" if read_only else "no write permission"


def _seen_by_scan(path: Path, data_dir: Path) -> bool:
    """Whether the folder scan of data_dir would list path: inside it, with no hidden folder on the way."""
    if not path.is_relative_to(data_dir):
        return False
    return not any(part.startswith(".") for part in path.relative_to(data_dir).parts)


def check_clip_fits(features: FeatureConfig, max_frames: int) -> None:
    """A clip makes at least one fbank frame, and no more than max_frames (the encoder's input length)."""
    check_clip_fills_one_window(features)
    clip_frames = fbank_frames(features.sample_rate_hz, features.clip_seconds)
    if clip_frames > max_frames:
        raise ConfigError(
            f"features.clip_seconds={features.clip_seconds} makes {clip_frames} frames but "
            f"features.max_frames is {max_frames}, which would cut the end of every clip; "
            f"set features.max_frames (--max-frames) to at least {clip_frames}, or shorten clip_seconds"
        )


def check_clip_fills_one_window(features: FeatureConfig) -> None:
    """A clip shorter than one fbank window makes no frame at all: its features would be all padding."""
    if fbank_frames(features.sample_rate_hz, features.clip_seconds) > 0:
        return
    rate = features.sample_rate_hz
    samples = int(round(rate * features.clip_seconds))
    window = int(rate * FRAME_LENGTH_MS * 0.001)
    raise ConfigError(
        f"features.clip_seconds={features.clip_seconds} is {samples} samples at {rate} Hz, fewer than one "
        f"{FRAME_LENGTH_MS:g} ms fbank window ({window} samples); use at least {window / rate:g}"
    )


def checkpoint_encoder_config(model: EncoderConfig, max_frames: int | None) -> tuple[ASTConfig, str]:
    """The encoder's config fitted to max_frames, and where it came from (a missing checkpoint is named first)."""
    check_ssl_checkpoint(model.ssl_checkpoint)
    try:
        checkpoint_config, source = resolve_encoder_config(model.ssl_checkpoint, model.base_config)
        # The encoder is loaded for features of max_frames frames (positional embeddings fitted).
        return config_for_frames(checkpoint_config, max_frames), source
    except CheckpointError as error:
        raise ConfigError(str(error)) from error


def check_ssl_checkpoint(checkpoint: Path) -> None:
    if not (checkpoint / WEIGHTS_FILE).is_file():
        raise ConfigError(
            f"model.ssl_checkpoint (--ssl-checkpoint) {checkpoint}: no {WEIGHTS_FILE} there; "
            "point it at the SSL checkpoint folder (e.g. .../checkpoint-33297/)"
        )
