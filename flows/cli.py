"""astft command line: finetune, ensemble, crossval, pretrain, predict, demo.

Every flag of finetune, ensemble, pretrain and predict is generated from the pydantic configs in lib/config/
(flows.flags); this module declares the commands, plans a run before its flow starts (so a bad value is
one line, not a flow run's traceback), runs the flow and prints its summary.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import get_args

import flows  # noqa: F401 - sets Prefect defaults before prefect is imported
from flows.flags import (
    PROGRESS_BARS_VARIABLE,
    VALUES_HELP,
    HelpFormatter,
    Parser,
    add_config_flags,
    add_preset_command,
    add_run_flags,
    assignment_parser,
    field_types,
    overrides_from_args,
)
from lib.config import (
    CrossvalConfig,
    EnsembleConfig,
    FinetuneConfig,
    PredictConfig,
    PretrainConfig,
    TrainingConfig,
)


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
        commands, "crossval", CrossvalConfig, help="fine-tune one member per fold and report the mean over folds",
        description="Cross-validation: fine-tune one member per fold of the dataset (its own folds, e.g. ESC-50's 5, "
        "or --set data.folds=K stratified ones), each validated on its fold, publish them to "
        "OUTPUT_DIR/best/NAME-fold-N/ and report the mean and standard deviation over the folds "
        "(OUTPUT_DIR/best/crossval.json). A rerun keeps the folds already published from the same recipe.",
        epilog=VALUES_HELP + """
examples:
  astft crossval --config deployments/presets/esc50.yaml --set data.root=data/ESC-50-master \
      --set model.ssl_checkpoint=ensemble/ssl/my-ssl --name esc50
  astft crossval --train-dir data/train --validation-dir data/validation --set data.folds=5 \
      --ssl-checkpoint ssl/checkpoint-1000 --name cv5""",
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
    demo.add_argument(
        "--dir", type=Path, default=Path("demo-run"), help="where example data and outputs go (default: demo-run)"
    )
    # 10: lib.example.DEMO_PRETRAIN_EPOCHS (not imported here: it would load torch for --help)
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
    add_run_flags(demo)
    demo.add_argument(
        "--ensemble", action="store_true",
        help="run the ensemble flow instead: 4 variants (last 1 and 2 layers, seeds 1 and 2), greedy selection",
    )
    export = commands.add_parser(
        "export", help="export a member or the ensemble to ONNX: features in, calibrated probabilities out",
        description="Write one ONNX graph of a published member, or of the ensemble in OUTPUT_DIR/best/ (its members' "
        "temperatures and ensemble.json's weights inside the graph), with a dynamic batch axis; then check it "
        "against PyTorch on the validation clips. Needs the export extra: pip install -e '.[export]'.",
    )
    export.add_argument("--model", type=Path, required=True, metavar="DIR",
                        help="a published member folder, or the ensemble folder (OUTPUT_DIR/best/)")
    export.add_argument("--format", choices=["onnx"], default="onnx", help="the format (default: onnx)")
    export.add_argument("--output", metavar="FILE",
                        help="where to write it (default: DIR/probabilities.onnx, which predict --backend onnxruntime "
                        "reads)")
    server = commands.add_parser(
        "server", help="show or stop the local Prefect server that astft runs flows on, and its warm processes",
        description="astft runs its flows on a local Prefect server that outlives each run (started on first use, "
        "bound to 127.0.0.1, its database under ASTFT_HOME or ~/.astft/server), so runs stay visible in its UI; "
        "nothing is started where PREFECT_API_URL is set. Its heavy commands run in a warm process that has "
        "imported torch, transformers and datasets once (ended after 15 minutes unused; ASTFT_WARM=0: none); "
        "stop ends those too.",
    )
    server.add_argument("action", choices=["status", "stop"])
    server.add_argument("--force", action="store_true", help="stop it even while flow runs are running on it")
    return parser


def print_summary(summary: dict) -> None:
    print(f"\npublished member: {summary['published']}")
    test = summary.get("test_metrics")
    fitted = ("thresholds fitted on validation" if "map" in summary["metrics"]
              else f"temperature {summary['temperature']:.3f} fitted on validation")
    print(f"metrics (best epoch {summary['best_epoch']}; {fitted}):")
    print(f"  {'':>18}  {'validation':>10}" + (f"  {'test':>10}" if test else ""))
    for key, value in summary["metrics"].items():
        print(f"  {key:>18}: {value:>10.4f}" + (f"  {test[key]:>10.4f}" if test else ""))


def print_predict_summary(summary: dict) -> None:
    """The CSV, the members and weights used (and members left out), and scores where the clips sat in class folders."""
    count = summary["predicted"]
    print(f"wrote {count} prediction{'s' * (count != 1)} to {summary['csv']} ({summary['skipped']} skipped)")
    used = ", ".join(f"{name} (weight {summary['weights'][name]:g}"
                     + (")" if summary.get("multi_label") else f", temperature {summary['temperatures'][name]:.3f})")
                     for name in summary["members"])
    print(f"members: {used}")
    if len(summary["members"]) > 1 and not summary.get("ensemble_file", True):
        print("(no ensemble.json beside them: every member folder votes at weight 1)")
    if summary["not_in_ensemble"]:
        print(f"member folders ensemble.json does not select, so not used: {', '.join(summary['not_in_ensemble'])}")
    if summary.get("multi_label"):
        print("multi-label: predicted_labels lists each label at or above its threshold (" + ", ".join(
            f"{name} {threshold:.3f}" for name, threshold in summary["thresholds"].items()) + "), ';'-separated")
    if count <= len(summary.get("first_rows", [])):  # a few clips: their answers here, not only in the CSV
        for path, label, probability in summary["first_rows"]:
            print(f"  {path}: {label or '(none)'} (p={probability:.3f})" if not summary.get("multi_label")
                  else f"  {path}: {label or '(none above its threshold)'} (highest p={probability:.3f})")
    scores = summary["scores"]
    if scores is None:
        if summary.get("not_scored"):
            print(f"not scored against class folders: {summary['not_scored']}")
        return
    print(f"scored against the class folders ({scores['num_samples']} clips): "
          f"accuracy {scores['accuracy']:.4f}  balanced_accuracy {scores['balanced_accuracy']:.4f}  "
          f"f1 {scores['f1']:.4f}")
    labels, matrix = scores["confusion_matrix"]["labels"], scores["confusion_matrix"]["matrix"]
    width = max(len(label) for label in labels)
    print("confusion (rows: true class, columns: predicted):")
    print(f"  {'':>{width}}  " + "  ".join(f"{label:>{width}}" for label in labels))
    for label, row in zip(labels, matrix, strict=True):
        print(f"  {label:>{width}}  " + "  ".join(f"{count:>{width}}" for count in row))


def program() -> str:
    """The astft command as this process was started (.venv/bin/astft where astft is not on PATH), for the
    commands the CLI suggests: pasted back, they must run."""
    started_as = Path(sys.argv[0])
    if started_as.name != "astft":
        return "astft"  # python -m flows, or a test
    try:
        return str(started_as.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(started_as) if shutil.which("astft") is None else "astft"


def print_export_summary(summary: dict, model: Path) -> None:
    from lib.core.layout import ONNX_FILE

    members = ", ".join(f"{m['name']} (weight {m['weight']:g}, temperature {m['temperature']:.3f})"
                        for m in summary["members"])
    print(f"exported {members} to {summary['onnx']}")
    print(f"parity on {summary['parity_clips']} validation clips: max |p_onnx - p_torch| = "
          f"{summary['max_abs_difference']:.2e}")
    if Path(summary["onnx"]) == model / ONNX_FILE:
        print(f"predict with it: {program()} predict --model {model} --input CLIPS --backend onnxruntime")
    else:  # predict reads the graph from the model folder only
        print(f"(predict --backend onnxruntime reads {model / ONNX_FILE}: export without --output to predict with it)")


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


def preflight(config: FinetuneConfig | EnsembleConfig) -> list:
    """Plan the fine-tune before its flow runs: an error is one line here, not a flow run's traceback.
    Planning reads configs only, it writes nothing. Returns the plans of the members that train here."""
    from lib.recipes.finetune import plan_ensemble, plan_run

    if isinstance(config, CrossvalConfig):
        from lib.recipes.crossval import plan_crossval

        trains_here = config.dispatch == "in_process"
        plans = list(plan_crossval(config, trains_here=trains_here).values())
        return plans if trains_here else []
    if isinstance(config, EnsembleConfig):
        trains_here = config.dispatch == "in_process"
        plans = list(plan_ensemble(config, trains_here=trains_here).values())
        return plans if trains_here else []  # dispatched members take their locks on their workers
    return [plan_run(config)]


def hold_run_locks(locks: ExitStack, plans: list) -> None:
    """Take the work dir and publish slot of every run planned here, held until the CLI exits: a second run
    started at the same moment is refused in one line (or queued, --wait), not in its flow with a traceback."""
    for plan in plans:
        if plan.config.wait_for_work_dir and (busy := plan.waiting_for()):
            # said here: the log's handlers are not set up yet, and a silent wait looks like a hang
            print(f"astft: waiting (--wait): {busy}", file=sys.stderr, flush=True)
        locks.enter_context(plan.run_lock())


def entry() -> int:
    """The astft command (and python -m flows): run in the warm process where one serves this environment (see
    flows.warm), else main here and then a warm process started for the next command; the interpreter's exit
    without its last collection."""
    from flows import warm

    warmable = warm.enabled(sys.argv)
    if warmable:
        key, environ, path = warm.warm_key(), dict(os.environ), list(sys.path)  # as the command started
        code = warm.run_warm(sys.argv, key)
        if code is not None:
            return code
    code = main()
    if warmable:
        warm.start_in_background(key, environ, path)
    # Why by hand: at exit CPython collects every object left, and torch's, transformers' and Prefect's module graphs
    # make that 1.5-2.4 s on 2 cores (benchmarks/bench_peer.py's "exit"); frozen (gc.freeze, CPython's own), they
    # are left to the process's end. Not in main: tests call it in one long process, which must keep collecting.
    gc.freeze()
    return code


def main(argv: list[str] | None = None) -> int:
    from lib.core.timing import record, since_process_start

    record("start-up (imports)", since_process_start())
    args = build_parser().parse_args(argv)
    if getattr(args, "progress", False):  # read where the Trainer's arguments are made (lib.train.arguments)
        os.environ[PROGRESS_BARS_VARIABLE] = "1"

    from lib.core.errors import (
        BadAudioError,
        CheckpointError,
        ConfigError,
        DiskSpaceError,
        EnsembleError,
        FeatureCacheCorrupt,
        NonFiniteError,
        ScanError,
        TrainingOutOfMemory,
    )

    # Errors whose message already names the file or parameter and the fix: no traceback needed.
    expected = (
        ConfigError, CheckpointError, ScanError, EnsembleError, BadAudioError, FeatureCacheCorrupt, NonFiniteError,
        TrainingOutOfMemory, DiskSpaceError,
    )

    signal.signal(signal.SIGINT, _note_interrupt)
    with ExitStack() as locks:
        try:
            return run_command(args, locks, expected)
        except KeyboardInterrupt:  # while planning (the flows' own Ctrl-C is said in run_command)
            print("astft: interrupted before any run started", file=sys.stderr)
            return 130
        except BrokenPipeError:  # astft server status | head -1: the reader left, nothing more to say
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except Exception:  # a Ctrl-C that a lazy import turned into another error (transformers' ImportError)
            if not INTERRUPTED:
                raise
            print("astft: interrupted before any run started", file=sys.stderr)
            return 130


INTERRUPTED = []  # a Ctrl-C was pressed: whatever it breaks on its way out (Prefect's crash handling) is said as one


def _note_interrupt(number, frame) -> None:
    INTERRUPTED.append(time.monotonic())
    signal.default_int_handler(number, frame)


def run_command(args: argparse.Namespace, locks: ExitStack, expected: tuple[type[Exception], ...]) -> int:
    """Plan, take the runs' locks (held in `locks` until main returns), run the flows and print their results."""
    from lib.config import deep_merge, load_config
    from lib.core.errors import ConfigError, disk_error

    if args.command == "server":
        from flows import warm
        from flows.server import server_status, stop_local_server

        try:
            print(server_status() if args.action == "status" else stop_local_server(args.force))
        except expected as error:
            print(f"astft: {error}", file=sys.stderr)
            return 2
        if args.action == "status":
            print(warm.status())
        # the warm processes' imports are the memory astft holds between commands (their children running
        # commands finish them)
        elif stopped := warm.stop_all():
            print(f"stopped the warm process(es): pid {', '.join(map(str, stopped))}")
        return 0
    config: FinetuneConfig | EnsembleConfig | None = None
    pretrain_config: PretrainConfig | None = None  # pretrain first (astft pretrain, astft demo)
    try:
        if args.command == "export":
            from lib.evaluate.export import export_onnx

            if args.output is not None and args.output.endswith(("/", os.sep)):  # Path() would drop the slash
                raise ConfigError(f"--output {args.output} names a folder; pass a file name such as "
                                  f"{Path(args.output) / 'probabilities.onnx'}")
            output = None if args.output is None else Path(args.output)
            print_export_summary(export_onnx(args.model, output), args.model)
            return 0
        if args.command == "predict":
            # Prediction runs without Prefect: no server, no flow run, just the library.
            from lib.evaluate.predict import predict_to_csv

            predict_config = load_config(PredictConfig, None, overrides_from_args(args))
            try:
                summary = predict_to_csv(predict_config)
            except OSError as error:
                if disk_error(error) is None:
                    raise
                return disk_error_exit(error, {"--output-csv": predict_config.output_csv.parent})
            print_predict_summary(summary)
            return 0
        if args.command == "demo":
            from lib.example import demo_config, demo_ensemble_config, demo_pretrain_config, write_demo_inputs

            write_demo_inputs(args.dir)
            pretrain_config = demo_pretrain_config(args.dir, args.device, args.pretrain_epochs)
            config = (demo_ensemble_config if args.ensemble else demo_config)(args.dir, args.epochs, args.device)
            if overrides := overrides_from_args(args):
                config = load_config(type(config), None, deep_merge(config.model_dump(), overrides))
        elif args.command == "pretrain":
            pretrain_config = load_config(PretrainConfig, args.config, overrides_from_args(args))
        elif args.command == "ensemble":
            config = load_config(EnsembleConfig, args.config, overrides_from_args(args))
        elif args.command == "crossval":
            config = load_config(CrossvalConfig, args.config, overrides_from_args(args))
        else:
            config = load_config(FinetuneConfig, args.config, overrides_from_args(args))
        # Pre-flight (why: docs/decisions.md, "The CLI plans before it starts a flow"), while the local Prefect
        # server (if one is to be used) starts beside it
        from lib.core.timing import phase

        with phase("imports (Prefect)"):  # imported by every command, warm ones too (flows/warm.py: why)
            import prefect.main  # noqa: F401
        if not args.ephemeral:
            from flows.server import start_local_server_early

            start_local_server_early()

        with phase("imports (torch, transformers, datasets)"):
            import lib.recipes.finetune  # noqa: F401 - what planning and every stage after it import
        with phase("plan (CLI)"):
            if pretrain_config is not None:
                from lib.recipes.pretrain import plan_pretrain

                hold_run_locks(locks, [plan_pretrain(pretrain_config)])
            else:
                hold_run_locks(locks, preflight(config))
    except expected as error:
        print(f"astft: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full or read-only disk before any flow (the locks' files); the rest raised
        if disk_error(error) is None:
            raise
        return disk_error_exit(error, written_folders(pretrain_config, config))

    from flows.server import ServerStartTimeout, flow_server
    from flows.terminal import log_to_file
    from lib.core.errors import CrossvalFoldsFailed, EnsembleMembersFailed

    first = pretrain_config or config
    log_file = log_to_file(first.output_dir, args.debug)
    details = f" (details: {log_file})" if log_file else ""
    try:
        with flow_server(args.ephemeral) as server_url:
            if pretrain_config is not None:
                from flows.pretrain import pretrain

                print_pretrain_summary(pretrain(pretrain_config))
                if config is not None:
                    hold_run_locks(locks, preflight(config))
            if isinstance(config, CrossvalConfig):
                from flows.crossval import crossval

                print_crossval(crossval(config))
            elif isinstance(config, EnsembleConfig):  # astft ensemble, astft demo --ensemble
                from flows.ensemble import ensemble

                print_leaderboard(ensemble(config))
            elif config is not None:
                from flows.finetune import finetune

                summary = finetune(config)
                print_summary(summary)
                if args.command == "demo":
                    metrics = {key: round(value, 4) for key, value in summary["metrics"].items()}
                    print(json.dumps({"published": summary["published"], **metrics}))
    except (*expected, EnsembleMembersFailed, CrossvalFoldsFailed, ServerStartTimeout) as error:
        print(f"astft: {error}{details}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"astft: interrupted; nothing half-written was published, and the same command resumes from the last "
              f"checkpoint{details}", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - only a full or read-only disk, or Ctrl-C's aftermath, is caught
        if INTERRUPTED:  # e.g. Prefect's crash handling failing while a task started ("Task run is not set")
            print(f"astft: interrupted; nothing half-written was published, and the same command resumes from the "
                  f"last checkpoint{details}", file=sys.stderr)
            return 130
        if disk_error(error) is None:
            raise
        return disk_error_exit(error, written_folders(first, config), details)
    print_next_steps(config, server_url, args.dir / "data" / "test" if args.command == "demo" else None)
    return 0


def print_next_steps(config: FinetuneConfig | EnsembleConfig | None, server_url: str | None,
                     clips: Path | None = None) -> None:
    """What to do with what was just published: predict with it, load it, see its run (clips: a folder to predict)."""
    from lib.core.layout import BEST_FOLDER

    lines = []
    if config is not None:
        several = isinstance(config, EnsembleConfig | CrossvalConfig)  # members in best/: predict votes them
        model = config.output_dir / BEST_FOLDER / ("" if several else config.name)
        model_text = str(model).rstrip("/") + ("/" if several else "")
        clips = clips or config.data.test_dir or "CLIPS"
        lines.append(f"  predict:    {program()} predict --model {model_text} --input {clips} --output predictions.csv")
        if not several:
            lines.append("  in Python:  from transformers import AutoModelForAudioClassification; "
                         f"model = AutoModelForAudioClassification.from_pretrained({str(model)!r}, "
                         "trust_remote_code=True)")
    if server_url:
        lines.append(f"  the runs:   {server_url}/runs (Prefect UI, on the local server: {program()} server status)")
    if lines:
        print("\nnext steps:\n" + "\n".join(lines))


def written_folders(*configs) -> dict[str, Path]:
    """Where the runs write (label -> folder): named with their free space when a disk fills up."""
    from flows.server import astft_home

    folders = {}
    for config in configs:
        if config is not None:
            folders |= {"--output-dir": config.output_dir, "--cache-dir": config.data.cache_dir,
                        "--work-dir": config.run_work_dir}
    return folders | {"ASTFT_HOME (the local Prefect server's database)": astft_home()}


def disk_error_exit(error: Exception, folders: dict[str, Path], details: str = "") -> int:
    """A full or read-only disk behind error (lib.core.errors.disk_error): one `astft:` line, exit code 2."""
    from lib.core.errors import disk_error, disk_error_message

    print(f"astft: {disk_error_message(disk_error(error), folders)}{details}", file=sys.stderr)
    return 2


def print_crossval(summary: dict) -> None:
    """Each fold's validation (and test) accuracy, then the protocol's figure."""
    from lib.evaluate.metrics import headline_metric
    from lib.recipes.crossval import protocol_line

    test = any(result["test_metrics"] for result in summary["folds"].values())
    score = headline_metric(summary["validation"])  # accuracy, or a multi-label task's map
    short = {"accuracy": "acc", "map": "mAP"}[score]
    print(f"\n{'fold':<10} {'member':<32} {'val ' + short:>9}" + (f" {'test ' + short:>9}" if test else ""))
    for fold, result in summary["folds"].items():
        figure = result["test_metrics"].get(score) if test else None
        print(f"{fold:<10} {result['name']:<32} {result['metrics'][score]:>9.4f}"
              + (f" {figure:>9.4f}" if figure is not None else ""))
    print(protocol_line(summary))
    print(f"written to {summary['file']}")


def print_leaderboard(leaderboard: dict) -> None:
    splits = [split for split in ("validation", "test") if split in leaderboard["ensemble"]]
    short = {"validation": "val", "test": "test"}
    multi_label = leaderboard.get("task") == "multi_label"
    names = ("mAP", "micro F1") if multi_label else ("acc", "NLL")
    width = 11 if multi_label else 9
    columns = "".join(f" {short[split] + ' ' + name:>{width}}" for split in splits for name in names)
    print(f"\n{'':<32} {'weight':>6}" + columns)
    for row in leaderboard["leaderboard"]:
        weight = "" if row["weight"] is None else f"{row['weight']:g}"
        scores = "".join(
            f" {row[split]['map']:>11.4f} {row[split]['micro_f1']:>11.4f}" if multi_label else
            f" {row[split]['accuracy']:>9.4f} {row[split]['calibration']['after']['nll']:>9.4f}" for split in splits
        )
        print(f"{row['name']:<32} {weight:>6}{scores}")
    print(leaderboard["ensemble"]["verdict"])


if __name__ == "__main__":
    sys.exit(main())
