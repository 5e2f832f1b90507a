"""Ensemble tasks: dispatch a member to a work pool; calibrated, selected soft vote with artifacts."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State
from prefect.deployments import run_deployment
from prefect.states import Cancelled

from lib.core.errors import ConfigError
from lib.core.layout import CARD_FILE, ENSEMBLE_FILE, RUN_CONFIG_FILE
from lib.evaluate.ensemble import evaluate_ensemble
from lib.evaluate.members import read_member
from lib.evaluate.plots import png_data_uri
from lib.publish.card import dataset_name, ensemble_card
from lib.recipes.finetune import FinetunePlan


class MemberRunFailed(RuntimeError):
    """A member's deployment run ended in a non-completed state."""


def member_work_pool(deployment: str) -> str:
    """The work pool that runs the deployment members are dispatched to (said, since its runs wait there until a
    worker takes them); refused in one line where the server has no such deployment."""
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            raise ConfigError(
                f"member_deployment {deployment} is not on this Prefect server: deploy it (prefect deploy "
                "--prefect-file deployments/prefect.yaml --all), or set dispatch: in_process"
            ) from None
    pool = found.work_pool_name or "(none)"
    get_run_logger().info(
        "members run as runs of %s on work pool %s: they wait there until a worker takes them "
        "(prefect worker start --pool %s)", deployment, pool, pool,
    )
    return pool


# How often a dispatched member's run is looked at.
POLL_SECONDS = 2.0


def wait_for_run(flow_run_id) -> State | None:
    """The final state of a dispatched run, polled. Written here rather than run_deployment's own wait, which
    cannot be left: a Ctrl-C or SIGTERM ended the flow but the process then waited on this thread for ever (its
    run waiting for a worker). Once the main thread has ended, the run is cancelled and the wait given up."""
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(flow_run_id).state
            if state is not None and state.is_final():
                return state
            if not threading.main_thread().is_alive():  # the process is exiting: a Ctrl-C, SIGTERM or an error
                client.set_flow_run_state(flow_run_id, Cancelled(message="the astft run that dispatched it ended"),
                                          force=True)
                return client.read_flow_run(flow_run_id).state
            time.sleep(POLL_SECONDS)


@task(name="dispatch-member", cache_policy=NO_CACHE)
def dispatch_member(plan: FinetunePlan, deployment: str) -> str:
    """Run one member as a run of the member deployment (on any worker of its pool) and wait for it."""
    config = plan.config
    flow_run = run_deployment(
        name=deployment,
        parameters={"config": config.model_dump(mode="json")},
        timeout=0,  # created, not awaited: wait_for_run follows it, and lets go when this process ends
        tags=["astft-member", config.name],
    )
    state = wait_for_run(flow_run.id)
    if state is None or not state.is_completed():
        raise MemberRunFailed(
            f"member {config.name}: deployment run {flow_run.name} ended {state.name if state else 'without a state'}"
            f": {state.message if state else ''}"
        )
    get_run_logger().info("member %s trained by flow run %s", config.name, flow_run.name)
    return str(plan.publish_root / config.name)


def _confusion_markdown(report: dict) -> str:
    labels, matrix = report["confusion_matrix"]["labels"], report["confusion_matrix"]["matrix"]
    header = "| true \\ predicted | " + " | ".join(labels) + " |\n|---|" + "---|" * len(labels) + "\n"
    rows = "".join(
        f"| **{label}** | " + " | ".join(str(v) for v in row) + " |\n"
        for label, row in zip(labels, matrix, strict=True)
    )
    return header + rows


SHORT = {"validation": "val", "test": "test"}


def _table_row(row: dict, splits: list[str]) -> dict:
    """One leaderboard row for the table artifact, narrow enough for the UI at 1,400 px: who, weight, then
    accuracy and calibrated NLL with the splits side by side (validation first: it chose everything), and the gain
    over the best member. Temperatures, balanced accuracy, Brier and ECE are in ensemble.json."""
    cells = {"name": row["name"], "weight": row["weight"]}
    cells |= {f"{SHORT[split]} accuracy": round(row[split]["accuracy"], 4) for split in splits}
    cells |= {f"{SHORT[split]} NLL": round(row[split]["calibration"]["after"]["nll"], 4) for split in splits}
    gain = row.get("gain_over_best_member", {}).get(splits[-1])
    cells[f"{SHORT[splits[-1]]} gain"] = None if gain is None else round(gain["accuracy"], 4)
    return cells


@task(name="evaluate-ensemble", cache_policy=NO_CACHE)
def evaluate_ensemble_members(
    member_dirs: dict[str, str],
    best_root: Path,
    failed: dict[str, str],
    selection: str = "greedy",
    weights: dict[str, float] | None = None,
    thresholds: str = "per_class",
) -> dict:
    """Calibrate, select and soft-vote the members; write best/ensemble.json, its figures and the artifacts."""
    members = [read_member(Path(path)) for path in member_dirs.values()]
    weights = None if weights is None else {name: weights[name] for name in member_dirs}
    result = evaluate_ensemble(members, Path(best_root) / ENSEMBLE_FILE, failed, selection, weights, thresholds)
    if result.get("task") == "multi_label":
        return multi_label_artifacts(result, Path(best_root), failed, members)
    ensemble, splits = result["ensemble"], [split for split in ("validation", "test") if split in result["ensemble"]]
    create_table_artifact(
        key="ensemble-leaderboard",
        table=[_table_row(row, splits) for row in result["leaderboard"]],
        description=(
            "Every member, the plain mean and the selected ensemble: validation chose temperatures and weights"
            + ("; test is only reported" if "test" in splits else "")
        ),
    )
    weights_text = ", ".join(f"{name} x {weight:g}" for name, weight in ensemble["weights"].items())
    gains = "; ".join(
        f"{split}: accuracy {gain['accuracy']:+.4f}, NLL {-gain['nll']:+.4f}"
        for split, gain in ensemble["gain_over_best_member"].items()
    )
    failed_lines = "".join(f"- `{name}`: {reason}\n" for name, reason in failed.items())
    create_markdown_artifact(
        key="ensemble-confusion-matrix",
        markdown=(
            f"## Ensemble ({ensemble['selection']}) of {len(ensemble['weights'])} of {len(members)} members\n\n"
            f"**{ensemble['verdict']}**\n\nWeights: {weights_text}. Change against the best member "
            f"`{ensemble['best_member']}`: {gains}.\n\n"
            + "".join(
                f"### {split}: accuracy {ensemble[split]['accuracy']:.4f}, balanced accuracy "
                f"{ensemble[split]['balanced_accuracy']:.4f}\n\n{_confusion_markdown(ensemble[split])}\n"
                for split in splits
            )
            + (f"\n### Failed members\n{failed_lines}" if failed else "")
        ),
        description="The ensemble's verdict against its best member, weights and confusion matrices",
    )
    for key, title in (("leaderboard", "Leaderboard"), ("reliability", "Reliability (calibration)")):
        create_markdown_artifact(
            key=f"ensemble-{key}-plot",
            markdown=f"## {title}\n\n![{key}]({png_data_uri(Path(best_root) / result['plots'][key])})\n",
            description=f"{title} of the ensemble ({result['plots'][key]} beside {ENSEMBLE_FILE})",
        )
    write_ensemble_card(Path(best_root), result, members)
    get_run_logger().info("ensemble of %s: %s", weights_text, ensemble["verdict"])
    return result


def multi_label_artifacts(result: dict, best_root: Path, failed: dict[str, str], members: list) -> dict:
    """A multi-label ensemble's artifacts (leaderboard by mAP, verdict and per-class AP, its figures) and card."""
    ensemble, splits = result["ensemble"], [split for split in ("validation", "test") if split in result["ensemble"]]
    create_table_artifact(
        key="ensemble-leaderboard",
        table=[{"name": row["name"], "weight": row["weight"],
                **{f"{SHORT[split]} {key}": round(row[split][key], 4)
                   for split in splits for key in ("map", "micro_f1")},
                f"{SHORT[splits[-1]]} gain": round(row["gain_over_best_member"][splits[-1]]["map"], 4)
                if "gain_over_best_member" in row else None}
               for row in result["leaderboard"]],
        description="Every member, the plain mean and the selected ensemble by mAP: validation chose the weights and "
                    "thresholds" + ("; test is only reported" if "test" in splits else ""),
    )
    weights_text = ", ".join(f"{name} x {weight:g}" for name, weight in ensemble["weights"].items())
    per_class = "".join(
        f"### {split}: mAP {ensemble[split]['map']:.4f} (chance {ensemble[split]['chance_map']:.4f}), micro F1 "
        f"{ensemble[split]['micro_f1']:.4f}, macro F1 {ensemble[split]['macro_f1']:.4f}\n\n"
        "| class | AP | threshold | F1 |\n|---|---|---|---|\n" + "".join(
            f"| {name} | {_figure(entry['ap'])} | {entry['threshold']:.3f} | {_figure(entry['f1'])} |\n"
            for name, entry in ensemble[split]["per_class"].items()) + "\n"
        for split in splits
    )
    failed_lines = "".join(f"- `{name}`: {reason}\n" for name, reason in failed.items())
    create_markdown_artifact(
        key="ensemble-average-precision",
        markdown=(f"## Multi-label ensemble ({ensemble['selection']}) of {len(ensemble['weights'])} of {len(members)} "
                  f"members\n\n**{ensemble['verdict']}**\n\nWeights: {weights_text}.\n\n{per_class}"
                  + (f"\n### Failed members\n{failed_lines}" if failed else "")),
        description="The ensemble's verdict against its best member, weights, and per-class AP at its thresholds",
    )
    for key, title in (("leaderboard", "Leaderboard"), ("average_precision", "Average precision per class"),
                       ("precision_recall", "Precision-recall")):
        create_markdown_artifact(
            key=f"ensemble-{key.replace('_', '-')}-plot",
            markdown=f"## {title}\n\n![{key}]({png_data_uri(best_root / result['plots'][key])})\n",
            description=f"{title} of the ensemble ({result['plots'][key]} beside {ENSEMBLE_FILE})",
        )
    write_ensemble_card(best_root, result, members)
    get_run_logger().info("ensemble of %s: %s", weights_text, ensemble["verdict"])
    return result


def _figure(value: float | None) -> str:
    """A per-class figure, or "-" for a class without a positive clip (it has none)."""
    return "-" if value is None else f"{value:.4f}"


def write_ensemble_card(best_root: Path, result: dict, members: list) -> None:
    """best/README.md beside ensemble.json, renamed into place as it is (a reader never sees half of it)."""
    run_config = json.loads((Path(members[0].path) / RUN_CONFIG_FILE).read_text())
    dataset = dataset_name(run_config["data"])
    card = ensemble_card(f"{dataset} ensemble", result, result["label_names"], dataset, best_root)
    staged = best_root / f".{CARD_FILE}.{os.getpid()}.tmp"
    staged.write_text(card, encoding="utf-8")
    os.replace(staged, best_root / CARD_FILE)
