"""Pretraining tasks: scan unlabeled folders, pretrain the encoder, publish it. Thin wrappers around lib/."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from lib.data.features import FeatureCacheRef
from lib.data.scan import Manifest
from lib.data.unlabeled import fingerprint_unlabeled, scan_unlabeled, unlabeled_roots
from lib.recipes import pretrain
from lib.recipes.pretrain import PretrainOutcome, PretrainPlan
from tasks.data import folder_scan_cache_key
from tasks.member import EpochReporter, retry_on_io_error


def unlabeled_scan_cache_key(context, parameters) -> str | None:
    """Listing fingerprint of every folder (a stat per clip; its bytes too under 'content') + scan options;
    no key where the folders cannot be listed (plan_pretrain refuses most before the flow starts)."""
    data = parameters["plan"].config.data
    roots = unlabeled_roots(data.data_dirs, data.validation_dir)
    return folder_scan_cache_key(
        "astft-scan-unlabeled-",
        lambda: fingerprint_unlabeled(roots, data.fingerprint),
        roots.values(),
        f"{data.holdout_fraction}|{data.skip_bad_files}|{data.fingerprint}",
    )


@task(name="scan-unlabeled", cache_key_fn=unlabeled_scan_cache_key, persist_result=True)
def scan_unlabeled_folders(plan: PretrainPlan) -> Manifest:
    """List the clips under the pretraining folders at any depth (labels ignored) and hold out the validation share."""
    data = plan.config.data
    manifest = scan_unlabeled(
        data.data_dirs, data.validation_dir, data.holdout_fraction, data.skip_bad_files, data.fingerprint
    )
    held_out = "from --validation-dir" if data.validation_dir else f"held out ({data.holdout_fraction:g} by path hash)"
    get_run_logger().info(
        "scanned %d train and %d validation clips (%s); ignored %s; skipped %d bad files",
        len(manifest.train), len(manifest.validation), held_out, manifest.ignored or "nothing", len(manifest.skipped),
    )
    return manifest


@task(name="pretrain-encoder", cache_policy=NO_CACHE)
def pretrain_encoder(plan: PretrainPlan, manifest: Manifest, features: FeatureCacheRef) -> PretrainOutcome:
    """Train the encoder with SSAST's masked patch objective (HF Trainer); resumes an interrupted run."""
    reporter = EpochReporter(plan.config.name, kind="encoder")
    return pretrain.pretrain_encoder(plan, manifest, features, on_epoch=reporter)


@task(
    name="publish-encoder",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_on_io_error,
)
def publish_encoder(plan: PretrainPlan, features: FeatureCacheRef, outcome: PretrainOutcome) -> str:
    """Put the encoder's SSL checkpoint, config and pretrain.json under <output>/ssl/<name>/ atomically."""
    destination = pretrain.publish_encoder(plan, features, outcome, str(flow_run.id) if flow_run.id else None)
    get_run_logger().info("published %s (fine-tune from it with --ssl-checkpoint %s)", destination, destination)
    return str(destination)
