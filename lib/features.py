"""Clips -> AST log-mel fbank features, written once as Arrow and memory-mapped afterwards.

The fbank itself is transformers' ASTFeatureExtractor (torchaudio's Kaldi fbank underneath),
constructed from parameters so no hub access is needed. The cache folder is keyed by the
manifest fingerprint and the feature parameters; it is built beside its final name and renamed
into place, so a crash or a concurrent writer never leaves a half-written cache that looks valid.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from datasets import Array2D, ClassLabel, Dataset, DatasetInfo, Features, Value
from datasets.table import InMemoryTable
from pydantic import BaseModel, Field
from transformers import ASTFeatureExtractor

from lib.audio import AudioError, load_clip
from lib.config import FeatureConfig
from lib.hashing import digest
from lib.scan import TEST_SPLIT, Manifest, format_bad_files
from lib.staging import META_FILE, file_sizes_match, record_file_sizes, staged_folder

logger = logging.getLogger(__name__)

# Bump when the feature computation changes, to invalidate old caches. 2: clips whose features are not
# finite are bad files (version 1 stored their NaN rows), and meta.json records suspicious clips.
FEATURES_VERSION = "2"
# torchaudio's Kaldi fbank defaults, which ASTFeatureExtractor keeps: 25 ms windows every 10 ms.
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0


class FeatureParams(FeatureConfig):
    """FeatureConfig fitted to the encoder (its mel bins, max_frames known): everything that changes the
    feature values, and part of the cache key."""

    num_mel_bins: int = Field(128, ge=1, le=1024, description="Mel bins of the fbank (the encoder config's).")
    max_frames: int = Field(128, ge=1, le=100_000, description="Frames per clip (the fitted encoder's max_length).")


def fbank_frames(sample_rate_hz: int, clip_seconds: float) -> int:
    """Frames the fbank makes from one clip before padding/truncation to max_frames (edges snipped)."""
    samples = int(round(sample_rate_hz * clip_seconds))  # as lib.audio.load_clip trims/pads
    window = int(sample_rate_hz * FRAME_LENGTH_MS * 0.001)
    shift = int(sample_rate_hz * FRAME_SHIFT_MS * 0.001)
    return 0 if samples < window else 1 + (samples - window) // shift


class FeatureCacheRef(BaseModel):
    """Where a finished feature cache lives; the hand-off between the feature and training tasks."""

    path: str
    key: str
    params: FeatureParams
    label_names: list[str]
    num_clips: dict[str, int]
    skipped: dict[str, str] = {}
    warnings: dict[str, str] = {}  # clips used although they look wrong (lib.audio.suspicious)


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
    return digest({"manifest": manifest_fingerprint, "params": params.model_dump(), "version": FEATURES_VERSION})


def arrow_features(params: FeatureParams, label_names: list[str]) -> Features:
    return Features(
        {
            "input_values": Array2D(shape=(params.max_frames, params.num_mel_bins), dtype="float32"),
            "label": ClassLabel(names=label_names),
            "path": Value("string"),
        }
    )


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
) -> tuple[np.ndarray, list[int]]:
    """Features (float32, clips x max_frames x mel bins) of the usable clips, and their indices in paths.

    The others (undecodable, or with non-finite features) go to `bad` (path -> why), so one pass
    reports every bad file; `notes` collects clips used although they look wrong (lib.audio.load_clip).
    """
    waveforms, kept = [], []
    for index, path in enumerate(paths):
        try:
            waveforms.append(load_clip(path, params.sample_rate_hz, params.clip_seconds, notes=notes))
        except AudioError as error:
            bad[error.path] = error.reason
            continue
        kept.append(index)
    if not waveforms:
        return np.zeros((0, params.max_frames, params.num_mel_bins), np.float32), []
    with one_torch_thread():
        values = extractor(waveforms, sampling_rate=params.sample_rate_hz, return_tensors="np")["input_values"]
    # Finite samples can still overflow the fbank's power spectrum in float32 (a float clip holding
    # 1e30): such rows would train as NaN, so those clips are bad files too.
    finite = np.isfinite(values).all(axis=(1, 2))
    for index in np.flatnonzero(~finite):
        peak = float(np.abs(waveforms[index]).max())
        bad[str(paths[kept[index]])] = (
            f"its features are not finite (peak sample {peak:.3g}; samples this far outside [-1, 1] overflow the fbank)"
        )
    return values[finite].astype(np.float32, copy=False), [index for index, ok in zip(kept, finite) if ok]


def _featurize_batch(
    batch: dict, extractor: ASTFeatureExtractor, params: FeatureParams, bad: dict[str, str], notes: dict[str, str]
) -> dict:
    # Headers were checked by the scan; clips whose samples turn out unusable are left out here.
    values, kept = featurize(batch["path"], params, extractor, bad, notes)
    return {"input_values": values, "label": [batch["label"][i] for i in kept], "path": [batch["path"][i] for i in kept]}


def _clip_table(clips, label_names: list[str], fingerprint: str) -> Dataset:
    """The (path, label) table the features are mapped from, with its fingerprint given.

    Left to itself, datasets fingerprints a new table by dill-pickling it, and dill finds a
    function's globals by disassembling it into a redirected sys.stdout; under Prefect's
    log_prints that disassembly reached the task log as ~18 lines of bytecode per split.
    """
    features = Features({"path": Value("string"), "label": ClassLabel(names=label_names)})
    columns = {"path": [clip.path for clip in clips], "label": [clip.label for clip in clips]}
    return Dataset(
        InMemoryTable.from_pydict(columns, schema=features.arrow_schema),
        info=DatasetInfo(features=features),
        fingerprint=fingerprint,
    )


class BadAudioError(ValueError):
    """Clips that passed the header scan but cannot be decoded into usable samples."""

    def __init__(self, bad: dict[str, str]):
        self.bad = dict(sorted(bad.items()))
        super().__init__(format_bad_files(self.bad, during="computing features"))


def build_feature_cache(
    manifest: Manifest,
    params: FeatureParams,
    cache_dir: Path,
    batch_size: int = 64,
    skip_bad_files: bool = False,
) -> tuple[FeatureCacheRef, bool]:
    """Return the cache for this manifest + params, computing it if needed; the bool is 'was a hit'.

    Clips that cannot be decoded stop the build with one error listing all of them, unless
    skip_bad_files, in which case they are left out, logged, and listed in the cache's `skipped`.
    """
    key = cache_key(manifest.fingerprint, params)
    root = Path(cache_dir) / "features"
    final = root / key
    ref = FeatureCacheRef(
        path=str(final),
        key=key,
        params=params,
        label_names=manifest.label_names,
        num_clips={split: len(manifest.split(split)) for split in manifest.splits},
    )
    scan_skipped = {item.path: item.reason for item in manifest.skipped}
    if file_sizes_match(final, key):
        meta = json.loads((final / META_FILE).read_text())
        if meta.get("skipped") and not skip_bad_files:
            raise BadAudioError(meta["skipped"])  # built by a lenient run; this run asked to stop
        skipped = {**scan_skipped, **meta.get("skipped", {})}
        ref = ref.model_copy(update={"num_clips": meta["num_clips"], "skipped": skipped, "warnings": meta["warnings"]})
        _log_warnings(ref)
        return ref, True
    with staged_folder(root, key, file_sizes_match, "feature cache") as staging:
        extractor = make_feature_extractor(params)
        features = arrow_features(params, manifest.label_names)
        num_clips, bad, notes = {}, {}, {}
        for split in manifest.splits:
            clips = manifest.split(split)
            table = _clip_table(clips, manifest.label_names, f"{key}-{split}-clips")
            arrow_file = staging / f"{split}.arrow"
            table.map(
                _featurize_batch,
                fn_kwargs={"extractor": extractor, "params": params, "bad": bad, "notes": notes},
                batched=True,
                batch_size=batch_size,
                features=features,
                cache_file_name=str(arrow_file),
                new_fingerprint=f"{key}-{split}",
                desc=f"Computing {split} features",
            )
            num_clips[split] = Dataset.from_file(str(arrow_file)).num_rows
        if bad and not skip_bad_files:
            raise BadAudioError(bad)
        for path, reason in sorted(bad.items()):
            logger.warning("skipping %s: %s", path, reason)
        if not all(num_clips.values()):
            raise BadAudioError(bad)
        ref = ref.model_copy(update={
            "num_clips": num_clips,
            "skipped": {**scan_skipped, **dict(sorted(bad.items()))},
            "warnings": dict(sorted(notes.items())),
        })
        meta = {
            "version": FEATURES_VERSION,
            "params": params.model_dump(),
            "label_names": manifest.label_names,
            "num_clips": ref.num_clips,
            "skipped": dict(sorted(bad.items())),
            "warnings": ref.warnings,  # so a cache hit names them too
            "manifest_fingerprint": manifest.fingerprint,
        }
        record_file_sizes(staging, key, meta)  # last: its presence (with matching sizes) marks a complete cache
    _log_warnings(ref)
    return ref, False


def _log_warnings(ref: FeatureCacheRef) -> None:
    for path, reason in ref.warnings.items():
        logger.warning("clip used, but check it: %s: %s", path, reason)


def has_test_split(ref: FeatureCacheRef) -> bool:
    """Whether the cache holds a test split (the run had data.test_dir)."""
    return TEST_SPLIT in ref.num_clips


def load_split(ref: FeatureCacheRef, split: str) -> Dataset:
    """Memory-map one split of a finished cache, formatted as torch tensors for the Trainer."""
    try:
        dataset = Dataset.from_file(str(Path(ref.path) / f"{split}.arrow"))
    except (pa.ArrowInvalid, OSError) as error:
        # Its size matched meta.json, so the bytes were overwritten in place (disk fault, a copy gone wrong).
        raise FeatureCacheCorrupt(
            f"feature cache {ref.path}/{split}.arrow cannot be read ({error}); delete the folder {ref.path} "
            "and run again: it is rebuilt from the audio"
        ) from error
    return dataset.with_format("torch", columns=["input_values", "label"])


class FeatureCacheCorrupt(ValueError):
    """A feature cache file of the right size that cannot be read; the message says which folder to delete."""
