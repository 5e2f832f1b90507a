"""Data tasks: dataset scan (Prefect-cached by content fingerprint) and Arrow feature cache."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lib.core.errors import ScanError
from lib.core.hashing import digest
from lib.core.timing import phase
from lib.data.features import FeatureCacheRef, build_feature_cache
from lib.data.layouts import dataset_folders, dataset_folds, fingerprint_data, scan_data
from lib.data.scan import Manifest, fingerprint_folders, fingerprint_found, scan_listing
from lib.recipes.finetune import FinetunePlan
from lib.recipes.planning import Plan

SCAN_CACHE_VERSION = "4"  # bump when Manifest (or its module: results are pickled) or the scan rules change


def folder_scan_cache_key(prefix: str, listing: Callable[[], str], folders: Iterable[Path], options: str) -> str | None:
    """prefix + a digest of the folders' listing fingerprint, their absolute paths and the scan options.

    Never raises: folders that cannot be listed (missing, overlapping, unreadable) give no key, so the
    task runs uncached and raises the scan's own one-line error instead of Prefect logging a traceback
    for the key.
    """
    try:
        fingerprint = listing()
        # The manifest holds absolute clip paths: a moved dataset must not get the old location back.
        roots = "|".join(str(Path(folder).resolve()) for folder in folders)
    except (ScanError, OSError, RuntimeError):  # RuntimeError: resolve() of a symlink loop
        return None
    return prefix + digest(f"{fingerprint}|{roots}|{options}|{SCAN_CACHE_VERSION}", 32)


def scan_cache_key(context, parameters) -> str | None:
    """Listing fingerprint (path, size, mtime per clip; its bytes too with data.fingerprint='content') + scan options.

    Costs a stat per file, or one read of every clip under 'content'; no audio is decoded.
    (Without a test folder the key is what it was before test folders existed.)
    """
    config = parameters["plan"].config
    data, multi_label = config.data, config.model.multi_label
    layout = "" if data.layout == "folders" else (  # folders: the key it had before layouts existed
        f"|{data.layout}|{data.fold}|{data.path_column}|{data.label_column}|{data.split_column}|{data.fold_column}"
    )
    return folder_scan_cache_key(
        "astft-scan-",
        (lambda: fingerprint_folders(data.train_dir, data.validation_dir, data.fingerprint, data.test_dir))
        if data.layout == "folders" else (lambda: fingerprint_data(data, multi_label=multi_label)),
        dataset_folders(data),
        f"{data.quick_subsample}|{data.skip_bad_files}|{data.fingerprint}{layout}{multi_label_key(config)}"
        + (f"|folds={data.folds}|fold={data.fold}" if data.folds else ""),  # a fold cut from the split, or none
    )


def multi_label_key(config) -> str:
    """What a multi-label run adds to a scan's cache key (a single-label run's key is what it always was)."""
    return f"|multi_label|{config.data.label_separator}" if config.model.multi_label else ""


@task(name="scan-folders", cache_key_fn=scan_cache_key, persist_result=True)
def scan_folders(plan: FinetunePlan) -> Manifest:
    """Scan the dataset (train/validation/test class folders, or a dataset layout's files) into a manifest (cached
    while its clips and files are unchanged)."""
    data = plan.config.data
    logger = get_run_logger()
    with phase("scan"):
        manifest = scan_data(data, plan.config.model.multi_label)
    logger.info(
        "scanned %s clips, %d classes %s; ignored %s; skipped %d bad files",
        " / ".join(f"{len(manifest.split(split))} {split}" for split in manifest.splits), len(manifest.label_names),
        manifest.label_names, manifest.ignored or "nothing", len(manifest.skipped),
    )
    return manifest


def folds_scan_cache_key(context, parameters) -> str | None:
    """scan_cache_key for a cross-validation's scan: every fold of the dataset (data.fold, which each fold's plan
    sets, plays no part)."""
    config = parameters["plan"].config
    data, multi_label = config.data, config.model.multi_label
    return folder_scan_cache_key(
        "astft-folds-",
        lambda: fingerprint_found(dataset_folds(data, False, multi_label).all_folds(), data.fingerprint),
        dataset_folders(data),
        f"{data.quick_subsample}|{data.skip_bad_files}|{data.fingerprint}|{data.layout}|{data.folds}|"
        f"{data.path_column}|{data.label_column}|{data.split_column}|{data.fold_column}{multi_label_key(config)}",
    )


@task(name="scan-folds", cache_key_fn=folds_scan_cache_key, persist_result=True)
def scan_folds(plan: FinetunePlan) -> Manifest:
    """Scan every fold of the dataset once, each its own split (fold-1, ...), for a cross-validation."""
    data, multi_label = plan.config.data, plan.config.model.multi_label
    with phase("scan"):
        found = dataset_folds(data, multi_label=multi_label).all_folds()
        manifest = scan_listing(found, data.quick_subsample, data.skip_bad_files, data.fingerprint, multi_label)
    get_run_logger().info(
        "scanned %s clips, %d classes %s; skipped %d bad files",
        " / ".join(f"{len(manifest.split(split))} {split}" for split in manifest.splits), len(manifest.label_names),
        manifest.label_names, len(manifest.skipped),
    )
    return manifest


# The Arrow cache checks its own key and completeness on disk, so a Prefect cache on top would only
# risk handing out a path that has since been deleted.
@task(name="build-features", cache_policy=NO_CACHE)
def build_features(plan: Plan, manifest: Manifest) -> FeatureCacheRef:
    """Compute log-mel features for every clip once, as Arrow, keyed by manifest + feature params."""
    data, params = plan.config.data, plan.feature_params
    with phase("features"):
        ref, hit = build_feature_cache(
            manifest, params, data.cache_dir, skip_bad_files=data.skip_bad_files, workers=data.feature_workers
        )
    clips = " / ".join(f"{count} {split}" for split, count in ref.num_clips.items())
    get_run_logger().info(
        "%s feature cache %s (%s clips, %d frames x %d mel bins, %s)",
        "reused" if hit else "built", ref.path, clips, params.max_frames, params.num_mel_bins, params.storage_dtype,
    )
    if manifest.note:  # said on every run: the scan's own log is not repeated when its result is cached
        get_run_logger().info("%s", manifest.note)
    cut = "cropped (a random window in training, the centre otherwise)" if params.long_clips == "crop" else "trimmed"
    lengths = manifest.length_report(params.clip_seconds, cut=cut)
    if lengths:
        get_run_logger().info("%s", lengths)
    if ref.skipped:
        shown = "; ".join(f"{path} ({reason})" for path, reason in list(ref.skipped.items())[:3])
        more = f"; and {len(ref.skipped) - 3} more (member.json lists them all)" if len(ref.skipped) > 3 else ""
        get_run_logger().warning("%d clips skipped as bad files: %s%s", len(ref.skipped), shown, more)
    return ref
