"""Flow: fine-tune one ensemble member from an SSL checkpoint and publish it."""

from __future__ import annotations

import sys

from prefect import flow

from lib.model.checkpoint import EncoderRef
from lib.config import FinetuneConfig
from lib.data.features import FeatureCacheRef
from lib.recipes.plan import RunPlan, plan_run
from tasks.data import build_features, scan_folders
from tasks.member import evaluate_member, prepare_encoder, publish, train_member


def shared_inputs(plan: RunPlan) -> tuple[FeatureCacheRef, EncoderRef]:
    """data: folder scan -> Arrow features; model: SSL checkpoint -> stripped encoder fitted to the
    feature length. Shared by every member of an ensemble."""
    data = plan.config.data
    manifest = scan_folders(data)
    features = build_features(manifest, plan.feature_params, data.cache_dir, data.skip_bad_files, data.feature_workers)
    encoder = prepare_encoder(plan.config.model, data.cache_dir, plan.feature_params.max_frames)
    return features, encoder


def run_member(plan: RunPlan, features, encoder) -> dict:
    """The member sub-DAG shared with the ensemble flow: train -> evaluate -> publish."""
    outcome = train_member(plan, features, encoder)
    evaluation = evaluate_member(plan, features, outcome)
    published = publish(plan, features, encoder, outcome, evaluation)
    return {
        "name": plan.config.name,
        "published": published,
        "freezing": plan.config.model.freezing,
        "best_epoch": outcome.best_epoch,
        "metrics": evaluation.metrics,
        "test_metrics": evaluation.test_metrics,
        "temperature": evaluation.temperature,
    }


@flow(name="astft-finetune", log_prints=True)
def finetune(config: FinetuneConfig) -> dict:
    """Fine-tune one AST member from an SSL checkpoint and publish it to <output_dir>/best/<name>/."""
    # validate: fail before any work on anything checkable up front
    plan = plan_run(config)
    # data and model inputs: scan -> features, checkpoint -> encoder
    features, encoder = shared_inputs(plan)
    # train -> evaluate -> publish (the publish task shows the member's metrics and plots as an artifact)
    return run_member(plan, features, encoder)


if __name__ == "__main__":
    from flows.cli import main

    sys.exit(main(["finetune", *sys.argv[1:]]))
