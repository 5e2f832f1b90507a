"""Flow: pretrain an AST encoder on unlabeled clips (SSAST masked patches) and publish it as an SSL checkpoint."""

from __future__ import annotations

import sys

from prefect import flow

from flows.flags import apply_overrides
from lib.config import PretrainConfig
from lib.recipes.pretrain import plan_pretrain
from tasks.data import build_features
from tasks.pretrain import pretrain_encoder, publish_encoder, scan_unlabeled_folders


@flow(name="astft-pretrain", log_prints=True)
def pretrain(config: PretrainConfig, overrides: list[str] | None = None) -> dict:
    """Pretrain an AST encoder on folders of unlabeled clips and publish it to <output_dir>/ssl/<name>/.

    Args:
        config: the run's settings (its form in the UI).
        overrides: fields to change, as FIELD=VALUE with the CLI's --set rules, e.g. ["training.epochs=3"]: one
            field of a deployment's config changes without restating the rest.
    """
    config = apply_overrides(config, overrides)
    # validate: fail before any work on anything checkable up front
    plan = plan_pretrain(config)
    # data: folder scan (labels ignored) -> Arrow features, as fine-tuning computes them
    manifest = scan_unlabeled_folders(plan)
    features = build_features(plan, manifest)
    # train -> publish (the SSL checkpoint layout that --ssl-checkpoint loads)
    with plan.run_lock():  # one run per work dir, from its first checkpoint to the published encoder
        outcome = pretrain_encoder(plan, manifest, features)
        published = publish_encoder(plan, features, outcome)
    last = outcome.epochs[-1] if outcome.epochs else None
    return {
        "name": plan.config.name,
        "published": published,
        "epochs": len(outcome.epochs),
        "train": {"loss": last.train_loss, **last.train_metrics} if last else {},
        "validation": last.metrics if last else {},
    }


if __name__ == "__main__":
    from flows.cli import main

    sys.exit(main(["pretrain", *sys.argv[1:]]))
