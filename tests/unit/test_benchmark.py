import pytest


@pytest.mark.slow  # two fresh processes, and a 1024-frame model
def test_benchmark_main_reports_positive_figures_for_both_frame_counts(capsys):
    from benchmarks.bench_training import main

    figures = main(["--steps", "2", "--warmup-steps", "1", "--clips", "8", "--batch-size", "2", "--trunk-epochs", "1",
                    "--accuracy-epochs", "1", "--epoch-epochs", "2"])
    assert [entry["max_frames"] for entry in figures["accuracy"]] == [1024, 128]
    assert all(0 <= entry["best_accuracy"] <= 1 for entry in figures["accuracy"])
    notebook, crop = figures["train"]
    assert (notebook["max_frames"], crop["max_frames"]) == (1024, 128)
    assert (notebook["tokens"], crop["tokens"]) == (2 + 12 * 101, 2 + 12 * 12)  # 128 mel bins, stride 10
    for run in (notebook, crop):
        assert run["steps_per_second"] > 0
        assert run["samples_per_second"] == pytest.approx(2 * run["steps_per_second"])
        assert run["peak_memory_mib"] > 0
        assert run["mfu"] is None  # CPU: no MFU
    assert figures["features"]["clips"] == 8 + 4
    assert figures["features"]["cold_clips_per_second"] > 0 and figures["features"]["hit_clips_per_second"] > 0
    trunk = figures["trunk"]
    assert (trunk["max_frames"], trunk["train_clips"], trunk["cache_clips"]) == (128, 8, 12)
    # the small config has 2 layers: head-only caches both, and last-1 (not last-3) caches the first
    assert [(v["name"], v["trunk_layers"], v["layers"]) for v in trunk["variants"]] == [
        ("head-only", 2, 2), ("last-1", 1, 2)]
    for variant in trunk["variants"]:
        assert variant["plain_epoch_seconds"] > 0 and variant["cached_epoch_seconds"] > 0
        assert variant["speedup"] == pytest.approx(variant["plain_epoch_seconds"] / variant["cached_epoch_seconds"])
        assert variant["build_seconds"] > 0 and variant["dtype"] == "float16"
    # whole epochs of train_classifier at the crop: 8 clips, the second epoch timed
    epoch = figures["epoch"]
    assert (epoch["max_frames"], epoch["epochs"], epoch["train_clips"]) == (128, 2, 8)
    assert epoch["samples_per_second"] > 0 and epoch["first_epoch_samples_per_second"] > 0
    # positive only: which of the two is faster is a timing, and timings belong to the printed figures (a loaded
    # machine once made the whole run's rate beat the epoch's)
    assert epoch["run_samples_per_second"] > 0
    assert epoch["precision"] == "fp32"
    assert (epoch["speed"]["pin_memory"], epoch["speed"]["dataloader_num_workers"]) == (False, 0)
    printed = capsys.readouterr().out
    assert "train steps/s" in printed and "cache hit" in printed and "head-only (K=2/2)" in printed
    assert "whole epoch, 128 frames" in printed


def test_mfu_peak_comes_from_the_device_name_and_precision():
    from benchmarks.bench_training import peak_flops

    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16", None) == 989e12
    assert peak_flops("NVIDIA H100 PCIe", "fp16", None) == 756e12  # matched before the generic "H100"
    assert peak_flops("NVIDIA H100 80GB HBM3", "fp32", None) is None  # TF32 or not: ask for --peak-tflops
    assert peak_flops("NVIDIA GeForce RTX 4090", "bf16", None) is None
    assert peak_flops("anything", "fp32", 100.0) == 100e12


def test_cuda_table_has_an_mfu_row():
    # The CUDA path cannot run on the CI's CPUs; its rendering can.
    from benchmarks.bench_training import format_table

    run = {"device_name": "NVIDIA H100 80GB HBM3", "parameters": 86_000_000, "precision": "bf16", "mfu": 0.25,
           "torch_threads": 16,
           "tokens": 1214, "steps_per_second": 2.0, "samples_per_second": 32.0, "peak_memory_mib": 9000.0,
           "max_frames": 1024}
    crop = {**run, "max_frames": 128, "tokens": 146, "steps_per_second": 20.0, "samples_per_second": 320.0,
            "peak_memory_mib": 1500.0, "mfu": 0.2}
    trunk = {"max_frames": 128, "train_clips": 64, "cache_clips": 80, "epochs": 5, "variants": [
        {"name": "head-only", "trunk_layers": 12, "layers": 12, "dtype": "float16", "plain_epoch_seconds": 2.0,
         "cached_epoch_seconds": 0.05, "speedup": 40.0, "build_seconds": 1.5},
        {"name": "last-3", "trunk_layers": 9, "layers": 12, "dtype": "float16", "plain_epoch_seconds": 3.0,
         "cached_epoch_seconds": 1.0, "speedup": 3.0, "build_seconds": 1.2},
    ]}
    epoch = {"max_frames": 128, "epochs": 3, "train_clips": 2048, "samples_per_second": 256.0,
             "first_epoch_samples_per_second": 100.0, "run_samples_per_second": 200.0, "precision": "bf16",
             "speed": {"attention": "sdpa", "tf32": True, "optimizer": "adamw_torch_fused", "compile": False,
                       "pin_memory": True, "dataloader_num_workers": 4}}
    table = format_table({
        "config": "base", "batch_size": 16, "steps": 50, "cpus": 16, "load_average": "0.1",
        "train": [run, crop], "features": {"clips": 80, "cold_clips_per_second": 100.0, "hit_clips_per_second": 5000.0,
                                            "hit_read_clips_per_second": 1000.0},
        "trunk": trunk, "epoch": epoch,
    })
    assert "MFU" in table and "25.0%" in table and "20.0%" in table
    assert "10.0x" in table  # steps/s ratio
    head_only = next(line for line in table.splitlines() if line.startswith("head-only (K=12/12)"))
    assert head_only.split()[2:] == ["2.0000", "0.0500", "40.0x", "1.50s"]
    assert any(line.startswith("last-3 (K=9/12)") and "3.0x" in line for line in table.splitlines())
    # the two GPU targets read off one table: the step's MFU, and the whole epoch against the step
    lines = table.splitlines()
    whole = lines.index(next(line for line in lines if line.startswith("whole epoch, 128 frames")))
    assert "4 DataLoader workers" in lines[whole] and "median of 2 epochs after the first" in lines[whole]
    assert lines[whole + 2].split()[2:] == ["320.0", "256.0", "80%"]  # samples/s: step, epoch, epoch/step
    assert lines[whole + 3].split()[1:] == ["20.0%", "16.0%"]  # MFU of the step, and of the whole epoch


@pytest.mark.slow  # seven fresh processes
def test_scale_benchmark_runs_every_stage_and_counts_every_clip(tmp_path, capsys):
    from benchmarks.bench_scale import STAGES, main

    rows = main(["--clips", "40", "--workdir", str(tmp_path)])
    assert [row["stage"] for row in rows] == list(STAGES)
    # 4 classes of 10 clips, one of each for validation: one epoch sees the 36 train clips
    assert [row["clips"] for row in rows] == [40, 40, 40, 40, 36, 40]
    assert all(row["seconds"] >= 0 and row["peak_rss_mb"] > 100 and row["anon_mb"] > 0 for row in rows)
    stage = {row["stage"]: row for row in rows}
    assert stage["build"]["disk_mb"] == stage["hit"]["disk_mb"] > 0  # the hit reads the cache the build wrote
    assert stage["build-1"]["disk_bytes"] == stage["build"]["disk_bytes"]  # worker counts change no byte
    assert stage["build"]["workers"] == 1  # 40 clips: under 2 x SHARD_CLIPS, built in the stage's process
    assert 0.5 < stage["build-f16"]["disk_bytes"] / stage["build"]["disk_bytes"] < 0.52
    printed = capsys.readouterr().out
    assert "time x" in printed and "parallel build: 1 process " in printed and "KB/clip float16" in printed


@pytest.mark.slow  # pretrains and fine-tunes four tiny members
def test_pretrain_benchmark_compares_the_same_fine_tuning_from_a_random_and_a_pretrained_encoder(capsys):
    from benchmarks.bench_pretrain import main

    figures = main(["--unlabeled", "24", "--pretrain-epochs", "2", "--train-per-class", "2", "--eval-per-class", "2",
                    "--finetune-epochs", "1", "--seeds", "3"])
    assert [epoch["epoch"] for epoch in figures["curve"]] == [1, 2]
    assert all(0 <= epoch["validation"]["accuracy"] <= 1 for epoch in figures["curve"])
    assert figures["masked_per_clip"] == 44  # 1 s clips: 56 of the 64 patches hold audio, 0.78125 of them masked
    assert [(run["start"], run["variant"], run["seed"]) for run in figures["runs"]] == [
        ("random", "linear probe", 3), ("random", "full fine-tune", 3),
        ("pretrained", "linear probe", 3), ("pretrained", "full fine-tune", 3)]
    assert all(0 <= run["test_accuracy"] <= 1 for run in figures["runs"])
    printed = capsys.readouterr().out
    assert "masked-patch accuracy" in printed and "pretrained   full fine-tune" in printed
