"""`astft` command line: finetune, ensemble, pretrain, predict, demo.

Every flag of finetune, ensemble, pretrain and predict is generated from the pydantic configs in lib/config/:
`--section.field VALUE` for each field (help from its description, choices from its type), plus the
notebook-shaped short flags of SHORT_FLAGS. Precedence: defaults < `--config` preset < flags < `--set`.
"""

# Why argparse over `model_fields` and not pydantic-settings' CliSettingsSource (evaluated at 2.16.3):
# it builds the same grouped, dotted flags from the same models, but hands back every value as a string
# that only the final validation types, so `--batch-sizes 8,x` or `--epochs x` is caught after the
# preset is read rather than by the parser; it marks every field without a default "(required)" although
# a preset may fill it; it shows Python types as metavars ({Path,None}, list[int]); its short aliases
# (cli_shortcuts) cannot take their own syntax (--spec-augment FREQ,TIME, --member NAME=last_N) nor be
# checked against each other (--head-only with --train-last-n-layers). About 150 lines over the same
# pydantic metadata give parse-time errors, readable metavars and one help group per section, and add no
# dependency (pydantic-settings comes only through Prefect, and its CLI options still change between
# minor versions).

from __future__ import annotations

import argparse
import difflib
import functools
import json
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

import flows  # noqa: F401 - sets Prefect defaults before prefect is imported
from lib.config import (
    EnsembleConfig,
    FinetuneConfig,
    Freezing,
    PredictConfig,
    PretrainConfig,
    TrainingConfig,
)

# The notebook-shaped short flags (README, "Command line"): field path -> extra spelling of its flag.
# Only the spelling lives here; type, choices and help come from the field. A command gets the short
# flags of the fields its config has. Top-level fields need none: their generated flag is already short.
SHORT_FLAGS: dict[str, str] = {
    "data.train_dir": "--train-dir",
    "data.validation_dir": "--validation-dir",
    "data.test_dir": "--test-dir",
    "data.cache_dir": "--cache-dir",
    "data.quick_subsample": "--quick-subsample",
    "data.skip_bad_files": "--skip-bad-files",
    "data.fingerprint": "--fingerprint",
    "data.data_dirs": "--data-dir",
    "data.holdout_fraction": "--holdout-fraction",
    "model.ssl_checkpoint": "--ssl-checkpoint",
    "model.base_config": "--base-config",
    "model.head_only": "--head-only",
    "model.train_last_n_layers": "--train-last-n-layers",
    "model.pooling": "--pooling",
    "features.max_frames": "--max-frames",
    "training.epochs": "--epochs",
    "training.batch_size": "--batch-size",
    "training.batch_sizes": "--batch-sizes",
    "training.learning_rate": "--learning-rate",
    "training.warmup_steps": "--warmup-steps",
    "training.gradient_accumulation_steps": "--gradient-accumulation-steps",
    "training.metric_for_best_model": "--metric-for-best-model",
    "training.precision": "--precision",
    "training.device": "--device",
    "training.seed": "--seed",
    "training.dataloader_num_workers": "--dataloader-num-workers",
    "training.tensorboard": "--tensorboard",
    "training.num_processes": "--num-processes",
    "training.augmentation.mixup_probability": "--mixup",
    "training.augmentation.noise_std": "--noise-std",
    "training.augmentation.time_roll": "--time-roll",
    "training.checkpoint_every_steps": "--checkpoint-every-steps",
    "objective.mask_ratio": "--mask-ratio",
    "objective.masking": "--masking",
    "model_path": "--model",
    "input_path": "--input",
    "output_csv": "--output",
}

# Namespace attributes that set a config field are named FIELD + its dotted path; overrides_from_args
# collects exactly those, so a flag the user did not pass (default SUPPRESS: no attribute) never
# overrides the preset.
FIELD = "field:"
NULL = "null"


@dataclass(frozen=True)
class ValueType:
    """How the flag of one field reads its text, and how --help shows it."""

    parse: Callable[[str], Any]
    metavar: str
    switch: bool = False  # a plain bool: --flag / --no-flag, without a value
    plural: str | None = None  # set for scalars, which may also come as a comma-separated list
    example: str = ""


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _choice(choices: tuple[Any, ...]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        for choice in choices:
            if str(choice) == text:
                return choice
        raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from {', '.join(map(str, choices))})")

    return parse


def _comma_list(item: ValueType) -> Callable[[str], list[Any]]:
    """'8,16,32' -> [8, 16, 32]; range checks are the config's, so errors name the config field."""

    def parse(text: str) -> list[Any]:
        if text.strip() in ("", "null", "[]"):  # clears a list a preset set (e.g. seeds, sweep_last_n)
            return []
        try:
            return [item.parse(part.strip()) for part in text.split(",")]
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {item.plural} such as {item.example}, got {text!r}"
            ) from None

    return parse


def _yaml(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"expected a YAML or JSON value, got {text!r}") from None


def _or_null(inner: ValueType) -> ValueType:
    parse = inner.parse
    return ValueType(lambda text: None if text == NULL else parse(text), f"{inner.metavar}|{NULL}")


SCALARS = {
    int: ValueType(int, "N", plural="integers", example="8,16,32"),
    float: ValueType(float, "X", plural="numbers", example="0.5,0.25"),
    str: ValueType(str, "TEXT", plural="names", example="a,b"),
    Path: ValueType(str, "PATH", plural="paths", example="a,b"),
}


def _one_of(options: list[ValueType]) -> Callable[[str], Any]:
    """Reads the text as the first option that takes it ('auto' as a choice, '4' as a number)."""

    def parse(text: str) -> Any:
        for option in options:
            try:
                return option.parse(text)
            except (ValueError, argparse.ArgumentTypeError):
                continue
        raise argparse.ArgumentTypeError(f"expected {' or '.join(option.metavar for option in options)}, got {text!r}")

    return parse


def value_type(annotation: Any) -> ValueType:
    """The flag for a field type: bool a switch, Literal its choices, X | None also 'null', list[scalar]
    comma-separated, choices or a scalar ({auto}|N) either, and anything else (lists of sections,
    mappings) a YAML or JSON value."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation):
        rest = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(rest) == 1:
            return _or_null(value_type(rest[0]))
    if get_origin(annotation) in (Union, types.UnionType) and type(None) not in get_args(annotation):
        # choices first, so 'auto' is never read as a string scalar
        options = sorted((value_type(arg) for arg in get_args(annotation)), key=lambda o: not o.metavar.startswith("{"))
        if all(option.plural and not option.switch for option in options):
            return ValueType(_one_of(options), "|".join(option.metavar for option in options))
    if annotation is bool:
        return ValueType(boolean, "true|false", switch=True)
    if get_origin(annotation) is Literal:
        choices = get_args(annotation)
        names = [str(choice) for choice in choices]
        return ValueType(_choice(choices), "{" + ",".join(names) + "}", plural=f"values of {{{','.join(names)}}}",
                         example=",".join(names[:2]))
    if annotation in SCALARS:
        return SCALARS[annotation]
    if get_origin(annotation) is list and len(get_args(annotation)) == 1:
        item = value_type(get_args(annotation)[0])
        if item.plural:
            return ValueType(_comma_list(item), f"{item.metavar},...")
    return ValueType(_yaml, "YAML")


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def config_sections(
    model: type[BaseModel], prefix: str = ""
) -> Iterator[tuple[str, type[BaseModel], list[tuple[str, FieldInfo]]]]:
    """(section path, section model, its fields as (dotted path, field)): the top level ('') first, then
    every nested section, depth first, in declaration order."""
    fields = model.model_fields.items()
    own = [(prefix + name, field) for name, field in fields if not _is_section(field.annotation)]
    yield prefix.rstrip("."), model, own
    for name, field in fields:
        if _is_section(field.annotation):
            yield from config_sections(field.annotation, f"{prefix}{name}.")


@functools.cache  # built for several commands on every astft call, --help included
def field_types(model: type[BaseModel]) -> dict[str, ValueType]:
    return {path: value_type(field.annotation) for _, _, fields in config_sections(model) for path, field in fields}


def flag_name(path: str) -> str:
    return "--" + path.replace("_", "-")


def field_help(field: FieldInfo, preset: bool) -> str:
    text = (field.description or "").replace("%", "%%")
    if field.is_required():
        return f"{text} (required{', here or in the --config preset' if preset else ''})"
    default = field.default
    if field.default_factory is not None or default is None:
        return text
    shown = str(default).lower() if isinstance(default, bool) else str(default)
    return f"{text} (default: {','.join(map(str, default)) if isinstance(default, list) else shown})"


class Parser(argparse.ArgumentParser):
    """argparse, plus a check across two flags: the freezing modes are exclusive (Freezing's validator).
    Unlike a mutually exclusive group, `--no-head-only --train-last-n-layers 2` (over a preset) passes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.exclusive: list[tuple[argparse.Action, argparse.Action]] = []

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        for first, second in self.exclusive:
            if getattr(namespace, first.dest, None) and getattr(namespace, second.dest, None):
                self.error(f"argument {_shown(second)}: not allowed with argument {_shown(first)}")
        return namespace, extras


def _shown(action: argparse.Action) -> str:
    return "/".join(option for option in action.option_strings if not option.startswith("--no-"))


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """'--training.epochs, --epochs N' rather than Python 3.11's '--training.epochs N, --epochs N', and
    '--[no-]tensorboard' for a switch's pair of flags."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, argparse.BooleanOptionalAction):
            options = (option for option in action.option_strings if not option.startswith("--no-"))
            return ", ".join(f"--[no-]{option[2:]}" for option in options)
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {metavar}"


class SetFields(argparse.Action):
    """Stores the values of one flag in several fields (--spec-augment FREQ,TIME)."""

    def __init__(self, *args: Any, paths: tuple[str, ...], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.paths = paths

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        for path, value in zip(self.paths, values, strict=True):
            setattr(namespace, FIELD + path, value)


def add_config_flags(parser: Parser, model: type[BaseModel], preset: bool) -> dict[str, argparse._ArgumentGroup]:
    """A flag for every field of `model`, one help group per section; returns the groups by section path."""
    groups = {}
    for section, section_model, fields in config_sections(model):
        group = groups[section] = parser.add_argument_group(section or "top-level fields")
        actions = {}
        for path, field in fields:
            kind = value_type(field.annotation)
            names = [flag_name(path), *([SHORT_FLAGS[path]] if path in SHORT_FLAGS else [])]
            common = {"dest": FIELD + path, "default": argparse.SUPPRESS, "help": field_help(field, preset)}
            if kind.switch:
                actions[path] = group.add_argument(*names, action=argparse.BooleanOptionalAction, **common)
            else:
                required = field.is_required() and not preset
                actions[path] = group.add_argument(
                    *names, type=kind.parse, metavar=kind.metavar, required=required, **common
                )
        if issubclass(section_model, Freezing):
            prefix = f"{section}." if section else ""
            parser.exclusive.append((actions[prefix + "head_only"], actions[prefix + "train_last_n_layers"]))
    return groups


def mask_widths(text: str) -> list[int]:
    """'48,192' -> [48, 192]: the frequency and time mask widths of --spec-augment."""
    widths = _comma_list(SCALARS[int])(text)
    if len(widths) != 2:
        raise argparse.ArgumentTypeError(f"expected FREQ,TIME mask widths such as 48,192, got {text!r}")
    return widths


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


def add_shorthands(model: type[BaseModel], groups: dict[str, argparse._ArgumentGroup]) -> None:
    """Flags with a syntax of their own, shown beside the fields they set."""
    if "training.augmentation" in groups:
        paths = ("training.augmentation.freq_mask_bins", "training.augmentation.time_mask_frames")
        groups["training.augmentation"].add_argument(
            "--spec-augment", action=SetFields, paths=paths, type=mask_widths, metavar="FREQ,TIME",
            default=argparse.SUPPRESS, help=f"SpecAugment in one flag: sets {paths[0]} and {paths[1]}",
        )
    if "members" in model.model_fields:
        groups[""].add_argument(
            "--member", dest=FIELD + "members", action="append", type=parse_member, metavar="NAME=VARIANT",
            default=argparse.SUPPRESS,
            help="a member variant, repeatable: NAME=head_only | NAME=last_N | NAME=full (adds to --members)",
        )


def assignment_parser(fields: dict[str, ValueType]) -> Callable[[str], tuple[str, Any]]:
    """--set FIELD=VALUE: FIELD is a dotted path of the config, VALUE reads as that field's flag reads it."""

    def parse(text: str) -> tuple[str, Any]:
        name, sep, value = text.partition("=")
        path = name.strip().replace("-", "_")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected FIELD=VALUE such as training.epochs=3, got {text!r}")
        if path not in fields:
            leaf = path.rsplit(".", 1)[-1]
            close = [field for field in fields if field.rsplit(".", 1)[-1] == leaf]
            close += difflib.get_close_matches(path, [field for field in fields if field not in close], 2, 0.85)
            hint = f"did you mean {' or '.join(close)}?" if close else "--help lists them (a flag's name without --)"
            raise argparse.ArgumentTypeError(f"{name!r} is not a field of the config; {hint}")
        kind = fields[path]
        try:
            return path, kind.parse(value)
        except (ValueError, argparse.ArgumentTypeError) as error:
            detail = f" ({error})" if isinstance(error, argparse.ArgumentTypeError) else ""
            raise argparse.ArgumentTypeError(f"{text!r}: {path} takes {kind.metavar}{detail}") from None

    return parse


VALUES_HELP = """\
values: a list is comma-separated (--batch-sizes 8,16,32), null clears an optional field, a switch has
a --no- form (--no-skip-bad-files). Precedence: defaults < --config preset < flags < --set.
"""


def add_preset_command(commands: argparse._SubParsersAction, name: str, model: type[BaseModel], **kwargs: Any) -> None:
    """A command that runs `model`: --config, --set, and a flag for every field."""
    parser = commands.add_parser(
        name, usage="%(prog)s [--config FILE] [--set FIELD=VALUE]... [--FIELD VALUE]...",
        formatter_class=HelpFormatter, **kwargs,
    )
    sections = ", ".join(field for field in model.model_fields)
    parser.add_argument("--config", type=Path, metavar="FILE", help=f"YAML preset with any of: {sections}")
    parser.add_argument(
        "--set", dest="assignments", action="append", type=assignment_parser(field_types(model)),
        metavar="FIELD=VALUE", default=argparse.SUPPRESS,
        help="set any field by its dotted name, e.g. training.epochs=3 or training.augmentation.noise_std=0.02 "
        "(repeatable; the value reads as the field's flag reads it)",
    )
    add_shorthands(model, add_config_flags(parser, model, preset=True))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="astft", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add_preset_command(
        commands, "finetune", FinetuneConfig, help="fine-tune and publish one member",
        description="Fine-tune one member from an SSL checkpoint and publish it to OUTPUT_DIR/best/NAME/.",
        epilog=VALUES_HELP + """
examples:
  astft finetune --train-dir data/train --validation-dir data/validation \\
      --ssl-checkpoint ssl/checkpoint-1000 --name last2 --train-last-n-layers 2
  astft finetune --config deployments/presets/notebook.yaml --set training.epochs=3""",
    )
    add_preset_command(
        commands, "ensemble", EnsembleConfig, help="fine-tune several variants and soft-vote them",
        description="Fine-tune several freezing variants of one encoder and evaluate their soft vote.",
        epilog=VALUES_HELP + """
example:
  astft ensemble --config ensemble.yaml --member head=head_only --member last2=last_2 --member full=full""",
    )
    add_preset_command(
        commands,
        "pretrain",
        PretrainConfig,
        help="pretrain an encoder on unlabeled clips (SSAST masked patches)",
        description="Pretrain an AST encoder on folders of unlabeled clips with SSAST's joint discriminative and "
        "generative masked patch objective, and publish it to OUTPUT_DIR/ssl/NAME/, the --ssl-checkpoint that "
        "finetune and ensemble take.",
        epilog=VALUES_HELP
        + """
examples:
  astft pretrain --data-dir unlabeled/,data/train --name my-ssl --epochs 10
  astft pretrain --data-dir unlabeled/ --validation-dir data/validation --name my-ssl --masking cluster \\
      --set model.hidden_size=192 --set model.num_attention_heads=3 --set model.intermediate_size=768  # SSAST-tiny
  astft finetune --ssl-checkpoint ensemble/ssl/my-ssl --train-dir data/train \\
      --validation-dir data/validation --name m""",
    )
    predict = commands.add_parser(
        "predict", help="predict wav files with a member or an ensemble",
        usage="%(prog)s --model DIR --input PATH [--FIELD VALUE]...", formatter_class=HelpFormatter,
        description="Write a CSV of file, predicted label and per-class probabilities (runs without Prefect).",
    )
    add_config_flags(predict, PredictConfig, preset=False)
    demo = commands.add_parser(
        "demo", help="pretrain a tiny encoder on a small built-in synthetic example, then fine-tune from it",
        description="Synthesise a small labelled example (train, validation, test) and unlabeled clips under "
        "--dir, pretrain a tiny encoder on the train and unlabeled clips (the astft-pretrain flow, "
        "--pretrain-epochs), then fine-tune one member from it (astft-finetune, --epochs and --set), or with "
        "--ensemble four (the ensemble flow).",
    )
    demo.add_argument("--dir", type=Path, default=Path("demo-run"), help="where example data and outputs go")
    # 10: flows.demo.DEMO_PRETRAIN_EPOCHS (not imported here: it would load torch for --help)
    demo.add_argument("--pretrain-epochs", type=int, default=10, metavar="N",
                      help="training.epochs of the demo's pretraining (default: 10)")
    demo.add_argument("--epochs", type=int, default=20, metavar="N",
                      help="training.epochs of the demo's fine-tune (of each member with --ensemble; default: 20)")
    demo.add_argument("--device", choices=get_args(TrainingConfig.model_fields["device"].annotation), default="auto",
                      help="device of the pretraining and the fine-tune (default: auto)")
    demo.add_argument(
        "--set", dest="assignments", action="append", type=assignment_parser(field_types(FinetuneConfig)),
        metavar="FIELD=VALUE", default=argparse.SUPPRESS, help="change any field of the demo's fine-tune, e.g. "
        "training.augmentation.mixup_probability=0.5 (repeatable; the pretraining takes only --pretrain-epochs "
        "and --device)",
    )
    demo.add_argument(
        "--ensemble", action="store_true",
        help="run the ensemble flow instead: 4 variants (last 1 and 2 layers, seeds 1 and 2), greedy selection",
    )
    return parser


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields set on the command line, nested as in the config: the flags, then --set."""
    flags = [(dest.removeprefix(FIELD), value) for dest, value in vars(args).items() if dest.startswith(FIELD)]
    overrides: dict[str, Any] = {}
    for path, value in [*flags, *getattr(args, "assignments", [])]:
        *sections, name = path.split(".")
        target = overrides
        for section in sections:
            target = target.setdefault(section, {})
        target[name] = value
    # The freezing flags pick a variant, as the notebook's did: --head-only over a preset's layer count
    # (or the reverse) replaces it instead of making the two exclusive fields clash.
    model = overrides.get("model", {})
    if model.get("head_only") is True:
        model.setdefault("train_last_n_layers", 0)
    if model.get("train_last_n_layers"):
        model.setdefault("head_only", False)
    return overrides


def print_summary(summary: dict) -> None:
    print(f"\npublished member: {summary['published']}")
    test = summary.get("test_metrics")
    print("metrics (best epoch {}; temperature {:.3f} fitted on validation):".format(
        summary["best_epoch"], summary["temperature"]))
    print(f"  {'':>18}  {'validation':>10}" + (f"  {'test':>10}" if test else ""))
    for key, value in summary["metrics"].items():
        print(f"  {key:>18}: {value:>10.4f}" + (f"  {test[key]:>10.4f}" if test else ""))


def print_pretrain_summary(summary: dict) -> None:
    print(f"\npublished encoder: {summary['published']}")
    print(f"masked-patch figures after epoch {summary['epochs']} (accuracy: the discriminative head's picks):")
    print(f"  {'':>10}  {'train':>10}  {'validation':>10}")
    for key in ("nce", "mse", "total", "accuracy"):
        # None or absent: not measured (no masked patch was scored, e.g. validation clips all too short)
        train, validation = (
            "n/a" if summary[split].get(key) is None else f"{summary[split][key]:.4f}"
            for split in ("train", "validation")
        )
        print(f"  {key:>10}: {train:>10}  {validation:>10}")
    print(f"fine-tune from it: astft finetune --ssl-checkpoint {summary['published']} ...")


def preflight(config: FinetuneConfig | EnsembleConfig) -> None:
    """Plan the fine-tune before its flow runs: an error is one line here, not a flow run's traceback.
    Planning reads configs only, it writes nothing."""
    from lib.recipes.finetune import plan_ensemble, plan_run

    if isinstance(config, EnsembleConfig):
        plan_ensemble(config, trains_here=config.dispatch == "in_process")
    else:
        plan_run(config)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    from lib.config import deep_merge, load_config
    from lib.core.errors import (
        BadAudioError,
        CheckpointError,
        ConfigError,
        EnsembleError,
        FeatureCacheCorrupt,
        NonFiniteError,
        ScanError,
        TrainingOutOfMemory,
    )

    # Errors whose message already names the file or parameter and the fix: no traceback needed.
    expected = (
        ConfigError, CheckpointError, ScanError, EnsembleError, BadAudioError, FeatureCacheCorrupt, NonFiniteError,
        TrainingOutOfMemory,
    )

    config: FinetuneConfig | EnsembleConfig | None = None
    pretrain_config: PretrainConfig | None = None  # pretrain first (astft pretrain, astft demo)
    try:
        if args.command == "predict":
            # Prediction runs without Prefect: no server, no flow run, just the library.
            from lib.evaluate.predict import predict

            predict_config = load_config(PredictConfig, None, overrides_from_args(args))
            summary = predict(predict_config)
            print(f"wrote {summary['predicted']} predictions to {summary['csv']} ({summary['skipped']} skipped)")
            return 0
        if args.command == "demo":
            from flows.demo import (
                demo_config,
                demo_ensemble_config,
                demo_pretrain_config,
            )

            pretrain_config = demo_pretrain_config(args.dir, args.device, args.pretrain_epochs)
            config = (demo_ensemble_config if args.ensemble else demo_config)(args.dir, args.epochs, args.device)
            if overrides := overrides_from_args(args):
                config = load_config(type(config), None, deep_merge(config.model_dump(), overrides))
        elif args.command == "pretrain":
            pretrain_config = load_config(PretrainConfig, args.config, overrides_from_args(args))
        elif args.command == "ensemble":
            config = load_config(EnsembleConfig, args.config, overrides_from_args(args))
        else:
            config = load_config(FinetuneConfig, args.config, overrides_from_args(args))
        # Pre-flight: the flow plans again as its first step, but an error raised inside a flow run comes
        # with Prefect's traceback; here it is one line. (The demo's fine-tune is planned once its
        # pretraining has made the checkpoint it starts from.)
        if pretrain_config is not None:
            from lib.recipes.pretrain import plan_pretrain

            plan_pretrain(pretrain_config)
        else:
            preflight(config)
    except expected as error:
        print(f"astft: {error}", file=sys.stderr)
        return 2

    from flows import ServerStartTimeout, prefect_server_defaults
    from flows.ensemble import EnsembleMembersFailed

    try:
        with prefect_server_defaults():
            if pretrain_config is not None:
                from flows.pretrain import pretrain

                print_pretrain_summary(pretrain(pretrain_config))
                if config is None:
                    return 0
                preflight(config)
            if isinstance(config, EnsembleConfig):  # astft ensemble, astft demo --ensemble
                from flows.ensemble import ensemble

                leaderboard = ensemble(config)
                print_leaderboard(leaderboard)
                return 0
            from flows.finetune import finetune

            summary = finetune(config)
    except (*expected, EnsembleMembersFailed, ServerStartTimeout) as error:
        print(f"astft: {error}", file=sys.stderr)
        return 2
    print_summary(summary)
    if args.command == "demo":
        print(json.dumps({"published": summary["published"], **summary["metrics"]}))
    return 0


def print_leaderboard(leaderboard: dict) -> None:
    splits = [split for split in ("validation", "test") if split in leaderboard["ensemble"]]
    short = {"validation": "val", "test": "test"}
    columns = "".join(f" {short[split] + ' acc':>9} {short[split] + ' NLL':>9}" for split in splits)
    print(f"\n{'':<32} {'weight':>6}" + columns)
    for row in leaderboard["leaderboard"]:
        weight = "" if row["weight"] is None else f"{row['weight']:g}"
        scores = "".join(
            f" {row[split]['accuracy']:>9.4f} {row[split]['calibration']['after']['nll']:>9.4f}" for split in splits
        )
        print(f"{row['name']:<32} {weight:>6}{scores}")
    print(leaderboard["ensemble"]["verdict"])


if __name__ == "__main__":
    sys.exit(main())
