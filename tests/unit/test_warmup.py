import gc
import time
import weakref

import pytest
import torch.utils.data.dataloader as torch_dataloader
from transformers import ASTModel, TrainerCallback

from lib.config import TrainingConfig
from lib.core.runtime import Runtime, seed_everything
from lib.model.classifier import build_classifier
from lib.train.engine import frozen_heap
from lib.train.epochs import read_epoch_records
from tests.helpers import CPU, random_features, small_config, train_classifier


class FreezeCount(TrainerCallback):
    def __init__(self):
        self.at_train_begin = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.at_train_begin = gc.get_freeze_count()


def train(tmp_path, workers: int = 0, extra_callbacks=(), model=None, runtime=CPU, epochs: int = 2):
    seed_everything(0, True)
    model = model or build_classifier(ASTModel(small_config()), ["a", "b", "c"])
    config = TrainingConfig(
        epochs=epochs, batch_size=4, learning_rate=1e-3, warmup_steps=0, dataloader_num_workers=workers
    )
    return train_classifier(
        model, random_features(12, 0), random_features(6, 1), None, config,
        tmp_path / "work", tmp_path / "log.txt", "warmup", runtime, extra_callbacks=extra_callbacks,
    )


@pytest.mark.train
def test_the_objects_from_before_training_are_frozen_while_it_trains_and_returned_after(tmp_path):
    # Trainer starts with a full gc.collect() (accelerate's free_memory): frozen objects are not traversed by it
    heap = [[index] for index in range(200_000)]  # a flow process's Prefect and datasets objects, in miniature
    count = FreezeCount()
    before = len(gc.get_objects())

    train(tmp_path, extra_callbacks=[count])

    assert count.at_train_begin >= 0.9 * before >= len(heap)
    assert gc.get_freeze_count() == 0


class Alive(TrainerCallback):
    def __init__(self, earlier):
        self.earlier, self.at_train_begin = earlier, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.at_train_begin = [reference() is not None for reference in self.earlier]


@pytest.mark.train
def test_members_trained_one_after_another_free_the_earlier_members_models(tmp_path):
    # bf16 autocast: accelerate's wrapped forward refers back to its model, so only the cyclic collector frees it
    autocast = Runtime(device="cpu", fp16=False, bf16=True)
    earlier, seen = [], []
    for member in range(3):
        model = build_classifier(ASTModel(small_config()), ["a", "b", "c"])
        alive = Alive(list(earlier))
        train(tmp_path / str(member), model=model, runtime=autocast, extra_callbacks=[alive], epochs=1)
        earlier.append(weakref.ref(model))
        seen.append(alive.at_train_begin)
        del model

    assert seen == [[], [False], [False, False]]


def test_a_caller_that_froze_objects_keeps_them_frozen():
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with frozen_heap():
            assert gc.get_freeze_count() >= frozen
        assert gc.get_freeze_count() >= frozen > 0
    finally:
        gc.unfreeze()


@pytest.mark.train
def test_the_evaluation_workers_start_before_the_first_optimizer_step(tmp_path, monkeypatch):
    started = []  # when each worker-backed iterator (the train and the evaluation loader's) was created
    create = torch_dataloader._MultiProcessingDataLoaderIter.__init__

    def recorded(self, loader):
        started.append(time.perf_counter())
        create(self, loader)

    monkeypatch.setattr(torch_dataloader._MultiProcessingDataLoaderIter, "__init__", recorded)
    first_step = FirstStepTime()

    train(tmp_path, workers=2, extra_callbacks=[first_step])

    # persistent workers: one iterator per loader for the run, both up before the first evaluation is due
    assert len(started) == 2
    assert max(started) < first_step.at


class FirstStepTime(TrainerCallback):
    at = None

    def on_step_end(self, args, state, control, **kwargs):
        self.at = self.at or time.perf_counter()


@pytest.mark.train
def test_the_first_step_and_each_evaluation_are_timed_in_the_epoch_records_and_phases(tmp_path):
    outcome = train(tmp_path, workers=2)

    first, second = read_epoch_records(tmp_path / "work")
    assert first.first_step_seconds > 0 and second.first_step_seconds is None
    assert all(0 < record.evaluation_seconds < record.seconds for record in (first, second))
    assert "first_step_seconds" in first.line() and "eval_seconds" in second.line()
    phases = outcome.phases
    assert list(phases) == [
        "trainer set-up", "first optimizer step", "first evaluation", "training loop", "saving the best model",
    ]
    assert phases["first evaluation"] == pytest.approx(first.evaluation_seconds, abs=1e-3)
    assert phases["first optimizer step"] == pytest.approx(first.first_step_seconds, abs=1e-3)
