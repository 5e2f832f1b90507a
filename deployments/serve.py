"""Serve the flows without a work pool: `python deployments/serve.py` (Ctrl-C to stop).

Runs from this process the same deployments that prefect.yaml declares for work pools; trigger them
from the UI or with `prefect deployment run 'astft-ensemble/ensemble'`. Wiring only, no logic.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # allow running from any folder

from prefect import serve  # noqa: E402

from flows.ensemble import ensemble  # noqa: E402
from flows.finetune import finetune  # noqa: E402
from flows.predict import predict  # noqa: E402

if __name__ == "__main__":
    serve(
        finetune.to_deployment(name="member", tags=["astft"]),
        ensemble.to_deployment(name="ensemble", tags=["astft"]),
        predict.to_deployment(name="predict", tags=["astft"]),
        limit=1,  # one flow run at a time: members do not share a GPU by accident
    )
