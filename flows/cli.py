"""`astft` command line: finetune, ensemble, predict, demo.

Flags override a YAML preset (`--config`), which overrides the defaults in lib/config.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, get_args

import flows  # noqa: F401 - sets Prefect defaults before prefect is imported
from lib.config import MetricName

# flag dest -> (section, field) in FinetuneConfig; None section = top level, "a.b" = nested section,
# a tuple of fields takes a flag's list of values in order
FLAG_FIELDS: dict[str, tuple[str | None, str | tuple[str, ...]]] = {
    "name": (None, "name"),
    "output_dir": (None, "output_dir"),
    "work_dir": (None, "work_dir"),
    "train_dir": ("data", "train_dir"),
    "validation_dir": ("data", "validation_dir"),
    "cache_dir": ("data", "cache_dir"),
    "quick_subsample": ("data", "quick_subsample"),
    "skip_bad_files": ("data", "skip_bad_files"),
    "fingerprint": ("data", "fingerprint"),
    "ssl_checkpoint": ("model", "ssl_checkpoint"),
    "base_config": ("model", "base_config"),
    "head_only": ("model", "head_only"),
    "train_last_n_layers": ("model", "train_last_n_layers"),
    "pooling": ("model", "pooling"),
    "max_frames": ("features", "max_frames"),
    "epochs": ("training", "epochs"),
    "batch_size": ("training", "batch_size"),
    "batch_sizes": ("training", "batch_sizes"),
    "learning_rate": ("training", "learning_rate"),
    "warmup_steps": ("training", "warmup_steps"),
    "gradient_accumulation_steps": ("training", "gradient_accumulation_steps"),
    "metric_for_best_model": ("training", "metric_for_best_model"),
    "precision": ("training", "precision"),
    "device": ("training", "device"),
    "seed": ("training", "seed"),
    "dataloader_num_workers": ("training", "dataloader_num_workers"),
    "tensorboard": ("training", "tensorboard"),
    "num_processes": ("training", "num_processes"),
    "spec_augment": ("training.augmentation", ("freq_mask_bins", "time_mask_frames")),
    "mixup": ("training.augmentation", "mixup_probability"),
    "noise_std": ("training.augmentation", "noise_std"),
    "time_roll": ("training.augmentation", "time_roll"),
}


def int_list(text: str) -> list[int]:
    """'8,16,32' -> [8, 16, 32]; range checks are the config's, so errors name the config field."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 8,16,32, got {text!r}") from None


def mask_widths(text: str) -> list[int]:
    """'48,192' -> [48, 192]: the frequency and time mask widths of --spec-augment."""
    widths = int_list(text)
    if len(widths) != 2:
        raise argparse.ArgumentTypeError(f"expected FREQ,TIME mask widths such as 48,192, got {text!r}")
    return widths


def _add_finetune_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML preset (sections: data, features, model, training)")
    parser.add_argument("--name", help="member name; published to <output-dir>/best/<name>/")
    parser.add_argument("--output-dir", help="root of published members (default: ensemble)")
    parser.add_argument("--work-dir", help="Trainer checkpoints and logs (default: <output-dir>/runs/<name>)")
    parser.add_argument("--train-dir", help="train/<class>/*.wav folder")
    parser.add_argument("--validation-dir", help="validation/<class>/*.wav folder")
    parser.add_argument("--cache-dir", help="feature/scan/encoder cache folder (default: .astft-cache)")
    parser.add_argument("--quick-subsample", action="store_true", default=None, help="keep every 10th clip")
    parser.add_argument("--skip-bad-files", action="store_true", default=None, help="skip unreadable clips")
    parser.add_argument(
        "--fingerprint", choices=["stat", "content"],
        help="how the scan notices changed clips: size+mtime (default) or a hash of every clip's bytes",
    )
    parser.add_argument("--ssl-checkpoint", help="folder with the SSL model.safetensors")
    parser.add_argument(
        "--base-config", help="AST config.json of the encoder; overrides the checkpoint folder's config.json"
    )
    freezing = parser.add_mutually_exclusive_group()
    freezing.add_argument("--head-only", action="store_true", default=None, help="train only the head")
    freezing.add_argument("--train-last-n-layers", type=int, help="train the last N layers (0 = full)")
    parser.add_argument("--pooling", choices=["mean", "mean_patches"])
    parser.add_argument(
        "--max-frames", type=int, help="feature frames per clip (default 128; 1024 = the notebook's AST length)"
    )
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, help="eval batch size, and train batch size without --batch-sizes")
    parser.add_argument(
        "--batch-sizes", type=int_list, help="per-epoch train batch sizes, e.g. 8,16,32 (the last one repeats)"
    )
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--warmup-steps", type=float, help="steps, or a fraction of all steps if < 1")
    parser.add_argument("--gradient-accumulation-steps", type=int)
    parser.add_argument("--metric-for-best-model", choices=get_args(MetricName))
    parser.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--seed", type=int)
    parser.add_argument("--dataloader-num-workers", type=int)
    parser.add_argument("--tensorboard", action="store_true", default=None)
    parser.add_argument("--num-processes", type=int, help="train this member on N GPUs with torchrun")
    augmentation = parser.add_argument_group("augmentation of training batches (AST recipe; all off by default)")
    augmentation.add_argument(
        "--spec-augment", type=mask_widths, metavar="FREQ,TIME",
        help="SpecAugment: one frequency and one time mask per clip, narrower than FREQ mel bins and TIME frames",
    )
    augmentation.add_argument("--mixup", type=float, metavar="P", help="mix each clip with another with probability P")
    augmentation.add_argument("--noise-std", type=float, help="add Gaussian noise of this std to the features")
    augmentation.add_argument("--time-roll", action="store_true", default=None, help="roll clips by -10..9 frames")


def overrides_from_args(
    args: argparse.Namespace, fields: dict[str, tuple[str | None, str | tuple[str, ...]]] = FLAG_FIELDS
) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for dest, (section, field) in fields.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        target = overrides
        for part in section.split(".") if section else ():
            target = target.setdefault(part, {})
        if isinstance(field, tuple):
            target.update(zip(field, value, strict=True))
        else:
            target[field] = value
    return overrides


def parse_member(text: str) -> dict[str, Any]:
    """NAME=head_only | NAME=last_N | NAME=full  ->  a MemberVariant dict."""
    name, _, variant = text.partition("=")
    if variant == "head_only":
        return {"name": name, "head_only": True}
    if variant == "full":
        return {"name": name}
    if variant.startswith("last_") and variant[5:].isdigit() and int(variant[5:]) > 0:
        return {"name": name, "train_last_n_layers": int(variant[5:])}
    raise argparse.ArgumentTypeError(f"--member {text!r}: expected NAME=head_only, NAME=last_N or NAME=full")


ENSEMBLE_FLAG_FIELDS: dict[str, tuple[str | None, str]] = {
    key: FLAG_FIELDS[key]
    for key in ("output_dir", "train_dir", "validation_dir", "cache_dir", "quick_subsample", "skip_bad_files",
                "fingerprint", "ssl_checkpoint", "base_config", "epochs", "batch_size", "learning_rate", "precision",
                "device", "seed")
} | {"dispatch": (None, "dispatch"), "member_deployment": (None, "member_deployment"), "members": (None, "members")}


def _add_ensemble_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML preset (data, features, model, training, members)")
    parser.add_argument("--member", dest="members", action="append", type=parse_member,
                        help="a member variant, repeatable: NAME=head_only | NAME=last_N | NAME=full")
    parser.add_argument("--dispatch", choices=["in_process", "deployments"])
    parser.add_argument("--member-deployment", help="flow-name/deployment-name used with --dispatch deployments")
    for flag in ("--output-dir", "--train-dir", "--validation-dir", "--cache-dir", "--ssl-checkpoint", "--base-config"):
        parser.add_argument(flag)
    parser.add_argument("--quick-subsample", action="store_true", default=None)
    parser.add_argument("--skip-bad-files", action="store_true", default=None)
    parser.add_argument("--fingerprint", choices=["stat", "content"])
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--seed", type=int)


def _add_predict_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", dest="model_path", required=True, help="member folder or ensemble folder (best/)")
    parser.add_argument("--input", dest="input_path", required=True, help="a .wav file or a folder of them")
    parser.add_argument("--output", dest="output_csv", default="predictions.csv", help="CSV to write")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--skip-bad-files", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="astft", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _add_finetune_flags(commands.add_parser("finetune", help="fine-tune and publish one member"))
    _add_ensemble_flags(commands.add_parser("ensemble", help="fine-tune several variants and soft-vote them"))
    _add_predict_flags(commands.add_parser("predict", help="predict wav files with a member or an ensemble"))
    demo = commands.add_parser("demo", help="run the flow on a small built-in synthetic example")
    demo.add_argument("--dir", type=Path, default=Path("demo-run"), help="where example data and outputs go")
    demo.add_argument("--epochs", type=int, default=20)
    demo.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    demo.add_argument(
        "--ensemble", action="store_true",
        help="run the ensemble flow instead: 4 variants (last 1 and 2 layers, seeds 1 and 2), greedy selection",
    )
    return parser


def print_summary(summary: dict) -> None:
    print(f"\npublished member: {summary['published']}")
    test = summary.get("test_metrics")
    print("metrics (best epoch {}; temperature {:.3f} fitted on validation):".format(
        summary["best_epoch"], summary["temperature"]))
    print(f"  {'':>18}  {'validation':>10}" + (f"  {'test':>10}" if test else ""))
    for key, value in summary["metrics"].items():
        print(f"  {key:>18}: {value:>10.4f}" + (f"  {test[key]:>10.4f}" if test else ""))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pydantic import ValidationError

    from lib.checkpoint import CheckpointError
    from lib.config import ConfigError, EnsembleConfig, FinetuneConfig, PredictConfig, format_validation_error, load_config
    from lib.ensemble import EnsembleError
    from lib.features import BadAudioError
    from lib.guards import NonFiniteError
    from lib.member import TrainingOutOfMemory
    from lib.scan import ScanError

    # Errors whose message already names the file or parameter and the fix: no traceback needed.
    expected = (
        ConfigError, CheckpointError, ScanError, EnsembleError, BadAudioError, NonFiniteError, TrainingOutOfMemory
    )

    try:
        if args.command == "predict":
            # Prediction runs without Prefect: no server, no flow run, just the library.
            from lib.predict import predict

            try:
                config = PredictConfig(**{key: getattr(args, key) for key in PredictConfig.model_fields})
            except ValidationError as error:
                raise ConfigError(format_validation_error(error, "arguments")) from error
            summary = predict(config)
            print(f"wrote {summary['predicted']} predictions to {summary['csv']} ({summary['skipped']} skipped)")
            return 0
        if args.command == "demo":
            from flows.demo import demo_config, demo_ensemble_config

            config = (demo_ensemble_config if args.ensemble else demo_config)(args.dir, args.epochs, args.device)
        elif args.command == "ensemble":
            config = load_config(EnsembleConfig, args.config, overrides_from_args(args, ENSEMBLE_FLAG_FIELDS))
        else:
            config = load_config(FinetuneConfig, args.config, overrides_from_args(args))
    except expected as error:
        print(f"astft: {error}", file=sys.stderr)
        return 2

    from flows.ensemble import EnsembleMembersFailed

    try:
        if isinstance(config, EnsembleConfig):  # astft ensemble, astft demo --ensemble
            from flows.ensemble import ensemble

            leaderboard = ensemble(config)
            print_leaderboard(leaderboard)
            return 0
        from flows.finetune import finetune

        summary = finetune(config)
    except (*expected, EnsembleMembersFailed) as error:
        print(f"astft: {error}", file=sys.stderr)
        return 2
    print_summary(summary)
    if args.command == "demo":
        print(json.dumps({"published": summary["published"], **summary["metrics"]}))
    return 0


def print_leaderboard(leaderboard: dict) -> None:
    splits = [split for split in ("validation", "test") if split in leaderboard["ensemble"]]
    short = {"validation": "val", "test": "test"}
    print(f"\n{'':<32} {'weight':>6}" + "".join(f" {short[split] + ' acc':>9} {short[split] + ' NLL':>9}" for split in splits))
    for row in leaderboard["leaderboard"]:
        weight = "" if row["weight"] is None else f"{row['weight']:g}"
        scores = "".join(
            f" {row[split]['accuracy']:>9.4f} {row[split]['calibration']['after']['nll']:>9.4f}" for split in splits
        )
        print(f"{row['name']:<32} {weight:>6}{scores}")
    print(leaderboard["ensemble"]["verdict"])


if __name__ == "__main__":
    sys.exit(main())
