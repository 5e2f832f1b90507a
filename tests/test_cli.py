import pytest

from flows.cli import build_parser, main, overrides_from_args


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
        "model": {"ssl_checkpoint": "c", "base_config": "b.json", "train_last_n_layers": 3},
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


def test_demo_ensemble_trains_four_variants_with_a_test_folder(tmp_path):
    from flows.demo import demo_config, demo_ensemble_config

    args = build_parser().parse_args(["demo", "--ensemble", "--dir", str(tmp_path), "--epochs", "2"])
    assert args.ensemble
    config = demo_ensemble_config(args.dir, args.epochs, "cpu")
    assert [v.name for v in config.variants()] == ["last-1-s1", "last-1-s2", "last-2-s1", "last-2-s2"]
    assert config.selection == "greedy" and config.data.test_dir == tmp_path / "data" / "test"
    # the test clips come from their own random stream: none repeats a train clip
    train = {p.read_bytes() for p in (tmp_path / "data" / "train").rglob("*.wav")}
    test = list((tmp_path / "data" / "test").rglob("*.wav"))
    assert len(test) == 32 and not any(p.read_bytes() in train for p in test)
    assert demo_config(tmp_path).data.test_dir == config.data.test_dir
