"""Serve the flows without a work pool: `python deployments/serve.py` (Ctrl-C to stop).

Serves the five flows from this process as deployments `astft-finetune/member`, `astft-ensemble/ensemble`,
`astft-crossval/crossval`, `astft-predict/predict` and `astft-pretrain/pretrain` (no schedules; parameters come
from the UI form or `prefect deployment run ... --params`). One run at a time, so use `dispatch: in_process`
for ensembles and cross-validations here: a scale-out parent would wait for runs this process cannot start.
Wiring only, no logic.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # allow running from any folder

from prefect import serve  # noqa: E402

from flows.crossval import crossval  # noqa: E402
from flows.ensemble import ensemble  # noqa: E402
from flows.finetune import finetune  # noqa: E402
from flows.predict import predict  # noqa: E402
from flows.pretrain import pretrain  # noqa: E402

if __name__ == "__main__":
    serve(
        finetune.to_deployment(name="member", tags=["astft"]),
        ensemble.to_deployment(name="ensemble", tags=["astft"]),
        crossval.to_deployment(name="crossval", tags=["astft"]),
        predict.to_deployment(name="predict", tags=["astft"]),
        pretrain.to_deployment(name="pretrain", tags=["astft"]),
        limit=1,  # one flow run at a time: members do not share a GPU by accident
    )
