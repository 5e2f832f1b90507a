import json

import pytest

from lib.config import (
    DataConfig,
    FeatureConfig,
    FinetuneConfig,
    ModelConfig,
    TrainingConfig,
)
from lib.data.features import build_feature_cache
from lib.data.scan import scan_dataset
from lib.model.checkpoint import export_encoder
from lib.recipes.finetune import plan_run, train_member, train_member_distributed

pytestmark = pytest.mark.slow


def test_one_member_trains_on_two_processes_under_torchrun(tmp_path, dataset_dirs, ssl_checkpoint):
    train_dir, validation_dir = dataset_dirs
    config = FinetuneConfig(
        name="ddp", output_dir=tmp_path / "out",
        data=DataConfig(train_dir=train_dir, validation_dir=validation_dir, cache_dir=tmp_path / "cache"),
        features=FeatureConfig(max_frames=None, clip_seconds=0.6),  # 58 frames fit the tiny checkpoint's 64
            model=ModelConfig(ssl_checkpoint=ssl_checkpoint),
        training=TrainingConfig(epochs=2, batch_size=8, gradient_accumulation_steps=1, learning_rate=2e-3,
                                device="cpu", num_processes=2),
    )
    plan = plan_run(config)
    manifest = scan_dataset(train_dir, validation_dir)
    features, _ = build_feature_cache(manifest, plan.feature_params, tmp_path / "cache")
    encoder, _ = export_encoder(ssl_checkpoint, None, tmp_path / "cache")

    records = []
    outcome = train_member_distributed(plan, features, encoder, num_processes=2, on_epoch=records.append)

    # 48 clips / (8 per process x 2 processes) = 3 optimizer steps per epoch: the data was split.
    history = json.loads((plan.work_dir / "log_history.json").read_text())
    assert max(entry["step"] for entry in history) == 6
    assert outcome.epochs_run == 2 and outcome.best_metric is not None
    assert (plan.work_dir / "best-model" / "model.safetensors").is_file()
    log_lines = [line for line in (plan.work_dir / "train_logddp.txt").read_text().splitlines()
                 if line.startswith("epoch")]
    assert len(log_lines) == 2  # written by rank 0 only
    # ... and passed on to this process's on_epoch while the ranks trained (rank 0's records)
    assert [(r.epoch, r.epochs, r.step, r.batch_size) for r in records] == [(1, 2, 3, 8), (2, 2, 6, 8)]
    assert [record.line() for record in records] == log_lines

    in_process = []
    single = train_member(plan_run(config.model_copy(update={
        "name": "single", "training": config.training.model_copy(update={"num_processes": 1})})), features, encoder,
        on_epoch=in_process.append)
    assert single.epochs_run == 2
    assert [record.epoch for record in in_process] == [1, 2] and "accuracy" in in_process[0].metrics
