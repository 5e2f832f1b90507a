"""Ensemble tasks: dispatch a member to a work pool, and soft-vote evaluation with artifacts."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment

from lib.config import SUMMARY_METRICS, FinetuneConfig
from lib.ensemble import ENSEMBLE_FILE, evaluate_ensemble, read_member


class MemberRunFailed(RuntimeError):
    """A member's deployment run ended in a non-completed state."""


@task(name="dispatch-member", cache_policy=NO_CACHE)
def dispatch_member(config: FinetuneConfig, deployment: str) -> str:
    """Run one member as a run of the member deployment (on any worker of its pool) and wait for it."""
    flow_run = run_deployment(
        name=deployment,
        parameters={"config": config.model_dump(mode="json")},
        timeout=None,
        tags=["astft-member", config.name],
    )
    state = flow_run.state
    if state is None or not state.is_completed():
        raise MemberRunFailed(
            f"member {config.name}: deployment run {flow_run.name} ended {state.name if state else 'without a state'}"
            f": {state.message if state else ''}"
        )
    get_run_logger().info("member %s trained by flow run %s", config.name, flow_run.name)
    return str(Path(config.output_dir) / "best" / config.name)


def _confusion_markdown(report: dict) -> str:
    labels, matrix = report["confusion_matrix"]["labels"], report["confusion_matrix"]["matrix"]
    header = "| true \\ predicted | " + " | ".join(labels) + " |\n|---|" + "---|" * len(labels) + "\n"
    rows = "".join(f"| **{label}** | " + " | ".join(str(v) for v in row) + " |\n" for label, row in zip(labels, matrix))
    return header + rows


@task(name="evaluate-ensemble", cache_policy=NO_CACHE)
def evaluate_ensemble_members(member_dirs: dict[str, str], weights: dict[str, float], best_root: Path, failed: dict[str, str]) -> dict:
    """Soft-vote the members on validation; write best/ensemble.json and a leaderboard artifact."""
    members = [read_member(Path(path), weights[name]) for name, path in member_dirs.items()]
    leaderboard = evaluate_ensemble(members, Path(best_root) / ENSEMBLE_FILE, failed)
    columns = ("name", "freezing", "weight", *SUMMARY_METRICS)
    create_table_artifact(
        key="ensemble-leaderboard",
        table=[{key: (round(row[key], 4) if isinstance(row[key], float) else row[key]) for key in columns}
               for row in leaderboard["leaderboard"]],
        description="Validation metrics of every member and of the soft-vote ensemble",
    )
    ensemble = leaderboard["ensemble"]
    failed_lines = "".join(f"- `{name}`: {reason}\n" for name, reason in failed.items())
    create_markdown_artifact(
        key="ensemble-confusion-matrix",
        markdown=(
            f"## Ensemble of {len(members)} members: accuracy {ensemble['accuracy']:.4f}, "
            f"balanced accuracy {ensemble['balanced_accuracy']:.4f}\n\n{_confusion_markdown(ensemble)}\n"
            + (f"\n### Failed members\n{failed_lines}" if failed else "")
        ),
        description="Confusion matrix of the soft-vote ensemble on validation",
    )
    get_run_logger().info("ensemble accuracy %.4f over %d members", ensemble["accuracy"], len(members))
    return leaderboard
