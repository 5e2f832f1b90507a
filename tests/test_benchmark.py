import pytest


@pytest.mark.slow  # two fresh processes, and a 1024-frame model
def test_benchmark_main_reports_positive_figures_for_both_frame_counts(capsys):
    from benchmarks.bench_training import main

    figures = main(["--steps", "2", "--warmup-steps", "1", "--clips", "8", "--batch-size", "2"])
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
    printed = capsys.readouterr().out
    assert "train steps/s" in printed and "cache hit" in printed


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
    table = format_table({
        "config": "base", "batch_size": 16, "steps": 50, "cpus": 16, "load_average": "0.1",
        "train": [run, crop], "features": {"clips": 80, "cold_clips_per_second": 100.0, "hit_clips_per_second": 5000.0},
    })
    assert "MFU" in table and "25.0%" in table and "20.0%" in table
    assert "10.0x" in table  # steps/s ratio
