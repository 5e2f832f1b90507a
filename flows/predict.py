"""Flow: predict labels for wav files with a published member or ensemble (also runs without Prefect)."""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.flags import apply_overrides
from lib.config import PredictConfig
from lib.evaluate.metrics import format_metrics
from lib.evaluate.predict import predict_to_csv


@flow(name="astft-predict", log_prints=True)
def predict(config: PredictConfig, overrides: list[str] | None = None) -> dict:
    """Write a CSV of file, predicted label and per-class probabilities.

    Args:
        config: the run's settings (its form in the UI).
        overrides: fields to change, as FIELD=VALUE with the CLI's --set rules, e.g. ["training.epochs=3"]: one
            field of a deployment's config changes without restating the rest.
    """
    config = apply_overrides(config, overrides)
    logger = get_run_logger()
    logger.info("predicting %s with the model(s) in %s on %s", config.input_path, config.model_path, config.device)
    summary = predict_to_csv(config)
    for warning in summary["warnings"]:  # lib logs them too, but outside the flow run's logger
        logger.warning("%s", warning)
    logger.info(
        "wrote %d predictions to %s with members %s; %d clips skipped",
        summary["predicted"], summary["csv"], ", ".join(summary["members"]), summary["skipped"],
    )
    if summary["not_in_ensemble"]:
        logger.info("not in ensemble.json, so not used: %s", ", ".join(summary["not_in_ensemble"]))
    if summary["scores"] is not None:
        logger.info("scored against the class folders (%d clips): %s", summary["scores"]["num_samples"],
                    format_metrics(summary["scores"]))
    create_markdown_artifact(
        key="predictions",
        markdown=f"Predicted {summary['predicted']} clips with {summary['members']}; CSV at `{summary['csv']}`"
        f" ({summary['skipped']} skipped).",
    )
    return summary


if __name__ == "__main__":
    from flows.cli import main

    sys.exit(main(["predict", *sys.argv[1:]]))
