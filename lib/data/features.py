"""Clips -> AST log-mel fbank features, written once as Arrow and memory-mapped afterwards.

The fbank itself is transformers' ASTFeatureExtractor (torchaudio's Kaldi fbank underneath),
constructed from parameters so no hub access is needed. The cache folder is keyed by the
manifest fingerprint and the feature parameters; it is built beside its final name and renamed
into place, so a crash or a concurrent writer never leaves a half-written cache that looks valid.

Each split is stored as shard files, <split>-NNNNN-of-MMMMM.arrow, in row order, which a pool of
worker processes computes in parallel (data.feature_workers). Where the shards are cut depends
only on the clip count, so the cache is the same, byte for byte, whatever the number of workers.

About 520 lines on purpose: the cache's key, its parallel build, its self-check and the views a
cross-validation reads it through (FeatureCacheRef.for_fold, load_split) are one contract (what is
written is what is read back), kept in one module.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from datasets import Array2D, ClassLabel, Dataset, Features, List, Value
from datasets.arrow_writer import ArrowWriter
from datasets.table import MemoryMappedTable, concat_tables
from pydantic import BaseModel, Field
from transformers import ASTFeatureExtractor

from lib.config import FeatureConfig
from lib.core.errors import (
    AudioError,
    BadAudioError,
    FeatureCacheCorrupt,
    FeatureWorkerDied,
)
from lib.core.hashing import digest
from lib.core.layout import FEATURES_FOLDER, META_FILE
from lib.core.runtime import usable_cores
from lib.core.staging import build_lock, check_free_space, file_sizes_match, record_file_sizes, staged_folder
from lib.data.audio import Window, load_clip
from lib.data.scan import TEST_SPLIT, Clip, Manifest, format_bad_files

logger = logging.getLogger(__name__)

# Bump when the feature computation changes; history: docs/decisions.md, "Feature cache versions".
FEATURES_VERSION = "3"
# torchaudio's Kaldi fbank defaults, which ASTFeatureExtractor keeps: 25 ms windows every 10 ms.
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0


class FeatureParams(FeatureConfig):
    """FeatureConfig fitted to the encoder (its mel bins, max_frames known): everything that changes the
    feature values, and part of the cache key."""

    num_mel_bins: int = Field(128, ge=1, le=1024, description="Mel bins of the fbank (the encoder config's).")
    max_frames: int = Field(128, ge=1, le=100_000, description="Frames per clip (the fitted encoder's max_length).")


# Shard sizing, why: docs/decisions.md, "Feature shard sizes".
SHARD_CLIPS = 128
MAX_SHARDS = 256
# Fork on Linux, why: docs/decisions.md, "Feature workers are forked on Linux".
START_METHOD = "fork" if sys.platform.startswith("linux") else "spawn"
# How often a long build logs its progress.
PROGRESS_EVERY_S = 30.0


def build_workers(requested: int, clips: int) -> int:
    """Processes a build of `clips` clips runs on: requested (0: usable_cores()), at most one per SHARD_CLIPS clips."""
    return max(1, min(requested or usable_cores(), clips // SHARD_CLIPS))


def fbank_frames(sample_rate_hz: int, clip_seconds: float) -> int:
    """Frames the fbank makes from one clip before padding/truncation to max_frames (edges snipped)."""
    samples = int(round(sample_rate_hz * clip_seconds))  # as lib.data.audio.load_clip trims/pads
    window = int(sample_rate_hz * FRAME_LENGTH_MS * 0.001)
    shift = int(sample_rate_hz * FRAME_SHIFT_MS * 0.001)
    return 0 if samples < window else 1 + (samples - window) // shift


class FeatureCacheRef(BaseModel):
    """Where a finished feature cache lives; the hand-off between the feature and training tasks.

    A cross-validation's cache stores one split per fold (fold-1, ...); for_fold gives the view of it that one
    fold's member trains on: its train and validation splits made of the stored ones (views), its own key."""

    path: str
    key: str
    params: FeatureParams
    label_names: list[str]
    num_clips: dict[str, int]
    skipped: dict[str, str] = {}
    warnings: dict[str, str] = {}  # clips used although they look wrong (lib.data.audio.suspicious)
    views: dict[str, list[str]] = {}  # split -> the stored splits it is made of, in order (a fold's view)
    multi_label: bool = False  # its label column is a multi-hot row per clip

    def for_fold(self, fold: str) -> FeatureCacheRef:
        """The view in which fold validates and every other fold trains (test stays test)."""
        stored = [split for split in self.num_clips if split != TEST_SPLIT]
        if fold not in stored:
            raise KeyError(f"feature cache {self.path} has no split {fold!r} (it has {stored})")
        views = {"train": [split for split in stored if split != fold], "validation": [fold]}
        views |= {TEST_SPLIT: [TEST_SPLIT]} if TEST_SPLIT in self.num_clips else {}
        return self.model_copy(update={
            "key": f"{self.key}-{fold}", "views": views,
            "num_clips": {split: sum(self.num_clips[part] for part in parts) for split, parts in views.items()},
        })


def make_feature_extractor(params: FeatureParams) -> ASTFeatureExtractor:
    return ASTFeatureExtractor(
        sampling_rate=params.sample_rate_hz,
        num_mel_bins=params.num_mel_bins,
        max_length=params.max_frames,
        do_normalize=params.normalize,
        mean=params.mean,
        std=params.std,
    )


def cache_key(manifest_fingerprint: str, params: FeatureParams) -> str:
    # long_clips "first" is what every cache before the setting did: those keys stay as they were.
    dumped = params.model_dump(exclude={"long_clips"} if params.long_clips == "first" else None)
    return digest({"manifest": manifest_fingerprint, "params": dumped, "version": FEATURES_VERSION})


def clip_window(params: FeatureParams, training: bool) -> Window:
    """Which part of a longer clip becomes features: long_clips 'crop' takes a random window of training clips
    and the centre of the others (evaluation, prediction), as a crop should; 'first' the start of every clip."""
    if params.long_clips == "first":
        return "first"
    return "random" if training else "centre"


def arrow_features(params: FeatureParams, label_names: list[str], multi_label: bool = False) -> Features:
    """The cache's columns; a multi-label clip's label is a multi-hot row of 0/1 per class (what binary cross-entropy
    takes), a single-label clip's its class."""
    return Features(
        {
            "input_values": Array2D(shape=(params.max_frames, params.num_mel_bins), dtype=params.storage_dtype),
            "label": List(Value("float32"), length=len(label_names)) if multi_label else ClassLabel(names=label_names),
            "path": Value("string"),
        }
    )


def label_value(clip: Clip, classes: int, multi_label: bool) -> int | list[float]:
    """A clip's label column: its class, or a multi-label clip's multi-hot row."""
    if not multi_label:
        return clip.label
    row = [0.0] * classes
    for index in clip.labels:
        row[index] = 1.0
    return row


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch ops on one intra-op thread, then restore the setting.

    The fbank of one clip is a chain of small tensor ops: splitting each over threads costs more in
    hand-offs than it saves, and on a busy machine it is ruinous (measured on 2 loaded cores:
    120 clips in 14 s with 2 threads, 0.6 s with one). Parallelism belongs across clips.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def featurize(
    paths: Sequence[str | Path],
    params: FeatureParams,
    extractor: ASTFeatureExtractor,
    bad: dict[str, str],
    notes: dict[str, str] | None = None,
    training: bool = False,
) -> tuple[np.ndarray, list[int]]:
    """Features (float32, clips x max_frames x mel bins) of the usable clips, and their indices in paths.

    The values are rounded to params.storage_dtype, so that a model is given at prediction what its
    feature cache gave it in training and evaluation. The others (undecodable, or with features
    that are not finite in that dtype) go to `bad` (path -> why), so one pass reports every bad
    file; `notes` collects clips used although they look wrong (lib.data.audio.load_clip). training: the
    clips are a training split's (clip_window).
    """
    waveforms, kept = [], []
    window = clip_window(params, training)
    for index, path in enumerate(paths):
        try:
            waveforms.append(load_clip(path, params.sample_rate_hz, params.clip_seconds, notes=notes, window=window))
        except AudioError as error:
            bad[error.path] = error.reason
            continue
        kept.append(index)
    if not waveforms:
        return np.zeros((0, params.max_frames, params.num_mel_bins), np.float32), []
    with one_torch_thread():
        computed = extractor(waveforms, sampling_rate=params.sample_rate_hz, return_tensors="np")["input_values"]
    with np.errstate(over="ignore"):  # values beyond float16's range become inf, caught just below
        values = computed.astype(params.storage_dtype, copy=False)
    # Non-finite after the cast: a bad file (why: docs/decisions.md, "Clips with non-finite features are bad files").
    finite = np.isfinite(values).all(axis=(1, 2))
    for index in np.flatnonzero(~finite):
        if np.isfinite(computed[index]).all():
            reach = float(np.abs(computed[index]).max())
            reason = (
                f"its features reach {reach:.3g}, beyond {params.storage_dtype}'s range "
                f"({float(np.finfo(params.storage_dtype).max):.6g}); set features.storage_dtype to float32, "
                "or check features.mean and features.std"
            )
        else:
            peak = float(np.abs(waveforms[index]).max())
            reason = (
                f"its features are not finite (peak sample {peak:.3g}; samples this far outside [-1, 1] overflow "
                "the fbank)"
            )
        bad[str(paths[kept[index]])] = reason
    return values[finite].astype(np.float32, copy=False), [index for index, ok in zip(kept, finite, strict=True) if ok]


@dataclass(frozen=True)
class Shard:
    """One file of a split: its clips (a contiguous run of the split, in order) and where it goes."""

    split: str
    index: int
    count: int  # shards in the split
    paths: list[str]
    labels: list  # each clip's label column (label_value)
    multi_label: bool = False

    @property
    def file_name(self) -> str:
        return f"{self.split}-{self.index:05d}-of-{self.count:05d}.arrow"


@dataclass
class ShardResult:
    """What a worker reports of its shard: rows written, clips left out (path -> why), clips noted as odd."""

    rows: int
    bad: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def estimated_bytes(params: FeatureParams, clips: int) -> int:
    """What a cache of this many clips takes on disk: each row's frames x mel bins, plus its path and label."""
    row = params.max_frames * params.num_mel_bins * np.dtype(params.storage_dtype).itemsize + 256
    return clips * row


def shard_bounds(clips: int) -> list[tuple[int, int]]:
    """[start, end) of each shard of a split of `clips` clips: at least SHARD_CLIPS each (one shard
    below 2 x SHARD_CLIPS), at most MAX_SHARDS, sizes differing by one at most. Depends on nothing
    else, so any worker count writes the same files."""
    count = max(1, min(MAX_SHARDS, clips // SHARD_CLIPS))
    return [(clips * index // count, clips * (index + 1) // count) for index in range(count)]


def write_shard(
    shard: Shard, folder: str, params: FeatureParams, label_names: list[str], batch_size: int
) -> ShardResult:
    """Compute one shard's features batch by batch, streaming them to folder/<shard file> (Arrow)."""
    # Headers were checked by the scan; clips whose samples turn out unusable are left out here.
    extractor = make_feature_extractor(params)
    result = ShardResult(rows=0)
    file = Path(folder) / shard.file_name
    # datasets' own writer: the Arrow stream format and schema metadata that Dataset.map writes.
    features = arrow_features(params, label_names, shard.multi_label)
    with one_torch_thread(), ArrowWriter(features=features, path=str(file)) as writer:
        for start in range(0, len(shard.paths), batch_size):
            paths = shard.paths[start : start + batch_size]
            values, kept = featurize(paths, params, extractor, result.bad, result.notes, shard.split == "train")
            writer.write_batch({
                "input_values": values.astype(params.storage_dtype),
                "label": [shard.labels[start + index] for index in kept],
                "path": [paths[index] for index in kept],
            })
        result.rows, _ = writer.finalize()
    return result


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _init_worker(parent_pid: int) -> None:
    # Ctrl-C reaches the whole process group: the parent stops the pool, the workers need not each
    # print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # End with the parent (why: docs/decisions.md, "Feature workers die with their parent").
    if sys.platform == "linux":
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)


def compute_shards(
    shards: list[Shard], folder: Path, params: FeatureParams, label_names: list[str], batch_size: int, workers: int
) -> list[ShardResult]:
    """Write every shard into folder, on `workers` processes (1: in this one); results in shard order.

    Hand-written on the standard library's process pool rather than datasets' map(num_proc): map's
    workers can only return rows, while a shard also reports its bad and suspicious clips (one
    error must list all of them); and map pickles with dill, whose function disassembly once
    printed bytecode into Prefect's log (log_prints). Here only plain data crosses processes.
    """
    total = sum(len(shard.paths) for shard in shards)
    started = last_log = time.monotonic()
    done = 0
    results: dict[int, ShardResult] = {}

    def progress(index: int, result: ShardResult) -> None:
        nonlocal done, last_log
        results[index] = result
        done += len(shards[index].paths)
        now = time.monotonic()
        if now - last_log >= PROGRESS_EVERY_S and done < total:
            last_log = now
            logger.info("features: %d of %d clips (%.0f%%), %.0f clips/s", done, total, 100 * done / total,
                        done / (now - started))

    if workers <= 1:
        for index, shard in enumerate(shards):
            progress(index, write_shard(shard, str(folder), params, label_names, batch_size))
    else:
        context = multiprocessing.get_context(START_METHOD)
        pool_options = {"mp_context": context, "initializer": _init_worker, "initargs": (os.getpid(),)}
        with ProcessPoolExecutor(workers, **pool_options) as pool:
            # Largest first (a small split's single shard can be twice the others): the last shards
            # to finish are then short ones, and the workers finish together.
            order = sorted(range(len(shards)), key=lambda index: -len(shards[index].paths))
            futures = {
                pool.submit(write_shard, shards[index], str(folder), params, label_names, batch_size): index
                for index in order
            }
            try:
                for future in as_completed(futures):
                    progress(futures[future], future.result())
            except BrokenProcessPool as error:
                raise FeatureWorkerDied(
                    f"a feature worker process ended abruptly ({error}); if it ran out of memory, lower "
                    f"data.feature_workers (was {workers}) and run again"
                ) from error
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # else leaving the block would run every queued shard
                raise
    seconds = time.monotonic() - started
    logger.info("computed the features of %d clips in %.1f s (%.0f clips/s) on %d process%s",
                total, seconds, total / max(seconds, 1e-9), workers, "" if workers == 1 else "es")
    return [results[index] for index in range(len(shards))]


def build_feature_cache(
    manifest: Manifest,
    params: FeatureParams,
    cache_dir: Path,
    batch_size: int = 64,
    skip_bad_files: bool = False,
    workers: int = 0,
) -> tuple[FeatureCacheRef, bool]:
    """Return the cache for this manifest + params, computing it if needed; the bool is 'was a hit'.

    Clips that cannot be decoded stop the build with one error listing all of them, unless
    skip_bad_files, in which case they are left out, logged, and listed in the cache's `skipped`.
    workers: processes computing features (0: one per usable core), at most one per SHARD_CLIPS
    clips; the cache is the same whatever their number.
    """
    key = cache_key(manifest.fingerprint, params)
    root = Path(cache_dir) / FEATURES_FOLDER
    final = root / key
    ref = FeatureCacheRef(
        path=str(final),
        key=key,
        params=params,
        label_names=manifest.label_names,
        num_clips={split: len(manifest.split(split)) for split in manifest.splits},
        multi_label=manifest.multi_label,
    )
    scan_skipped = {item.path: item.reason for item in manifest.skipped}
    with build_lock(final, "feature cache"):  # two runs building it at once: one builds, the other waits, then reuses
        if file_sizes_match(final, key):
            meta = json.loads((final / META_FILE).read_text())
            if meta.get("skipped") and not skip_bad_files:
                raise bad_audio_error(meta["skipped"])  # built by a lenient run; this run asked to stop
            skipped = {**scan_skipped, **meta.get("skipped", {})}
            ref = ref.model_copy(
                update={"num_clips": meta["num_clips"], "skipped": skipped, "warnings": meta["warnings"]}
            )
            hit = True
        else:
            ref = _build(manifest, params, root, ref, scan_skipped, batch_size, skip_bad_files, workers)
            hit = False
    _log_warnings(ref)
    return ref, hit


def _build(
    manifest: Manifest, params: FeatureParams, root: Path, ref: FeatureCacheRef, scan_skipped: dict[str, str],
    batch_size: int, skip_bad_files: bool, workers: int,
) -> FeatureCacheRef:
    """Compute every split's shards into a staging folder and rename it to root/<key>; the ref it describes."""
    key = ref.key
    with staged_folder(root, key, file_sizes_match, "feature cache") as staging:
        shards, classes = [], len(manifest.label_names)
        for split in manifest.splits:
            clips = manifest.split(split)
            bounds = shard_bounds(len(clips))
            shards += [
                Shard(split, index, len(bounds), [clip.path for clip in clips[start:end]],
                      [label_value(clip, classes, manifest.multi_label) for clip in clips[start:end]],
                      manifest.multi_label)
                for index, (start, end) in enumerate(bounds)
            ]
        total = sum(len(shard.paths) for shard in shards)
        check_free_space(root, estimated_bytes(params, total), "feature cache", "--cache-dir (data.cache_dir)")
        workers = build_workers(workers, total)
        results = compute_shards(shards, staging, params, manifest.label_names, batch_size, workers)
        num_clips = {split: 0 for split in manifest.splits}
        bad, notes = {}, {}
        for shard, result in zip(shards, results, strict=True):
            num_clips[shard.split] += result.rows
            bad |= result.bad
            notes |= result.notes
        if bad and not skip_bad_files:
            raise bad_audio_error(bad)
        for path, reason in sorted(bad.items()):
            logger.warning("skipping %s: %s", path, reason)
        if empty := [split for split, count in num_clips.items() if not count]:
            raise bad_audio_error(bad, empty_splits=empty)
        ref = ref.model_copy(update={
            "num_clips": num_clips,
            "skipped": {**scan_skipped, **dict(sorted(bad.items()))},
            # a clip noted as odd and then found unusable was not used: it is listed as skipped only
            "warnings": {path: note for path, note in sorted(notes.items()) if path not in bad},
        })
        meta = {
            "version": FEATURES_VERSION,
            "params": params.model_dump(),
            "label_names": manifest.label_names,
            **({"multi_label": True} if manifest.multi_label else {}),
            "num_clips": ref.num_clips,
            "skipped": dict(sorted(bad.items())),
            "warnings": ref.warnings,  # so a cache hit names them too
            "manifest_fingerprint": manifest.fingerprint,
        }
        record_file_sizes(staging, key, meta)  # last: its presence (with matching sizes) marks a complete cache
    return ref


def _log_warnings(ref: FeatureCacheRef) -> None:
    for path, reason in ref.warnings.items():
        logger.warning("clip used, but check it: %s: %s", path, reason)


def has_test_split(ref: FeatureCacheRef) -> bool:
    """Whether the cache holds a test split (the run had data.test_dir)."""
    return TEST_SPLIT in ref.num_clips


def split_files(folder: str | Path, split: str) -> list[Path]:
    """The shard files of one split of a cache folder, in row order."""
    return sorted(Path(folder).glob(f"{split}-[0-9]*-of-[0-9]*.arrow"))


def load_split(ref: FeatureCacheRef, split: str) -> Dataset:
    """Memory-map one split of a finished cache (its shards, in order; a view's stored splits one after another),
    formatted as torch tensors for the Trainer: float32 whatever the stored dtype (datasets' torch format makes
    floats float32)."""
    files = []
    for stored in ref.views.get(split, [split]):
        found = split_files(ref.path, stored)
        expected = int(found[0].stem.rsplit("-of-", 1)[1]) if found else 1
        if len(found) != expected:
            raise FeatureCacheCorrupt(
                f"feature cache {ref.path}: {len(found)} of the {expected} {stored} shard files are there; delete "
                f"the folder {ref.path} and run again: it is rebuilt from the audio"
            )
        files += found
    tables = []
    for file in files:
        try:
            tables.append(MemoryMappedTable.from_file(str(file)))
        except (pa.ArrowInvalid, OSError) as error:
            # Its size matched meta.json, so the bytes were overwritten in place (disk fault, a copy gone wrong).
            raise FeatureCacheCorrupt(
                f"feature cache {file} cannot be read ({error}); delete the folder {ref.path} "
                "and run again: it is rebuilt from the audio"
            ) from error
    # The fingerprint is given: datasets would otherwise hash the tables (the cache key already names them).
    dataset = Dataset(concat_tables(tables), fingerprint=f"{ref.key}-{split}")
    return dataset.with_format("torch", columns=["input_values", "label"])


def bad_audio_error(bad: dict[str, str], empty_splits: Sequence[str] = ()) -> BadAudioError:
    """The error for clips that passed the header scan but could not be decoded; lists every one."""
    message = format_bad_files(dict(sorted(bad.items())), during="computing features")
    if empty_splits:  # skipping was asked for, and left nothing to train or score on: the list, not the flag
        listed = message.splitlines()[1:-1]
        message = "\n".join([
            f"every clip of the {' and '.join(empty_splits)} split is a bad file, so data.skip_bad_files left "
            f"nothing to use there; fix these {len(bad)} file(s) (or give the split other clips):",
            *listed,
        ])
    return BadAudioError(bad, message)
