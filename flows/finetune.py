"""Flow: fine-tune one ensemble member from an SSL checkpoint and publish it."""

from __future__ import annotations

import sys

from prefect import flow

from flows.flags import apply_overrides
from lib.config import FinetuneConfig
from lib.core.timing import phase
from lib.data.features import FeatureCacheRef
from lib.model.checkpoint import EncoderRef
from lib.recipes.finetune import FinetunePlan, plan_run
from tasks.data import build_features, scan_folders
from tasks.member import evaluate_member, prepare_encoder, publish_member, train_member


def shared_inputs(plan: FinetunePlan) -> tuple[FeatureCacheRef, EncoderRef]:
    """data: folder scan -> Arrow features; model: SSL checkpoint -> stripped encoder fitted to the
    feature length. Shared by every member of an ensemble."""
    manifest = scan_folders(plan)
    features = build_features(plan, manifest)
    encoder = prepare_encoder(plan)
    return features, encoder


def run_member(plan: FinetunePlan, features: FeatureCacheRef, encoder: EncoderRef) -> dict:
    """The member sub-DAG shared with the ensemble flow: train -> evaluate -> publish."""
    with plan.run_lock():  # one run per work dir, from its first checkpoint to the published member
        outcome = train_member(plan, features, encoder)
        evaluation = evaluate_member(plan, features, outcome)
        published = publish_member(plan, features, encoder, outcome, evaluation)
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
def finetune(config: FinetuneConfig, overrides: list[str] | None = None) -> dict:
    """Fine-tune one AST member from an SSL checkpoint and publish it to <output_dir>/best/<name>/.

    Args:
        config: the run's settings (its form in the UI).
        overrides: fields to change, as FIELD=VALUE with the CLI's --set rules, e.g. ["training.epochs=3"]: one
            field of a deployment's config changes without restating the rest.
    """
    config = apply_overrides(config, overrides)
    # validate: fail before any work on anything checkable up front
    with phase("plan"):
        plan = plan_run(config)
    # data and model inputs: scan -> features, checkpoint -> encoder
    features, encoder = shared_inputs(plan)
    # train -> evaluate -> publish (the publish task shows the member's metrics and plots as an artifact)
    return run_member(plan, features, encoder)


if __name__ == "__main__":
    from flows.cli import main

    sys.exit(main(["finetune", *sys.argv[1:]]))
