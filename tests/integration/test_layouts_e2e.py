"""A tiny fine-tune per dataset layout, from the dataset as downloaded to a published member."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lib.config import DataConfig, FeatureConfig, FinetuneConfig, ModelConfig, TrainingConfig
from tests.layouts import CLASSES, make_csv_dataset, make_esc50, make_speech_commands, make_urbansound8k

pytestmark = pytest.mark.slow

BUILDERS = {
    "speech_commands": lambda root: make_speech_commands(root, speakers=4),
    "esc50": lambda root: make_esc50(root, seconds=2.0),  # longer than the 0.6 s kept: cropped
    "urbansound8k": make_urbansound8k,
    "csv": make_csv_dataset,
}


@pytest.mark.parametrize("layout", list(BUILDERS))
def test_each_layout_publishes_a_member_trained_and_scored_on_its_documented_split(
    layout, prefect_harness, tmp_path, ssl_checkpoint
):
    from flows.finetune import finetune

    expected = BUILDERS[layout](tmp_path / "dataset")
    config = FinetuneConfig(
        name=f"tiny-{layout}",
        output_dir=tmp_path / "out",
        data=DataConfig(layout=layout, root=tmp_path / "dataset", cache_dir=tmp_path / "cache"),
        # the tiny checkpoint's 64 mel bins x 64 frames: 0.6 s
        features=FeatureConfig(clip_seconds=0.6, max_frames=64),
        model=ModelConfig(ssl_checkpoint=ssl_checkpoint),
        training=TrainingConfig(epochs=2, batch_size=8, gradient_accumulation_steps=1, learning_rate=2e-3,
                                warmup_steps=0, device="cpu"),
    )
    if layout == "speech_commands":  # its _background_noise_/ mixed in, as TensorFlow's recipe does
        config.training.augmentation.background_noise_probability = 0.8
    finetune(config)
    member = tmp_path / "out" / "best" / f"tiny-{layout}"
    assert json.loads((member / "label_map.json").read_text())["id2label"] == {
        str(index): name for index, name in enumerate(CLASSES)}
    assert json.loads((member / "run_config.json").read_text())["data"]["layout"] == layout
    counts = ", ".join(f"{len(clips)} {split}" for split, clips in expected.items() if clips)
    fold = {"esc50": ", validated on fold 5", "urbansound8k": ", validated on fold 10"}.get(layout, "")  # the last
    card = (member / "README.md").read_text()
    assert f"- {layout} dataset `{tmp_path / 'dataset'}`{fold}: {counts} clips" in card
    if layout == "speech_commands":
        assert "- augmentation: background_noise_probability 0.8, background_noise_volume 0.1" in card
    for split in ("validation", "test"):
        if expected.get(split):
            labels = np.load(member / f"{split}_logits.npz")["labels"]
            assert sorted(labels) == sorted(CLASSES.index(label) for label in expected[split].values())
        else:
            assert not (member / f"{split}_logits.npz").exists()
