import re
import sys

import pytest
import torch

from lib.config import DataConfig, FeatureConfig, FinetuneConfig, ModelConfig
from lib.core.errors import ConfigError
from lib.recipes.finetune import plan_run


def make_config(dataset_dirs, ssl_checkpoint, tmp_path, **features) -> FinetuneConfig:
    train_dir, validation_dir = dataset_dirs
    return FinetuneConfig(
        name="plan",
        output_dir=tmp_path,
        data=DataConfig(train_dir=train_dir, validation_dir=validation_dir),
        features=FeatureConfig(**features),
        model=ModelConfig(ssl_checkpoint=ssl_checkpoint),
    )


@pytest.mark.parametrize(
    ("features", "expected"),
    [({}, 128), ({"max_frames": None, "clip_seconds": 0.5}, 64), ({"max_frames": 100}, 100)],
)
def test_features_and_encoder_use_max_frames(dataset_dirs, ssl_checkpoint, tmp_path, features, expected):
    # the test checkpoint was built for 64 frames; the default is 128, null keeps the encoder's
    from lib.model.checkpoint import export_encoder

    plan = plan_run(make_config(dataset_dirs, ssl_checkpoint, tmp_path, **features))
    assert plan.feature_params.max_frames == expected
    # the encoder the run prepares (prepare-encoder) fits its positional embeddings to the same frames
    encoder, _ = export_encoder(ssl_checkpoint, None, tmp_path / "cache", plan.config.features.max_frames)
    assert encoder.report.position_grid.max_frames == expected


def test_max_frames_that_would_cut_the_clip_or_the_patch_is_rejected(dataset_dirs, ssl_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match=r"clip_seconds=2.0 makes 198 frames but features.max_frames is 128"):
        plan_run(make_config(dataset_dirs, ssl_checkpoint, tmp_path, clip_seconds=2.0))
    with pytest.raises(ConfigError, match=r"features.max_frames is 10, shorter than one 16-frame patch"):
        plan_run(make_config(dataset_dirs, ssl_checkpoint, tmp_path, max_frames=10, clip_seconds=0.1))


def test_masks_wider_than_the_features_are_rejected(dataset_dirs, ssl_checkpoint, tmp_path):
    config = make_config(dataset_dirs, ssl_checkpoint, tmp_path)
    config.training.augmentation.freq_mask_bins = 64  # the test encoder has 64 mel bins: allowed
    config.training.augmentation.time_mask_frames = 128
    assert plan_run(config).config.training.augmentation.freq_mask_bins == 64
    config.training.augmentation.freq_mask_bins = 65
    with pytest.raises(ConfigError, match=r"freq_mask_bins=65 .* must not exceed the features' 64 mel bins and 128"):
        plan_run(config)


def test_output_and_cache_dirs_that_are_files_are_rejected(dataset_dirs, ssl_checkpoint, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    config = make_config(dataset_dirs, ssl_checkpoint, tmp_path)
    with pytest.raises(ConfigError, match=r"output_dir \(--output-dir\) .*a-file is a file, not a folder"):
        plan_run(config.model_copy(update={"output_dir": a_file}))
    with pytest.raises(ConfigError, match=r"output_dir \(--output-dir\) .*a-file/out: .*a-file is a file"):
        plan_run(config.model_copy(update={"output_dir": a_file / "out"}))
    config.data.cache_dir = a_file
    with pytest.raises(ConfigError, match=r"data.cache_dir \(--cache-dir\) .*a-file is a file, not a folder"):
        plan_run(config)


@pytest.mark.parametrize("split", ["train_dir", "validation_dir", "test_dir"])
@pytest.mark.parametrize("field", ["output_dir", "cache_dir"])
def test_outputs_inside_a_data_folder_are_rejected(dataset_dirs, test_split, ssl_checkpoint, tmp_path, split, field):
    # the scan would take <output_dir>/best/ or the cache for a class folder on the next run
    config = make_config(dataset_dirs, ssl_checkpoint, tmp_path)
    config.data.test_dir = test_split
    inside = getattr(config.data, split) / "results"
    if field == "output_dir":
        config.output_dir = inside
    else:
        config.data.cache_dir = inside
    with pytest.raises(ConfigError, match=rf"{field} .*results is inside data.{split} \(--{split.replace('_', '-')}\)"):
        plan_run(config)


def test_a_hidden_folder_inside_a_data_folder_is_allowed(dataset_dirs, ssl_checkpoint, tmp_path):
    # the scan skips hidden folders, so e.g. the default .astft-cache in a data folder is harmless
    config = make_config(dataset_dirs, ssl_checkpoint, tmp_path)
    config.data.cache_dir = dataset_dirs[0] / ".astft-cache"
    assert plan_run(config).config.data.cache_dir == dataset_dirs[0] / ".astft-cache"


def test_clips_shorter_than_one_fbank_window_are_rejected(dataset_dirs, ssl_checkpoint, tmp_path):
    # 20 ms at 16 kHz is 320 samples; the fbank's 25 ms window needs 400
    with pytest.raises(ConfigError, match=r"features.clip_seconds=0.02 is 320 samples at 16000 Hz, fewer than one "
                                          r"25 ms fbank window \(400 samples\); use at least 0.025"):
        plan_run(make_config(dataset_dirs, ssl_checkpoint, tmp_path, clip_seconds=0.02))
    plan = plan_run(make_config(dataset_dirs, ssl_checkpoint, tmp_path, clip_seconds=0.025))
    assert plan.feature_params.clip_seconds == 0.025


def test_ensemble_member_configs_get_the_same_checks(dataset_dirs, ssl_checkpoint, tmp_path):
    from lib.config import EnsembleConfig

    train_dir, validation_dir = dataset_dirs
    config = EnsembleConfig.model_validate({
        "output_dir": str(validation_dir / "ensemble"),
        "data": {"train_dir": str(train_dir), "validation_dir": str(validation_dir)},
        "model": {"ssl_checkpoint": str(ssl_checkpoint)},
        "members": [{"name": "full"}],
    })
    # flows/ensemble.py validates every member with plan_ensemble: plan_run on each member's config
    from lib.recipes.finetune import plan_ensemble

    with pytest.raises(ConfigError, match=r"output_dir .* is inside data.validation_dir"):
        plan_ensemble(config)


def test_a_missing_test_folder_is_named_before_any_work(dataset_dirs, ssl_checkpoint, tmp_path):
    config = make_config(dataset_dirs, ssl_checkpoint, tmp_path)
    config.data.test_dir = tmp_path / "no-test"
    with pytest.raises(ConfigError, match=r"data.test_dir \(--test-dir\) .*no-test: no such folder"):
        plan_run(config)


def test_the_sweep_expands_against_the_encoders_layer_count(dataset_dirs, ssl_checkpoint, tmp_path):
    from lib.config import EnsembleConfig
    from lib.recipes.finetune import plan_ensemble

    train_dir, validation_dir = dataset_dirs
    raw = {
        "output_dir": str(tmp_path / "out"),
        "data": {"train_dir": str(train_dir), "validation_dir": str(validation_dir)},
        "model": {"ssl_checkpoint": str(ssl_checkpoint)},
        "members": [{"name": "lr", "train_last_n_layers": 1, "learning_rate": 0.01}],
        "sweep_last_n": [0, 1, 2],  # the test encoder has 2 layers: head only, last 1, full
        "seeds": [3, 4],
    }
    plans = plan_ensemble(EnsembleConfig.model_validate(raw))
    freezing = {name: (plan.config.model.freezing, plan.config.training.seed) for name, plan in plans.items()}
    assert freezing == {
        "lr-s3": ("last_1_layers", 3), "lr-s4": ("last_1_layers", 4),
        "last-0-s3": ("head_only", 3), "last-0-s4": ("head_only", 4),
        "last-1-s3": ("last_1_layers", 3), "last-1-s4": ("last_1_layers", 4),
        "last-2-s3": ("full", 3), "last-2-s4": ("full", 4),
    }
    assert plans["lr-s3"].config.training.learning_rate == 0.01
    with pytest.raises(ConfigError, match=r"sweep_last_n \(--sweep-last-n\) has \[3, 12\] but the encoder .* has 2 "
                                          r"layers; use 0 \(head only\) to 2 \(full fine-tuning\)"):
        plan_ensemble(EnsembleConfig.model_validate({**raw, "sweep_last_n": [0, 3, 12]}))


def wrong_own_config(tmp_path):
    """A checkpoint whose own config.json says 4 layers, and a --base-config with the right 2."""
    import json

    from tests.factories import make_ssl_checkpoint
    from tests.helpers import small_config

    folder, reference = make_ssl_checkpoint(tmp_path / "ckpt", small_config(), seed=4)
    own = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**own, "num_hidden_layers": 4}))
    base = tmp_path / "base.json"
    base.write_text(json.dumps(own))
    return folder, base, reference


def test_an_explicit_base_config_wins_over_the_checkpoint_folders_config(tmp_path, dataset_dirs):
    from lib.core.errors import CheckpointError
    from lib.model.checkpoint import export_encoder, load_encoder

    folder, base, reference = wrong_own_config(tmp_path)
    # without --base-config the folder's config.json is used, and the error points at the flag
    with pytest.raises(CheckpointError, match=r"2 encoder layers but the config \(.*ckpt/config.json\) has "
                                              r"num_hidden_layers=4; pass --base-config"):
        load_encoder(folder)
    config = make_config(dataset_dirs, folder, tmp_path)
    config.model.base_config = base
    plan_run(config)
    # the plan checks against the base config's 2 layers, not the folder's 4
    config.model.train_last_n_layers = 3
    with pytest.raises(ConfigError, match=rf"encoder \({re.escape(str(base))}\) has 2 layers"):
        plan_run(config)
    ref, hit = export_encoder(folder, base, tmp_path / "cache", 64)
    assert not hit and ref.report.config_source == str(base)  # recorded in member.json ("encoder")
    state = reference.state_dict()
    loaded = load_encoder(folder, base)[0].state_dict()
    assert all(torch.equal(loaded[key], tensor) for key, tensor in state.items())


def test_the_encoder_cache_key_follows_the_config_actually_used(tmp_path):
    import json

    from lib.model.checkpoint import export_encoder

    folder, base, _ = wrong_own_config(tmp_path)
    first, _ = export_encoder(folder, base, tmp_path / "cache", 64)
    # the folder's own (unused) config.json changing does not invalidate the encoder...
    own = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**own, "num_hidden_layers": 6}))
    again, hit = export_encoder(folder, base, tmp_path / "cache", 64)
    assert hit and again.path == first.path
    # ...the base config changing does
    base.write_text(json.dumps({**json.loads(base.read_text()), "hidden_dropout_prob": 0.0}) + "\n")
    changed, hit = export_encoder(folder, base, tmp_path / "cache", 64)
    assert not hit and changed.path != first.path


def test_a_scale_out_parent_without_a_gpu_plans_cuda_members_and_leaves_the_runtime_to_the_worker(
    dataset_dirs, ssl_checkpoint, tmp_path, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the orchestration worker has no GPU
    config = make_config(dataset_dirs, ssl_checkpoint, tmp_path)
    config.training.device, config.training.precision = "cuda", "bf16"
    plan = plan_run(config, trains_here=False)
    assert plan.runtime is None and plan.config.training.device == "cuda"  # shipped as settings, not as a Runtime
    with pytest.raises(ConfigError, match="training.device=cuda but no CUDA device is visible"):
        plan_run(config)  # where it trains, the same settings are resolved against the machine
    config.training.device, config.training.precision = "cpu", "fp16"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        plan_run(config, trains_here=False)  # wrong everywhere: refused in the parent too


def test_a_work_dir_among_the_published_members_or_a_foreign_folder_at_the_members_name_is_refused(
    dataset_dirs, ssl_checkpoint, tmp_path
):
    config = make_config(dataset_dirs, ssl_checkpoint, tmp_path)
    config.work_dir = tmp_path / "best"
    with pytest.raises(ConfigError, match=r"work_dir \(--work-dir\) .*best is the published members"):
        plan_run(config)
    config.work_dir = None
    mine = tmp_path / "best" / "plan"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("not a member")
    with pytest.raises(ConfigError, match=r"best/plan is a plain folder, not a member astft published"):
        plan_run(config)
    assert (mine / "notes.txt").read_text() == "not a member"
    (mine / "member.json").write_text("{}")  # even holding member.json: astft publishes links, never folders
    with pytest.raises(ConfigError, match=r"best/plan is a plain folder"):
        plan_run(config)


def test_tensorboard_without_the_package_is_refused_by_plan_run(dataset_dirs, ssl_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the extra were not installed
    config = make_config(dataset_dirs, ssl_checkpoint, tmp_path)
    config.training.tensorboard = True
    with pytest.raises(ConfigError, match=r"training.tensorboard=true \(--tensorboard\) needs the tensorboard package"):
        plan_run(config)
