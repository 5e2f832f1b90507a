import pytest

from flows.cli import build_parser, main, overrides_from_args
from lib.example import DEMO_PRETRAIN_EPOCHS


def test_flags_map_onto_the_nested_config():
    args = build_parser().parse_args([
        "finetune", "--train-dir", "t", "--validation-dir", "v", "--ssl-checkpoint", "c", "--name", "n",
        "--output-dir", "o", "--train-last-n-layers", "3", "--epochs", "4", "--batch-size", "2",
        "--learning-rate", "0.01", "--seed", "7", "--device", "cpu", "--base-config", "b.json",
        "--batch-sizes", "8,16,32", "--max-frames", "256",
    ])
    assert overrides_from_args(args) == {
        "name": "n", "output_dir": "o",
        "data": {"train_dir": "t", "validation_dir": "v"},
        "model": {"ssl_checkpoint": "c", "base_config": "b.json", "train_last_n_layers": 3, "head_only": False},
        "features": {"max_frames": 256},
        "training": {
            "epochs": 4, "batch_size": 2, "batch_sizes": [8, 16, 32], "learning_rate": 0.01, "seed": 7, "device": "cpu"
        },
    }


def test_head_only_and_last_n_are_mutually_exclusive_flags(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["finetune", "--head-only", "--train-last-n-layers", "2"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_invalid_config_exits_2_naming_the_parameter(capsys, tmp_path):
    code = main(["finetune", "--name", "x", "--train-dir", "t", "--validation-dir", "v",
                 "--ssl-checkpoint", "c", "--epochs", "0"])
    assert code == 2
    assert "training.epochs" in capsys.readouterr().err


def test_batch_sizes_flag_needs_integers(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["finetune", "--batch-sizes", "8,sixteen"])
    assert "comma-separated integers such as 8,16,32, got '8,sixteen'" in capsys.readouterr().err


def test_augmentation_flags_fill_the_nested_augmentation_section():
    args = build_parser().parse_args([
        "finetune", "--epochs", "3", "--spec-augment", "48,192", "--mixup", "0.5", "--noise-std", "0.02", "--time-roll",
    ])
    assert overrides_from_args(args) == {
        "training": {
            "epochs": 3,
            "augmentation": {
                "freq_mask_bins": 48, "time_mask_frames": 192, "mixup_probability": 0.5, "noise_std": 0.02,
                "time_roll": True,
            },
        },
    }
    assert overrides_from_args(build_parser().parse_args(["finetune", "--epochs", "3"])) == {"training": {"epochs": 3}}


def test_spec_augment_flag_needs_two_widths_and_bad_values_name_the_field(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["finetune", "--spec-augment", "48"])
    assert "expected FREQ,TIME mask widths such as 48,192, got '48'" in capsys.readouterr().err
    code = main(["finetune", "--name", "x", "--train-dir", "t", "--validation-dir", "v",
                 "--ssl-checkpoint", "c", "--mixup", "1.5"])
    assert code == 2
    assert "training.augmentation.mixup_probability" in capsys.readouterr().err


def test_predict_with_bad_inputs_or_output_exits_2_before_inference(capsys, tmp_path):
    import numpy as np
    import soundfile

    wav = tmp_path / "a.wav"
    soundfile.write(wav, np.zeros(1600, np.float32), 16000)
    assert main(["predict", "--model", str(tmp_path / "missing"), "--input", str(wav)]) == 2
    assert "missing: no such folder" in capsys.readouterr().err
    member = tmp_path / "best" / "m"
    member.mkdir(parents=True)
    (member / "config.json").write_text('{"id2label": {"0": "a"}}')
    (member / "member.json").write_text("{truncated")
    assert main(["predict", "--model", str(member), "--input", str(wav)]) == 2
    assert "member.json is not valid JSON" in capsys.readouterr().err
    (member / "member.json").write_text('{"name": "m", "feature_params": {}}')
    (member / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    assert main(["predict", "--model", str(member), "--input", str(wav), "--output", str(tmp_path)]) == 2
    assert f"--output (output_csv) {tmp_path} is a folder" in capsys.readouterr().err


# The generated CLI: every config field has a flag, found by walking the models here, independently of flows/cli.py,
# so a field added to lib/config.py later is covered without touching this file.
def leaf_fields(model, prefix=""):
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from leaf_fields(field.annotation, f"{prefix}{name}.")
        else:
            yield prefix + name, field


def option_actions(command):
    parser = build_parser()
    subparser = parser._subparsers._group_actions[0].choices[command]
    return subparser._option_string_actions


def sample_argv(flag, action):
    """Command-line words that set the field behind `action`, and the value they should give it."""
    from flows.flags import SCALARS

    if action.nargs == 0:  # a switch
        return [flag], True
    if action.metavar.startswith("{"):  # {a,b} or {a,b}|null
        choice = action.metavar.split("|")[0].strip("{}").split(",")[-1]
        return [flag, choice], choice
    samples = {"N": ("3", 3), "X": ("0.5", 0.5), "TEXT": ("abc", "abc"), "PATH": ("some/dir", "some/dir"),
               "N,...": ("8,16", [8, 16]), "PATH,...": ("a,b/c", ["a", "b/c"]),
               "YAML": ("[{name: a}]", [{"name": "a"}])}
    assert set(samples) >= {value.metavar for value in SCALARS.values()}
    text, value = samples[action.metavar.removesuffix("|null")]
    return [flag, text], value


CONFIGS = {
    "finetune": "FinetuneConfig", "ensemble": "EnsembleConfig", "pretrain": "PretrainConfig", "predict": "PredictConfig"
}


@pytest.mark.parametrize("command", CONFIGS)
def test_every_config_field_has_a_flag_with_its_description_and_choices(command):
    import typing

    import lib.config

    model = getattr(lib.config, CONFIGS[command])
    actions = option_actions(command)
    required = {"predict": ["--model", "m", "--input", "i"]}.get(command, [])
    for path, field in leaf_fields(model):
        flag = "--" + path.replace("_", "-")
        assert flag in actions, f"no flag for {path}"
        action = actions[flag]
        assert action.dest == f"field:{path}"
        assert " ".join(field.description.split()[:4]) in " ".join(action.help.split())
        literal = field.annotation
        if typing.get_origin(literal) is typing.Literal:
            assert action.metavar == "{" + ",".join(typing.get_args(literal)) + "}"
        argv, value = sample_argv(flag, action)
        args = build_parser().parse_args([command, *required, *argv])
        overrides = overrides_from_args(args)
        *sections, name = path.split(".")
        for section in sections:
            overrides = overrides[section]
        assert overrides[name] == value, path
        # and --set reaches it by the same dotted name, reading the value as the flag does
        if command != "predict":
            text = "true" if value is True else argv[-1]
            assert overrides_from_args(build_parser().parse_args([command, "--set", f"{path}={text}"])) == (
                overrides_from_args(args)
            )


def test_the_notebook_short_flags_still_work():
    from flows.flags import SHORT_FLAGS

    argv = [
        "finetune", "--name", "n", "--output-dir", "o", "--work-dir", "w", "--train-dir", "t", "--validation-dir", "v",
        "--cache-dir", "c", "--quick-subsample", "--skip-bad-files", "--fingerprint", "content",
        "--ssl-checkpoint", "s", "--base-config", "b.json", "--pooling", "mean_patches", "--max-frames", "1024",
        "--epochs", "4", "--batch-size", "2", "--batch-sizes", "8,16,32", "--learning-rate", "0.01",
        "--warmup-steps", "0.1", "--gradient-accumulation-steps", "2", "--metric-for-best-model", "f1",
        "--precision", "bf16", "--device", "cpu", "--seed", "7", "--dataloader-num-workers", "2", "--tensorboard",
        "--num-processes", "2", "--spec-augment", "48,192", "--mixup", "0.5", "--noise-std", "0.02", "--time-roll",
        "--head-only",
    ]
    assert overrides_from_args(build_parser().parse_args(argv)) == {
        "name": "n", "output_dir": "o", "work_dir": "w",
        "data": {"train_dir": "t", "validation_dir": "v", "cache_dir": "c", "quick_subsample": True,
                 "skip_bad_files": True, "fingerprint": "content"},
        "model": {"ssl_checkpoint": "s", "base_config": "b.json", "pooling": "mean_patches", "head_only": True,
                  "train_last_n_layers": 0},
        "features": {"max_frames": 1024},
        "training": {
            "epochs": 4, "batch_size": 2, "batch_sizes": [8, 16, 32], "learning_rate": 0.01, "warmup_steps": 0.1,
            "gradient_accumulation_steps": 2, "metric_for_best_model": "f1", "precision": "bf16", "device": "cpu",
            "seed": 7, "dataloader_num_workers": 2, "tensorboard": True, "num_processes": 2,
            "augmentation": {"freq_mask_bins": 48, "time_mask_frames": 192, "mixup_probability": 0.5,
                             "noise_std": 0.02, "time_roll": True},
        },
    }
    # every short flag is an alias of its field's dotted flag, in each command whose config has the field
    for command in CONFIGS:
        actions = option_actions(command)
        for path, short in SHORT_FLAGS.items():
            if "--" + path.replace("_", "-") in actions:
                assert actions[short] is actions["--" + path.replace("_", "-")]
    ensemble = build_parser().parse_args(["ensemble", "--member", "a=head_only", "--member", "b=last_2", "--seed", "3"])
    assert overrides_from_args(ensemble) == {
        "members": [{"name": "a", "head_only": True}, {"name": "b", "train_last_n_layers": 2}], "training": {"seed": 3}
    }
    predict = build_parser().parse_args(["predict", "--model", "m", "--input", "i", "--output", "p.csv"])
    assert overrides_from_args(predict) == {"model_path": "m", "input_path": "i", "output_csv": "p.csv"}


def test_flags_left_out_keep_the_preset_and_set_overrides_flags(tmp_path):
    from lib.config import FinetuneConfig, load_config

    preset = tmp_path / "preset.yaml"
    preset.write_text(
        "name: p\ndata: {train_dir: t, validation_dir: v, skip_bad_files: true}\n"
        "model: {ssl_checkpoint: c, head_only: true}\nfeatures: {max_frames: 1024}\n"
        "training: {epochs: 7, batch_sizes: [8, 16], augmentation: {noise_std: 0.1}}\n"
    )

    def config(*argv):
        args = build_parser().parse_args(["finetune", "--config", str(preset), *argv])
        return load_config(FinetuneConfig, args.config, overrides_from_args(args))

    kept = config("--seed", "1")
    assert (kept.training.epochs, kept.training.seed, kept.training.batch_sizes) == (7, 1, [8, 16])
    assert kept.data.skip_bad_files and kept.model.head_only and kept.training.augmentation.noise_std == 0.1
    changed = config(
        "--no-skip-bad-files", "--no-head-only", "--train-last-n-layers", "2", "--features.max-frames", "null",
        "--epochs", "3", "--set", "training.epochs=4", "--set", "training.batch-sizes=null",
        "--set", "training.augmentation.mixup_probability=0.5",
    )
    assert not changed.data.skip_bad_files and changed.model.freezing == "last_2_layers"
    assert changed.features.max_frames is None and changed.training.batch_sizes is None
    assert changed.training.epochs == 4  # --set comes after the flags
    assert changed.training.augmentation.noise_std == 0.1 and changed.training.augmentation.mixup_probability == 0.5


def test_set_names_the_field_it_cannot_find_or_read(capsys):
    for argv, message in (
        (["--set", "training.epoch=3"], "'training.epoch' is not a field of the config; did you mean training.epochs?"),
        (["--set", "seed=3"], "did you mean training.seed?"),
        (["--set", "training.epochs"], "expected FIELD=VALUE such as training.epochs=3, got 'training.epochs'"),
        (["--set", "training.batch_sizes=8,x"], "expected comma-separated integers such as 8,16,32, got '8,x'"),
        (["--set", "data.fingerprint=mtime"], "invalid choice 'mtime' (choose from stat, content)"),
    ):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["finetune", *argv])
        assert message in capsys.readouterr().err
    # bounds are the config's: the message names the field
    code = main(["finetune", "--name", "x", "--train-dir", "t", "--validation-dir", "v", "--ssl-checkpoint", "c",
                 "--set", "training.augmentation.noise_std=2"])
    assert code == 2 and "training.augmentation.noise_std" in capsys.readouterr().err


def test_help_is_grouped_by_section_and_imports_no_torch():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    script = (
        "import sys\nfrom flows.cli import main\n"
        "try:\n    main(['finetune', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch imported' if 'torch' in sys.modules else 'no torch')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=True,
                            env={**__import__("os").environ, "PYTHONPATH": str(root), "COLUMNS": "200"})
    help_text = result.stdout
    assert help_text.rstrip().endswith("no torch")
    for section in ("data:", "features:", "model:", "training:", "training.augmentation:"):
        assert f"\n{section}\n" in help_text
    assert "--training.precision, --precision {auto,fp32,fp16,bf16}" in help_text
    assert "--[no-]data.skip-bad-files, --[no-]skip-bad-files" in help_text


def test_demo_takes_set_overrides_and_fine_tunes_from_what_it_pretrains(tmp_path, capsys, monkeypatch):
    import flows.finetune
    import flows.pretrain
    from tests.factories import make_ssl_checkpoint

    seen = {}

    def pretrain_stand_in(config):  # writes the checkpoint where the real flow publishes it
        seen["pretrain"] = config
        published = config.output_dir / "ssl" / config.name
        make_ssl_checkpoint(published)
        return {"published": str(published), "epochs": 1, "train": {}, "validation": {}}

    def stop_before_training(config):
        seen["config"] = config
        raise RuntimeError("stopped before training")

    monkeypatch.setattr(flows.pretrain, "pretrain", pretrain_stand_in)
    monkeypatch.setattr(flows.finetune, "finetune", stop_before_training)
    code = main(["demo", "--dir", str(tmp_path), "--epochs", "2", "--set", "training.augmentation.mixup_probability=2"])
    assert code == 2 and "training.augmentation.mixup_probability" in capsys.readouterr().err
    assert "pretrain" not in seen  # a bad value stops the demo before anything runs
    with pytest.raises(RuntimeError, match="stopped before training"):
        main(["demo", "--dir", str(tmp_path), "--epochs", "2", "--set", "training.augmentation.mixup_probability=0.5"])
    assert seen["config"].training.epochs == 2 and seen["config"].training.augmentation.mixup_probability == 0.5
    assert seen["config"].training.learning_rate == 1e-3  # the demo's own settings stay
    # pretrained on the train clips and the unlabeled ones, fine-tuned from the encoder it published
    pretrain = seen["pretrain"]
    assert pretrain.data.data_dirs == [tmp_path / "data" / "train", tmp_path / "unlabeled"]
    assert pretrain.data.validation_dir == tmp_path / "data" / "validation"
    assert seen["config"].model.ssl_checkpoint == tmp_path / "ensemble" / "ssl" / "demo-ssl"
    assert len(list((tmp_path / "unlabeled").rglob("*.wav"))) == 96
    # --epochs and --set are the fine-tune's; the pretraining's epochs are --pretrain-epochs
    assert pretrain.training.epochs == DEMO_PRETRAIN_EPOCHS == 10
    with pytest.raises(RuntimeError, match="stopped before training"):
        main(["demo", "--dir", str(tmp_path / "again"), "--pretrain-epochs", "3"])
    assert (seen["pretrain"].training.epochs, seen["config"].training.epochs) == (3, 20)


def test_demo_help_says_it_pretrains_and_what_each_option_applies_to(monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # argparse wraps at the terminal width, hyphenated flags included
    parser = build_parser()
    demo = parser._subparsers._group_actions[0].choices["demo"]
    text = " ".join(demo.format_help().split())
    assert ("pretrain a tiny encoder on the train and unlabeled clips (the astft-pretrain flow, --pretrain-epochs), "
            "then fine-tune one member from it (astft-finetune, --epochs and --set)") in text
    assert "--pretrain-epochs N training.epochs of the demo's pretraining (default: 10)" in text
    assert "--epochs N training.epochs of the demo's fine-tune (of each member with --ensemble; default: 20)" in text
    assert "(repeatable; the pretraining takes only --pretrain-epochs and --device)" in text
    assert parser.parse_args(["demo"]).pretrain_epochs == DEMO_PRETRAIN_EPOCHS


def test_pretrain_flags_build_the_config(tmp_path, monkeypatch, capsys):
    import flows.pretrain
    from lib.config import PretrainConfig

    seen = {}
    monkeypatch.setattr(flows.pretrain, "pretrain", lambda config: seen.setdefault("config", config))
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    arguments = ["pretrain", "--data-dir", f"{tmp_path / 'a'},{tmp_path / 'b'}", "--name", "ssl1", "--epochs", "3",
                 "--masking", "cluster", "--checkpoint-every-steps", "50", "--set", "model.hidden_size=64",
                 "--output-dir", str(tmp_path / "out")]
    args = build_parser().parse_args(arguments)
    config = PretrainConfig.model_validate(overrides_from_args(args))
    assert config.data.data_dirs == [tmp_path / "a", tmp_path / "b"] and config.name == "ssl1"
    assert config.training.epochs == 3 and config.training.checkpoint_every_steps == 50
    assert config.objective.masking == "cluster"
    assert config.model.hidden_size == 64 and config.objective.mask_ratio == 400 / 512
    # a bad plan is one line before any flow runs: 5 heads do not divide 64
    code = main([*arguments, "--set", "model.num_attention_heads=5"])
    assert code == 2 and "config" not in seen
    assert "model.num_attention_heads=5 does not divide model.hidden_size=64" in capsys.readouterr().err


def test_demo_ensemble_trains_four_variants_with_a_test_folder(tmp_path):
    from lib.example import demo_config, demo_ensemble_config, write_demo_inputs

    args = build_parser().parse_args(["demo", "--ensemble", "--dir", str(tmp_path), "--epochs", "2"])
    assert args.ensemble
    write_demo_inputs(args.dir)
    config = demo_ensemble_config(args.dir, args.epochs, "cpu")
    assert [v.name for v in config.variants()] == ["last-1-s1", "last-1-s2", "last-2-s1", "last-2-s2"]
    assert config.selection == "greedy" and config.data.test_dir == tmp_path / "data" / "test"
    # the test clips come from their own random stream: none repeats a train clip
    train = {p.read_bytes() for p in (tmp_path / "data" / "train").rglob("*.wav")}
    test = list((tmp_path / "data" / "test").rglob("*.wav"))
    assert len(test) == 32 and not any(p.read_bytes() in train for p in test)
    assert demo_config(tmp_path).data.test_dir == config.data.test_dir


def test_a_freezing_flag_replaces_the_presets_variant_and_list_flags_can_clear_a_preset(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(
        "name: m\ndata: {train_dir: t, validation_dir: v}\nmodel: {ssl_checkpoint: c, train_last_n_layers: 3}\n"
    )

    def config(*flags):
        args = build_parser().parse_args(["finetune", "--config", str(preset), *flags])
        return load_config(FinetuneConfig, args.config, overrides_from_args(args))

    from lib.config import FinetuneConfig, load_config

    assert config("--head-only").model.freezing == "head_only"  # was refused: exclusive with the preset's 3
    assert config("--train-last-n-layers", "1").model.freezing == "last_1_layers"
    preset.write_text(preset.read_text().replace("train_last_n_layers: 3", "head_only: true"))
    assert config("--train-last-n-layers", "2").model.freezing == "last_2_layers"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["finetune", "--head-only", "--train-last-n-layers", "1"])  # both: still exclusive
    ensemble = build_parser().parse_args(["ensemble", "--seeds", "", "--sweep-last-n", "null", "--test-dir", "x"])
    assert overrides_from_args(ensemble) == {"seeds": [], "sweep_last_n": [], "data": {"test_dir": "x"}}


def test_plan_errors_are_one_line_before_any_flow_run(dataset_dirs, ssl_checkpoint, tmp_path, capsys, monkeypatch):
    import flows.ensemble

    monkeypatch.setattr(flows.ensemble, "ensemble", lambda config: pytest.fail("a flow run was started"))
    train, validation = dataset_dirs
    base = ["ensemble", "--train-dir", str(train), "--validation-dir", str(validation), "--ssl-checkpoint",
            str(ssl_checkpoint), "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    assert main([*base, "--sweep-last-n", "0,5"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "sweep_last_n (--sweep-last-n) has [5] but the encoder" in error
    assert main([*base, "--sweep-last-n", "0", "--test-dir", str(validation)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--validation-dir" in error and "are the same folder" in error
    assert not (tmp_path / "cache").exists()


def test_predict_prints_the_members_it_used_and_left_out_and_the_class_folders_scores(capsys):
    from flows.cli import print_predict_summary

    summary = {
        "predicted": 3, "csv": "p.csv", "skipped": 0, "members": ["a", "b"], "weights": {"a": 2.0, "b": 1.0},
        "temperatures": {"a": 0.5, "b": 1.25}, "not_in_ensemble": ["c"],
        "scores": {"num_samples": 3, "accuracy": 2 / 3, "balanced_accuracy": 0.75, "f1": 0.6,
                   "confusion_matrix": {"labels": ["cat", "dog"], "matrix": [[1, 0], [1, 1]]}},
    }
    print_predict_summary(summary)
    assert capsys.readouterr().out.splitlines() == [
        "wrote 3 predictions to p.csv (0 skipped)",
        "members: a (weight 2, temperature 0.500), b (weight 1, temperature 1.250)",
        "member folders ensemble.json does not select, so not used: c",
        "scored against the class folders (3 clips): accuracy 0.6667  balanced_accuracy 0.7500  f1 0.6000",
        "confusion (rows: true class, columns: predicted):",
        "       cat  dog",
        "  cat    1    0",
        "  dog    1    1",
    ]
    print_predict_summary({**summary, "predicted": 1, "not_in_ensemble": [], "scores": None, "ensemble_file": False,
                           "first_rows": [("x.wav", "dog", 0.75)], "not_scored": "folders ['birds'] are not labels"})
    assert capsys.readouterr().out.splitlines() == [
        "wrote 1 prediction to p.csv (0 skipped)",
        "members: a (weight 2, temperature 0.500), b (weight 1, temperature 1.250)",
        "(no ensemble.json beside them: every member folder votes at weight 1)",
        "  x.wav: dog (p=0.750)",
        "not scored against class folders: folders ['birds'] are not labels",
    ]


def test_a_log_file_on_a_full_disk_says_so_once_and_stops(tmp_path, capsys):
    import errno
    import logging

    from flows.terminal import RunLogFile

    handler = RunLogFile(tmp_path / "run.log")
    root = logging.getLogger()
    others, root.handlers = root.handlers, [handler]  # the run log alone: no console handler of an earlier test
    try:
        def disk_full(text):
            raise OSError(errno.ENOSPC, "No space left on device")

        handler.stream.write = disk_full
        for _ in range(3):
            logging.getLogger("lib.test").warning("a line")
    finally:
        root.handlers = others
        handler.close()
    errors = capsys.readouterr().err
    assert errors.count("astft: cannot write the log file") == 1 and "Traceback" not in errors
    assert (tmp_path / "run.log").read_text() == ""


def test_export_to_a_path_ending_in_a_slash_is_refused_as_a_folder(tmp_path, capsys):
    assert main(["export", "--model", str(tmp_path / "m"), "--output", f"{tmp_path}/nodir/"]) == 2
    assert f"--output {tmp_path}/nodir/ names a folder" in capsys.readouterr().err
    assert not (tmp_path / "nodir").exists()


def test_crossval_refuses_a_fold_and_a_dataset_without_folds_in_one_line(capsys, tmp_path, ssl_checkpoint):
    from lib.example import make_example_dataset

    train_dir, validation_dir = make_example_dataset(tmp_path, train_per_class=3, validation_per_class=1)
    flags = ["--train-dir", str(train_dir), "--validation-dir", str(validation_dir), "--ssl-checkpoint",
             str(ssl_checkpoint), "--output-dir", str(tmp_path / "out"), "--name", "cv"]
    assert main(["crossval", *flags]) == 2
    assert capsys.readouterr().err.strip() == (
        "astft: layout folders has no folds of its own: set data.folds (--set data.folds=5) to cut that many, "
        "stratified by class"
    )
    assert main(["crossval", *flags, "--set", "data.folds=3", "--fold", "2"]) == 2
    assert "data.fold (--fold) 2: cross-validation trains every fold in turn" in capsys.readouterr().err
    assert main(["crossval", *flags, "--set", "data.folds=5"]) == 2  # 4 clips a class
    assert "data.folds 5: the smallest class, 'chirp', has 4 clips, fewer than the folds" in capsys.readouterr().err
