"""Flow: predict labels for wav files with a published member or ensemble (also runs without Prefect)."""

from __future__ import annotations

import sys

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from lib.config import PredictConfig
from lib.ensemble import predict_files
from lib.training import resolve_runtime


@flow(name="astft-predict", log_prints=True)
def predict(config: PredictConfig) -> dict:
    """Write a CSV of file, predicted label and per-class probabilities."""
    summary = predict_files(
        config.model_path, config.input_path, config.output_csv,
        resolve_runtime(config.device, "fp32"), config.batch_size, config.skip_bad_files,
    )
    create_markdown_artifact(
        key="predictions",
        markdown=f"Predicted {summary['predicted']} clips with {summary['members']}; CSV at `{summary['csv']}`"
        f" ({summary['skipped']} skipped).",
    )
    return summary


if __name__ == "__main__":
    from flows.cli import main

    sys.exit(main(["predict", *sys.argv[1:]]))
