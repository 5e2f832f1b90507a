"""Flow: cross-validation, one member per fold of the dataset on one scan and one feature cache, and the protocol's
figure: the mean and spread of the folds' scores (best/crossval.json, and a table in the UI)."""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.ensemble import _failure_reason, train_members_here
from flows.flags import apply_overrides
from lib.config import CrossvalConfig
from lib.core.errors import CrossvalFoldsFailed
from lib.data.layouts import dataset_folds
from lib.recipes.crossval import (
    FOLD_SCORES,
    finished_fold,
    other_members,
    plan_crossval,
    protocol_line,
    read_fold,
    summarize,
    write_summary,
)
from tasks.data import build_features, scan_folds
from tasks.ensemble import dispatch_member, member_work_pool
from tasks.member import prepare_encoder


@flow(name="astft-crossval", log_prints=True)
def crossval(config: CrossvalConfig, overrides: list[str] | None = None) -> dict:
    """Train one member per fold of the dataset (each fold validating once, the others training) with one recipe,
    publish each to OUTPUT_DIR/best/NAME-fold-N/, and report the mean and standard deviation over the folds.

    Args:
        config: the run's settings (its form in the UI).
        overrides: fields to change, as FIELD=VALUE with the CLI's --set rules, e.g. ["training.epochs=3"]: one
            field of a deployment's config changes without restating the rest.
    """
    config = apply_overrides(config, overrides)
    logger = get_run_logger()
    plans = plan_crossval(config, trains_here=config.dispatch == "in_process")
    first = next(iter(plans.values()))
    if others := other_members(first.publish_root, config.name):
        logger.warning(
            "%s also holds %s, not folds of %s: astft predict --model %s votes every member there; give each "
            "cross-validation its own --output-dir", first.publish_root, ", ".join(others[:5]), config.name,
            first.publish_root,
        )
    results: dict[str, dict] = {}
    failed: dict[str, str] = {}
    if config.dispatch == "in_process":
        # data and encoder once: every fold's member reads its view of the one feature cache
        features = build_features(first, scan_folds(first))
        encoder = prepare_encoder(first)
        views = {fold: features.for_fold(fold) for fold in plans}
        for fold, plan in plans.items():
            if (done := finished_fold(plan, views[fold])) is not None:
                results[fold] = done
                logger.info("%s: published already from this recipe and these clips (%s): kept", fold,
                            done["published"])
            elif (plan.publish_root / plan.config.name).exists():
                logger.info("%s: %s holds a member of another recipe or other clips: trained again", fold,
                            plan.publish_root / plan.config.name)
        todo = {plan.config.name: plan for fold, plan in plans.items() if fold not in results}
        published, failed_by_name = train_members_here(
            todo, {plan.config.name: views[fold] for fold, plan in plans.items()}, encoder, table="crossval-folds"
        )
        for fold, plan in plans.items():
            if plan.config.name in published:
                results[fold] = read_fold(plan)
            elif plan.config.name in failed_by_name:
                failed[fold] = failed_by_name[plan.config.name]
    else:  # each fold on a worker of the pool, which scans its fold and builds its features itself
        member_work_pool(config.member_deployment)
        futures = {fold: dispatch_member.submit(plan, config.member_deployment) for fold, plan in plans.items()}
        for fold, future in futures.items():
            future.wait()
            if future.state.is_completed():
                results[fold] = read_fold(plans[fold])
            else:
                failed[fold] = _failure_reason(future.state)
                logger.error("%s failed: %s", fold, failed[fold])

    source = dataset_folds(first.config.data, False, first.config.model.multi_label).source
    summary = summarize(dict(sorted(results.items(), key=lambda item: int(item[0].rsplit("-", 1)[1]))), failed,
                        source, config.data.quick_subsample)
    summary["file"] = str(write_summary(first.publish_root, summary))
    show_summary(summary)
    logger.info("%s; %s", protocol_line(summary), summary["file"])
    if failed:
        kept = f"the others were published and are reported in {summary['file']}" if results else "none finished"
        raise CrossvalFoldsFailed(f"{len(failed)} of {len(plans)} folds failed ({', '.join(failed)}); {kept}. "
                                  f"Reasons: {failed}")
    return summary


def show_summary(summary: dict) -> None:
    """The UI's view of a cross-validation: a row per fold, then the mean and the standard deviation."""
    rows = [
        {"fold": fold, "member": result["name"], "best epoch": result["best_epoch"],
         **{f"val {name}": round(result["metrics"][name], 4) for name in FOLD_SCORES if name in result["metrics"]},
         **{f"test {name}": round(result["test_metrics"][name], 4) for name in ("accuracy", "map")
            if name in result["test_metrics"]}}
        for fold, result in summary["folds"].items()
    ]
    for statistic in ("mean", "std"):
        rows.append({"fold": statistic, **{
            f"{short} {name}": round(summary[split][name][statistic], 4)
            for split, short, names in (("validation", "val", FOLD_SCORES), ("test", "test", ("accuracy", "map")))
            for name in names if name in summary[split]
        }})
    create_table_artifact(key="crossval", table=rows,
                          description="Each fold's scores on its held-out clips, then their mean and std (n - 1)")
    create_markdown_artifact(key="crossval-figure", markdown=f"**{protocol_line(summary)}**\n")


if __name__ == "__main__":
    from flows.cli import main

    sys.exit(main(["crossval", *sys.argv[1:]]))
