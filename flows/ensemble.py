"""Flow: build an ensemble by fine-tuning one SSL checkpoint under several freezing variants."""

from __future__ import annotations

import sys
from collections.abc import Mapping

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.finetune import run_member, shared_inputs
from flows.flags import apply_overrides
from lib.config import EnsembleConfig
from lib.core.errors import EnsembleMembersFailed
from lib.core.layout import ENSEMBLE_FILE
from lib.data.features import FeatureCacheRef
from lib.evaluate.metrics import format_metrics
from lib.model.checkpoint import EncoderRef
from lib.recipes.finetune import FinetunePlan, plan_ensemble
from lib.train.launch import release_memory
from tasks.ensemble import dispatch_member, evaluate_ensemble_members, member_work_pool


@flow(name="astft-member", log_prints=True)
def member(plan: FinetunePlan, features: FeatureCacheRef, encoder: EncoderRef) -> dict:
    """Train, evaluate and publish one member on the shared features and encoder."""
    return run_member(plan, features, encoder)


def _failure_reason(state) -> str:
    try:
        state.result()
    except Exception as error:  # noqa: BLE001 - we report whatever ended the member
        return f"{type(error).__name__}: {error}"
    return state.message or state.name


def train_members_here(
    plans: dict[str, FinetunePlan], features: FeatureCacheRef | Mapping[str, FeatureCacheRef], encoder: EncoderRef,
    table: str = "ensemble-members",
) -> tuple[dict[str, str], dict[str, str]]:
    """Each member as a sub-run of this process, one after another: (published folders, failure reasons) by name.
    Each result is logged and added to the parent's members table (artifact key `table`) as it comes. features:
    one cache for all, or each member's (a cross-validation's fold views)."""
    logger = get_run_logger()
    published, failed, results = {}, {}, {}
    for name, plan in plans.items():
        inputs = features[name] if isinstance(features, Mapping) else features
        # the sub-run is named after its member in the UI (else a random name: "fervent-poodle")
        state = member.with_options(flow_run_name=f"member {name}")(plan, inputs, encoder, return_state=True)
        if state.is_completed():
            results[name] = state.result()
            published[name] = results[name]["published"]
            logger.info("member %s (%s): validation %s; published %s", name, plan.config.model.freezing,
                        format_metrics(results[name]["metrics"]), published[name])
        else:
            failed[name] = results[name] = _failure_reason(state)
            logger.error("member %s failed: %s", name, failed[name])
            del state
            release_memory()
        show_members(plans, results, table)
    return published, failed


def show_members(plans: dict[str, FinetunePlan], results: dict[str, dict | str], key: str = "ensemble-members"
                 ) -> None:
    """The parent run's table of members, updated as each one finishes: its scores, or why it failed."""
    rows = []
    for name, plan in plans.items():
        result = results.get(name)
        done = isinstance(result, dict)
        score = "map" if plan.config.model.multi_label else "accuracy"
        rows.append({
            "member": name, "freezing": plan.config.model.freezing,
            "status": "published" if done else "failed" if result else "waiting",
            f"val {score}": round(result["metrics"][score], 4) if done else None,
            f"test {score}": round(result["test_metrics"][score], 4) if done and result["test_metrics"] else None,
            "best epoch": result["best_epoch"] if done else None,
            "note": result if isinstance(result, str) else None,
        })
    create_table_artifact(key=key, table=rows,
                          description="Each member's result as it finishes (the leaderboard follows once all have)")


@flow(name="astft-ensemble", log_prints=True)
def ensemble(config: EnsembleConfig, overrides: list[str] | None = None) -> dict:
    """Fine-tune every member variant on shared features, publish each, and soft-vote the selected ones.

    Args:
        config: the run's settings (its form in the UI).
        overrides: fields to change, as FIELD=VALUE with the CLI's --set rules, e.g. ["training.epochs=3"]: one
            field of a deployment's config changes without restating the rest.
    """
    config = apply_overrides(config, overrides)
    logger = get_run_logger()
    # validate: every member's config (sweeps and seeds expanded), before any work
    # (dispatched members train on workers: their device and precision are resolved there, not here)
    plans = plan_ensemble(config, trains_here=config.dispatch == "in_process")
    first = next(iter(plans.values()))
    # data and encoder: computed once, shared by every member (their data/features/model sections are equal)
    features, encoder = shared_inputs(first)

    # members: a failing member does not stop the others
    if config.dispatch == "in_process":
        published, failed = train_members_here(plans, features, encoder)
    else:
        published, failed = {}, {}
        member_work_pool(config.member_deployment)
        futures = {name: dispatch_member.submit(plan, config.member_deployment) for name, plan in plans.items()}
        for name, future in futures.items():
            future.wait()
            if future.state.is_completed():
                published[name] = future.result()
            else:
                failed[name] = _failure_reason(future.state)
                logger.error("member %s failed: %s", name, failed[name])

    # ensemble: calibrated soft vote over the members that were published, selected on validation
    if not published:
        raise EnsembleMembersFailed(f"every member failed: {failed}")
    leaderboard = evaluate_ensemble_members(
        published, first.publish_root, failed, config.selection, config.weights, config.model.thresholds
    )
    if failed:
        raise EnsembleMembersFailed(
            f"{len(failed)} of {len(plans)} members failed ({', '.join(failed)}); the other members were published "
            f"and evaluated in {first.publish_root / ENSEMBLE_FILE}. Reasons: {failed}"
        )
    return leaderboard


if __name__ == "__main__":
    from flows.cli import main

    sys.exit(main(["ensemble", *sys.argv[1:]]))
