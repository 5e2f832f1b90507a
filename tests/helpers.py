"""Helpers shared by test modules (fixtures live in conftest.py): tiny configs, random features, callbacks, a flow
run's logs and artifacts as the Prefect UI shows them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from datasets import Dataset
from transformers import TrainerCallback

from lib.core.runtime import resolve_runtime
from lib.example import tiny_ast_config
from lib.train.arguments import attention_implementation, speed_settings
from lib.train.classifier import classifier_trainer_setup
from lib.train.engine import run_trainer
from lib.train.schedule import epoch_batch_sizes

CPU = resolve_runtime("cpu", "auto")


def small_config(**overrides):
    """2 layers, 32 hidden, 64 mel bins x 64 frames: 27 tokens, trains in a second or two."""
    values = dict(hidden_size=32, intermediate_size=64, num_mel_bins=64, max_length=64)
    values.update(overrides)
    return tiny_ast_config(**values)


def random_features(count: int, seed: int, poison_rows: tuple[int, ...] = ()) -> Dataset:
    """count clips of 64 x 64 Gaussian features, labels 0, 1, 2, 0, ...; poison_rows hold 1e30 (finite, overflows)."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((count, 64, 64)).astype(np.float32)
    for row in poison_rows:
        values[row] = 1e30
    labels = [index % 3 for index in range(count)]
    return Dataset.from_dict({"input_values": values, "label": labels}).with_format("torch")


def run_logs(flow_run_id) -> list[str]:
    """Every log line of a flow run and its task runs, as the UI shows them."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    lines = []
    with get_client(sync_client=True) as client:
        while page := client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200, offset=len(lines),
            sort=LogSort.TIMESTAMP_ASC,
        ):
            lines += [log.message for log in page]
    return lines


def run_artifacts(flow_run_id) -> dict:
    """The flow run's artifacts by key: (type, data)."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {artifact.key: (artifact.type, artifact.data) for artifact in artifacts}


class StopAfterEpoch(TrainerCallback):
    """Ends training after `epoch` epochs, once that epoch's checkpoint is saved: a run killed there."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, args, state, control, **kwargs):
        if round(state.epoch) >= self.epoch:
            control.should_training_stop = True


def train_classifier(
    model, train, validation, processing_class, training, work_dir, train_log, resume_key, runtime,
    extra_callbacks=(), data_collator=None, save_best=None, on_epoch=None, owner=None,
) -> SimpleNamespace:
    """Fine-tune any classifier with the recipe's Trainer (lib.train.classifier.classifier_trainer_setup): the
    TrainerRun's fields, plus best_model_dir, the schedule's batch sizes and the resolved speed settings."""
    run = run_trainer(classifier_trainer_setup(
        model, train, validation, training, work_dir, runtime, resume_key, owner=owner, train_log=train_log,
        processing_class=processing_class, data_collator=data_collator, after_save=save_best, on_epoch=on_epoch,
        extra_callbacks=extra_callbacks,
    ))
    return SimpleNamespace(
        **run.model_dump(), best_model_dir=run.model_dir, batch_sizes=epoch_batch_sizes(training),
        speed=speed_settings(training, runtime, attention_implementation(model)),
    )


def plan_of(data, task: str = "single_label"):
    """What a task's cache key function reads of its plan parameter: plan.config.data and plan.config.model's task."""
    model = SimpleNamespace(task=task, multi_label=task == "multi_label")
    return SimpleNamespace(config=SimpleNamespace(data=data, model=model))
