"""Benchmark: does SSAST pretraining on unlabeled clips help fine-tuning on a few labelled ones?

    python benchmarks/bench_pretrain.py                  # CPU, the demo's tiny AST, a few minutes on 2 cores
    python benchmarks/bench_pretrain.py --unlabeled 2000 --pretrain-epochs 40 --seeds 0,1,2,3,4

Synthesises (lib/example.py) a small labelled set (4 classes, --train-per-class clips each, plus
validation and test clips) and --unlabeled more clips of the same kinds from another random stream;
pretrains the tiny encoder on the unlabeled clips (lib/pretrain.py, SSAST joint objective, held-out
share scores the masked-patch accuracy), then fine-tunes the same labelled clips, with the same seeds
and budget, from
  (a) the encoder as pretraining starts it (random weights, same architecture and initialisation), and
  (b) the pretrained encoder,
each as a linear probe (head only, encoder frozen) and fully fine-tuned. Prints the masked-patch
accuracy per epoch and, per start and variant, the validation accuracy of the best epoch and the
test accuracy of that epoch's model (test clips choose nothing), for each seed and their mean.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: lib/ lives in the repository root
    sys.path.insert(0, str(REPO))

from lib.config import (  # noqa: E402
    DataConfig,
    FinetuneConfig,
    ModelConfig,
    PretrainConfig,
    TrainingConfig,
)
from lib.core.runtime import seed_everything  # noqa: E402
from lib.data.features import build_feature_cache, load_split  # noqa: E402
from lib.data.scan import TEST_SPLIT, scan_dataset  # noqa: E402
from lib.data.unlabeled import scan_unlabeled  # noqa: E402
from lib.evaluate.evaluation import evaluate_model  # noqa: E402
from lib.example import (  # noqa: E402
    make_example_dataset,
    make_example_test_split,
    make_unlabeled_clips,
    tiny_ast_config,
)
from lib.model.checkpoint import export_encoder  # noqa: E402
from lib.model.masked_patches import MaskedPatchModel  # noqa: E402
from lib.recipes.finetune import (  # noqa: E402
    plan_run,
    train_member_in_process,
)
from lib.recipes.pretrain import plan_pretrain, pretrain_encoder, publish_encoder  # noqa: E402

TINY = {key: getattr(tiny_ast_config(), key)
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")}
VARIANTS = {"linear probe": {"head_only": True}, "full fine-tune": {}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unlabeled", type=int, default=600, help="unlabeled clips to pretrain on")
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--masking", choices=("random", "cluster"), default="random")
    parser.add_argument("--train-per-class", type=int, default=4, help="labelled train clips per class")
    parser.add_argument("--eval-per-class", type=int, default=16, help="validation and test clips per class")
    parser.add_argument("--finetune-epochs", type=int, default=20)
    parser.add_argument("--probe-learning-rate", type=float, default=1e-2)
    parser.add_argument("--finetune-learning-rate", type=float, default=1e-3)
    parser.add_argument("--seeds", default="0,1,2", help="fine-tuning seeds (comma-separated)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    return parser.parse_args(argv)


def pretrain(root: Path, args: argparse.Namespace) -> tuple[Path, Path, list[dict]]:
    """Pretrain on the unlabeled clips; also write the encoder pretraining starts from. Both as SSL checkpoints."""
    config = PretrainConfig(
        name="bench-ssl",
        output_dir=root / "out",
        data={"data_dirs": [root / "unlabeled"], "holdout_fraction": 0.1, "cache_dir": root / "cache"},
        model=TINY,
        objective={"masking": args.masking},
        training={"epochs": args.pretrain_epochs, "batch_size": 16, "learning_rate": 1e-3, "warmup_steps": 0.1,
                  "device": args.device},
    )
    plan = plan_pretrain(config)
    data = plan.config.data
    manifest = scan_unlabeled(data.data_dirs, data.validation_dir, data.holdout_fraction)
    features, _ = build_feature_cache(manifest, plan.feature_params, data.cache_dir)
    # (a): the weights pretrain_encoder starts from (it seeds the same way before building the model)
    seed_everything(config.training.seed, config.training.deterministic)
    random_dir = root / "random-encoder"
    MaskedPatchModel(plan.encoder_config).save_pretrained(random_dir)
    outcome = pretrain_encoder(plan, manifest, features)
    published = publish_encoder(plan, features, outcome)
    curve = [{"epoch": r.epoch, "train": r.train_metrics, "validation": r.metrics} for r in outcome.epochs]
    return random_dir, published, curve


def finetune(root: Path, checkpoint: Path, start: str, variant: str, seed: int, args: argparse.Namespace) -> dict:
    """Fine-tune the labelled clips from `checkpoint`; best-epoch validation accuracy and that model's test accuracy."""
    head_only = VARIANTS[variant].get("head_only", False)
    name = f"{start}-{'probe' if head_only else 'full'}-s{seed}"
    config = FinetuneConfig(
        name=name,
        output_dir=root / "out",
        data=DataConfig(train_dir=root / "labelled" / "train", validation_dir=root / "labelled" / "validation",
                        test_dir=root / "labelled" / TEST_SPLIT, cache_dir=root / "cache"),
        model=ModelConfig(ssl_checkpoint=checkpoint, **VARIANTS[variant]),
        training=TrainingConfig(
            epochs=args.finetune_epochs, batch_size=8, gradient_accumulation_steps=1, warmup_steps=0.1, seed=seed,
            learning_rate=args.probe_learning_rate if head_only else args.finetune_learning_rate, device=args.device,
        ),
    )
    plan = plan_run(config)
    data = plan.config.data
    manifest = scan_dataset(data.train_dir, data.validation_dir, test_dir=data.test_dir)
    features, _ = build_feature_cache(manifest, plan.feature_params, data.cache_dir)
    encoder, _ = export_encoder(checkpoint, None, data.cache_dir, plan.feature_params.max_frames)
    outcome = train_member_in_process(plan, features, encoder)
    result = evaluate_model(
        Path(outcome.best_model_dir), load_split(features, "validation"), features.label_names, 32, plan.runtime,
        Path(outcome.work_dir) / "evaluation", test_dataset=load_split(features, TEST_SPLIT),
    )
    return {"start": start, "variant": variant, "seed": seed, "validation_accuracy": result.metrics["accuracy"],
            "test_accuracy": result.test_metrics["accuracy"], "best_epoch": outcome.best_epoch}


def format_report(figures: dict) -> str:
    lines = [f"masked-patch accuracy of the discriminative head per pretraining epoch "
             f"({figures['masked_per_clip']:.0f} masked patches a clip: chance {1 / figures['masked_per_clip']:.3f})",
             f"  {'epoch':>5}  {'train acc':>9}  {'held-out acc':>12}  {'held-out nce':>12}  {'held-out mse':>12}"]
    for epoch in figures["curve"]:
        train, held_out = epoch["train"], epoch["validation"]
        lines.append(f"  {epoch['epoch']:>5}  {train['accuracy']:>9.3f}  {held_out['accuracy']:>12.3f}  "
                     f"{held_out['nce']:>12.3f}  {held_out['mse']:>12.4f}")
    seeds = figures["seeds"]
    lines += ["", f"fine-tuning {figures['train_clips']} labelled clips (4 classes), "
              f"{figures['finetune_epochs']} epochs, "
              f"seeds {seeds}; accuracy on {figures['eval_clips']} validation / {figures['eval_clips']} test clips",
              f"  {'start':<12} {'variant':<15} " + " ".join(f"{'s' + str(s) + ' val/test':>14}" for s in seeds)
              + f" {'mean val':>9} {'mean test':>9}"]
    for start in ("random", "pretrained"):
        for variant in VARIANTS:
            runs = [r for r in figures["runs"] if r["start"] == start and r["variant"] == variant]
            cells = " ".join(f"{r['validation_accuracy']:>6.3f}/{r['test_accuracy']:<7.3f}" for r in runs)
            lines.append(f"  {start:<12} {variant:<15} {cells} "
                         f"{statistics.mean(r['validation_accuracy'] for r in runs):>9.3f} "
                         f"{statistics.mean(r['test_accuracy'] for r in runs):>9.3f}")
    lines.append(f"pretraining {figures['pretrain_seconds']:.0f} s on {figures['unlabeled']} unlabeled clips; "
                 f"fine-tuning {figures['finetune_seconds']:.0f} s in all")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    root = Path(args.dir or tempfile.mkdtemp(prefix="astft-bench-pretrain-"))
    try:
        make_example_dataset(root / "labelled", args.train_per_class, args.eval_per_class, seed=1)
        make_example_test_split(root / "labelled", args.eval_per_class, seed=1)
        make_unlabeled_clips(root / "unlabeled", args.unlabeled, seed=7)
        started = time.monotonic()
        random_dir, pretrained_dir, curve = pretrain(root, args)
        pretrained_seconds = time.monotonic() - started
        seeds = [int(seed) for seed in args.seeds.split(",")]
        started = time.monotonic()
        runs = [
            finetune(root, checkpoint, start, variant, seed, args)
            for seed in seeds
            for start, checkpoint in (("random", random_dir), ("pretrained", pretrained_dir))
            for variant in VARIANTS
        ]
        record = json.loads((pretrained_dir / "pretrain.json").read_text())
        figures = {
            "curve": curve, "runs": runs, "seeds": seeds, "unlabeled": args.unlabeled,
            # 1 s clips fill 98 of the 128 frames: 7 of 8 time columns are maskable, 44 of 56 patches masked
            "masked_per_clip": curve[0]["validation"]["masked_patches"] / record["clips"]["validation"],
            "train_clips": 4 * args.train_per_class, "eval_clips": 4 * args.eval_per_class,
            "finetune_epochs": args.finetune_epochs, "pretrain_seconds": pretrained_seconds,
            "finetune_seconds": time.monotonic() - started,
        }
        print(format_report(figures))
        return figures
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
