"""GPU checks (`pytest -m gpu`): real fine-tunes on CUDA in bf16, the trunk cache on the GPU, torchrun.

They skip where no CUDA device is visible, so the CPU suite collects and skips them. They use lib/
only (no Prefect, no network): benchmarks/gpu_check.sh runs them, with the training benchmark, on a
GPU machine that has torch but nothing else of this project (docs/gpu.md). ASTFT_GPU_TESTS_DEVICE=cpu
runs the same checks on a CPU in float32, to try the tests themselves where no GPU is (the AST-base
one takes most of an hour on 2 cores).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from lib.config import (
    DataConfig,
    FeatureConfig,
    FinetuneConfig,
    ModelConfig,
    TrainingConfig,
)
from lib.core.runtime import usable_cores
from lib.data.features import build_feature_cache, load_split
from lib.data.scan import scan_dataset
from lib.evaluate.evaluation import evaluate_model
from lib.example import (
    EXAMPLE_CLASSES,
    make_example_dataset,
    tiny_ast_config,
)
from lib.model.checkpoint import BUNDLED_CONFIG, export_encoder, read_ast_config
from lib.model.trunk import TrunkStates, compute_trunk
from lib.recipes.finetune import plan_run, train_member, train_member_distributed
from tests.factories import make_ssl_checkpoint  # noqa: E402

DEVICE = os.environ.get("ASTFT_GPU_TESTS_DEVICE", "cuda")
CUDA = DEVICE == "cuda"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(CUDA and not torch.cuda.is_available(), reason="needs a CUDA device (pytest -m gpu)"),
]

CHANCE = 1 / len(EXAMPLE_CLASSES)
MAX_FRAMES = 128  # the default crop, and the frame count of the GPU targets


@pytest.fixture(scope="module")
def gpu_data(tmp_path_factory):
    """The example's four separable classes, 48 train and 12 validation clips each, and their features."""
    root = tmp_path_factory.mktemp("gpu")
    train_dir, validation_dir = make_example_dataset(root / "data", train_per_class=48, validation_per_class=12, seed=5)
    return root, train_dir, validation_dir


def member_config(root: Path, data: tuple[Path, Path], checkpoint: Path, name: str, model: dict | None = None,
                  **training) -> FinetuneConfig:
    train_dir, validation_dir = data
    settings = dict(epochs=8, batch_size=16, gradient_accumulation_steps=1, learning_rate=1e-3, warmup_steps=0.1,
                    seed=0, save_total_limit=1, device=DEVICE)
    return FinetuneConfig(
        name=name, output_dir=root / "out",
        data=DataConfig(train_dir=train_dir, validation_dir=validation_dir, cache_dir=root / "cache"),
        features=FeatureConfig(max_frames=MAX_FRAMES),
        model=ModelConfig(ssl_checkpoint=checkpoint, **(model or {})),
        training=TrainingConfig(**{**settings, **training}),
    )


def prepare(config: FinetuneConfig):
    """What the flow's earlier tasks hand to training: the plan, the feature cache and the stripped encoder."""
    plan = plan_run(config)
    manifest = scan_dataset(config.data.train_dir, config.data.validation_dir)
    features, _ = build_feature_cache(manifest, plan.feature_params, config.data.cache_dir)
    encoder, _ = export_encoder(config.model.ssl_checkpoint, None, config.data.cache_dir, config.features.max_frames)
    return plan, features, encoder


def check_runtime_and_speed(outcome) -> None:
    """On CUDA: bf16 autocast and every GPU speed default on, as member.json records them."""
    speed = outcome.speed
    assert speed.attention == "sdpa" and speed.optimizer == "adamw_torch_fused" and not speed.compile
    if not CUDA:
        assert (outcome.device, outcome.precision, speed.tf32, speed.pin_memory) == ("cpu", "fp32", False, False)
        return
    assert (outcome.device, outcome.precision) == ("cuda", "bf16")
    assert speed.tf32 == (torch.cuda.get_device_capability()[0] >= 8)
    assert speed.pin_memory and speed.dataloader_num_workers == min(4, usable_cores() - 1)  # 'auto', one process


def check_best_model_reloads(outcome, features, plan, report_dir: Path) -> None:
    """best-model/ reloads and scores, under the same autocast, what Trainer scored for the best epoch."""
    validation = load_split(features, "validation")
    result = evaluate_model(
        Path(outcome.best_model_dir), validation, features.label_names, 16, plan.runtime, report_dir
    )
    one_clip = 1 / len(validation)
    assert result.metrics["accuracy"] == pytest.approx(outcome.best_metric, abs=one_clip + 1e-9)


def test_small_config_fine_tunes_in_bf16_on_cuda(gpu_data, tmp_path):
    root, *data = gpu_data
    checkpoint, _ = make_ssl_checkpoint(root / "ssl-small" / "checkpoint-1", tiny_ast_config(), seed=1)
    plan, features, encoder = prepare(member_config(root, data, checkpoint, "small"))
    outcome = train_member(plan, features, encoder)
    check_runtime_and_speed(outcome)
    assert not outcome.trunk_cache.used  # full fine-tuning
    assert outcome.best_metric >= 0.8, f"accuracy {outcome.best_metric} (chance {CHANCE})"
    check_best_model_reloads(outcome, features, plan, tmp_path / "report")


def test_ast_base_fine_tunes_in_bf16_on_cuda(gpu_data, tmp_path):
    root, *data = gpu_data
    # AST-base (86M parameters, 12 layers) saved for 1024 frames; loaded at 128 (positional embeddings cut)
    checkpoint, _ = make_ssl_checkpoint(root / "ssl-base" / "checkpoint-1", read_ast_config(BUNDLED_CONFIG), seed=2)
    config = member_config(root, data, checkpoint, "base", epochs=12, learning_rate=1e-4)
    plan, features, encoder = prepare(config)
    assert encoder.report.position_grid.adaptation == "centre_cut"
    outcome = train_member(plan, features, encoder)
    check_runtime_and_speed(outcome)
    assert outcome.parameters["trainable"] == outcome.parameters["total"] > 85_000_000
    # from random weights, in 144 steps: well above chance is what separable classes must give
    assert outcome.best_metric >= 2 * CHANCE, f"accuracy {outcome.best_metric} (chance {CHANCE})"
    check_best_model_reloads(outcome, features, plan, tmp_path / "report")


def test_trunk_cache_is_built_on_the_gpu_and_trains_the_tail(gpu_data, tmp_path):
    root, *data = gpu_data
    checkpoint, _ = make_ssl_checkpoint(root / "ssl-trunk" / "checkpoint-1", tiny_ast_config(), seed=3)
    config = member_config(root, data, checkpoint, "trunk", model={"train_last_n_layers": 1}, epochs=15,
                           learning_rate=3e-3)
    plan, features, encoder = prepare(config)
    outcome = train_member(plan, features, encoder)
    trunk = outcome.trunk_cache
    assert (trunk.used, trunk.layers, trunk.dtype, trunk.hit) == (True, 1, "float16", False), trunk.reason
    meta = json.loads((Path(trunk.path) / "meta.json").read_text())
    assert (meta["precision"], meta["attention"]) == (plan.runtime.precision, "sdpa")
    check_runtime_and_speed(outcome)
    assert outcome.best_metric >= 0.8, f"accuracy {outcome.best_metric} (chance {CHANCE})"
    # the cache holds what the frozen trunk computes on this device under the run's autocast
    from transformers import ASTModel

    trunk_encoder = ASTModel.from_pretrained(encoder.path).to(plan.runtime.device).eval()
    values = load_split(features, "validation")[:8]["input_values"].to(plan.runtime.device)
    dtype = plan.runtime.autocast_dtype
    with torch.no_grad(), torch.autocast(plan.runtime.device, dtype=dtype, enabled=dtype is not None):
        expected = compute_trunk(trunk_encoder, values, 1).float().cpu()
    cached = torch.stack([TrunkStates(trunk.path, "validation")[index]["hidden_states"] for index in range(8)]).float()
    # bf16 work (another batch size may round otherwise), stored in fp16
    assert torch.linalg.norm(cached - expected) / torch.linalg.norm(expected) < 2e-2
    # a second member over the same trunk reuses the cache
    again = train_member(plan_run(config.model_copy(update={"name": "trunk-again"})), features, encoder)
    assert again.trunk_cache.hit and again.trunk_cache.path == trunk.path
    check_best_model_reloads(outcome, features, plan, tmp_path / "report")


def test_one_member_trains_under_torchrun_on_one_gpu(gpu_data):
    root, *data = gpu_data
    checkpoint, _ = make_ssl_checkpoint(root / "ssl-ddp" / "checkpoint-1", tiny_ast_config(), seed=4)
    plan, features, encoder = prepare(member_config(root, data, checkpoint, "torchrun", epochs=3))
    records = []
    outcome = train_member_distributed(plan, features, encoder, num_processes=1, on_epoch=records.append)
    check_runtime_and_speed(outcome)
    assert outcome.epochs_run == 3 and [record.epoch for record in records] == [1, 2, 3]
    history = json.loads((plan.work_dir / "log_history.json").read_text())
    assert max(entry["step"] for entry in history) == 3 * 192 // 16  # 192 train clips, batch 16, one process
    assert outcome.best_metric > CHANCE


def test_compiled_training_on_cuda_learns_like_the_eager_one(gpu_data):
    root, *data = gpu_data
    checkpoint, _ = make_ssl_checkpoint(root / "ssl-compile" / "checkpoint-1", tiny_ast_config(), seed=1)
    outcomes = {}
    for compiled in (True, False):
        plan, features, encoder = prepare(
            member_config(root, data, checkpoint, f"compile-{compiled}", epochs=4, compile=compiled))
        outcomes[compiled] = train_member(plan, features, encoder)
    assert outcomes[True].speed.compile and not outcomes[False].speed.compile
    scores = {compiled: outcome.best_metric for compiled, outcome in outcomes.items()}
    assert min(scores.values()) > 2 * CHANCE, scores  # fused kernels round otherwise; both learn
