"""Command-line flags generated from the pydantic configs: `--section.field VALUE` for every field (help from
its description, choices and parsing from its type), the notebook's short flags (SHORT_FLAGS) and `--set`.

Precedence: defaults < `--config` preset < flags < `--set`; a flag left out never overrides the preset.
Why argparse over the config models rather than pydantic-settings' CLI: docs/decisions.md, "The CLI is argparse,
not pydantic-settings".
"""

from __future__ import annotations

import argparse
import difflib
import functools
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from lib.config import (
    Freezing,
)

# The notebook-shaped short flags (README, "Command line"): field path -> extra spelling of its flag.
# Only the spelling lives here; type, choices and help come from the field. A command gets the short
# flags of the fields its config has. Top-level fields need none: their generated flag is already short.
SHORT_FLAGS: dict[str, str] = {
    "data.layout": "--layout",
    "data.root": "--root",
    "data.fold": "--fold",
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
    "model.task": "--task",
    "model.thresholds": "--thresholds",
    "features.max_frames": "--max-frames",
    "features.clip_seconds": "--clip-seconds",
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
    "wait_for_work_dir": "--wait",
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
    if field.default_factory is not None or default is None or "(default " in text:  # the description says it
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


PROGRESS_BARS_VARIABLE = "ASTFT_PROGRESS_BARS"  # "1": --progress (lib.train.arguments reads it)


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of how a command runs, outside the run config: --debug, --progress and --ephemeral."""
    parser.add_argument(
        "--debug", action="store_true",
        help="show tracebacks on the terminal too (they always go to the log file that an error names)",
    )
    parser.add_argument(
        "--progress", action="store_true",
        help="show a progress bar over each run's training steps (by default one line per epoch says the progress)",
    )
    parser.add_argument(
        "--ephemeral", action="store_true",
        help="run on a temporary Prefect server of this run's own, gone when it ends, instead of the local server "
        "that astft keeps (without PREFECT_API_URL set; see astft server status)",
    )


def add_preset_command(commands: argparse._SubParsersAction, name: str, model: type[BaseModel], **kwargs: Any) -> None:
    """A command that runs `model`: --config, --set, and a flag for every field."""
    parser = commands.add_parser(
        name, usage="%(prog)s [--config FILE] [--set FIELD=VALUE]... [--FIELD VALUE]...",
        formatter_class=HelpFormatter, **kwargs,
    )
    sections = ", ".join(field for field in model.model_fields)
    parser.add_argument("--config", type=Path, metavar="FILE", help=f"YAML preset with any of: {sections}")
    add_run_flags(parser)
    parser.add_argument(
        "--set", dest="assignments", action="append", type=assignment_parser(field_types(model)),
        metavar="FIELD=VALUE", default=argparse.SUPPRESS,
        help=f"set any field by its dotted name, e.g. {example_assignment(field_types(model))} "
        "(repeatable; the value reads as the field's flag reads it)",
    )
    add_shorthands(model, add_config_flags(parser, model, preset=True))


def example_assignment(fields: dict[str, ValueType]) -> str:
    """An example --set for a config that has these fields (pretraining has no augmentation section)."""
    examples = ("training.epochs=3", "training.augmentation.noise_std=0.02", "objective.mask_ratio=0.5")
    return " or ".join(example for example in examples if example.split("=")[0] in fields)


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


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def apply_overrides(config: ConfigT, overrides: Sequence[str] | None) -> ConfigT:
    """A flow's `overrides` parameter (["training.epochs=3"]) applied to its config by --set's rules, so a
    deployment run can change one field without restating the config."""
    if not overrides:
        return config
    from lib.config import deep_merge, load_config
    from lib.core.errors import ConfigError

    parse = assignment_parser(field_types(type(config)))
    try:
        assignments = [parse(text) for text in overrides]
    except argparse.ArgumentTypeError as error:
        raise ConfigError(f"overrides: {error}") from None
    nested = overrides_from_args(argparse.Namespace(assignments=assignments))
    # exclude_unset: a default left as it was stays a default, which a validator may choose by what else is set
    # (model.task multi_label picks its best epoch by mAP unless told), as it does for --set
    return load_config(type(config), None, deep_merge(config.model_dump(exclude_unset=True), nested))
