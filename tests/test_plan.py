import pytest

from lib.config import ConfigError, DataConfig, FeatureConfig, FinetuneConfig, ModelConfig
from lib.plan import plan_run


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
    plan = plan_run(make_config(dataset_dirs, ssl_checkpoint, tmp_path, **features))
    assert plan.feature_params.max_frames == expected
    assert plan.encoder_architecture["max_length"] == expected


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
