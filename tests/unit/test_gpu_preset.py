from pathlib import Path

from lib.config import FinetuneConfig, load_config
from lib.core.runtime import Runtime
from lib.train.arguments import finetune_arguments

PRESET = Path(__file__).parents[2] / "deployments" / "presets" / "gpu.yaml"
FLAGS = {"name": "m1", "data": {"train_dir": "t", "validation_dir": "v"}, "model": {"ssl_checkpoint": "ckpt"}}
H100 = Runtime(device="cuda", fp16=False, bf16=True, tf32=True)


def test_the_gpu_preset_pairs_a_batch_of_128_with_ssasts_learning_rate_for_it(tmp_path):
    config = load_config(FinetuneConfig, PRESET, FLAGS)

    training = config.training
    assert (training.batch_size, training.gradient_accumulation_steps, training.learning_rate) == (128, 1, 2.5e-4)
    assert (training.warmup_steps, training.deterministic, training.compile) == (0.05, False, False)
    assert config.data == FinetuneConfig.model_validate(FLAGS).data  # speed settings only: data comes from flags


def test_on_a_gpu_the_preset_steps_the_optimizer_once_per_batch_of_128_in_bf16(tmp_path):
    arguments = finetune_arguments(load_config(FinetuneConfig, PRESET, FLAGS).training, tmp_path, H100)

    assert (arguments["per_device_train_batch_size"], arguments["gradient_accumulation_steps"]) == (128, 1)
    assert (arguments["bf16"], arguments["optim"], arguments["dataloader_pin_memory"]) == (True, "adamw_torch_fused",
                                                                                          True)
