"""Benchmark: the notebook's 1024-frame input vs the default 128-frame crop, and the feature cache.

    python benchmarks/bench_training.py                      # CPU, small AST, ~1 min on 2 cores
    python benchmarks/bench_training.py --device cuda --config base --batch-size 64 --steps 50 --clips 2048

Prints, side by side on the same synthetic clips (lib/example.py):
- train steps/s, samples/s and peak memory of one training step (forward, cross-entropy, backward,
  AdamW) of the classifier at each frame count. Peak memory is what training adds to what the
  process held before the model was built (weights, gradients, AdamW state, activations): on CUDA
  torch.cuda.max_memory_allocated; on CPU the peak of glibc's in-use heap bytes (mallinfo2,
  sampled every 0.5 ms over extra untimed steps; the process's RSS cannot show it, since freed
  memory is kept or reused). Each frame count runs in a fresh process.
- feature preprocessing clips/s: a cold build of the Arrow feature cache (decode, resample, fbank,
  write) vs a cache hit (key check plus reading every clip's features back, as training does).
- the frozen-trunk cache (lib/trunk.py): seconds per training epoch (data loading, forward, backward,
  AdamW over the trainable parameters) of a head-only and a last-N member at the crop's frame count,
  training the whole classifier on features vs its tail on cached trunk outputs, and the one-off
  cache build (the trunk over every train and validation clip, written as fp16).
- on CUDA, an estimated MFU (model FLOPs utilisation) per frame count, with training FLOPs per
  sample = 6 * parameters * tokens + 12 * layers * hidden * tokens^2 (weights: 2 forward + 4
  backward FLOPs per parameter per token; attention scores and values: the same 3x on
  4 * hidden * tokens^2 per layer), over the GPU's dense bf16/fp16 peak (--peak-tflops to override).
- whole-epoch throughput at the crop's frame count: samples/s of a real fine-tuning Trainer run (HF
  Trainer with the project's speed defaults: its DataLoader, workers and pinned memory, optimizer
  step, gradient clipping, scheduler and logging), timed from each epoch's start to its end (median
  of --epoch-epochs epochs after the first), beside the model step's samples/s and the ratio of the
  two. Evaluation and checkpoints, which run between epochs, are left out of it; the whole run's
  samples/s, with them, is printed too.

The model is randomly initialised: speed does not depend on the weights. The model step is the
step Trainer repeats, timed without Trainer; the whole-epoch figure is what Trainer makes of it.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: lib/ lives in the repository root
    sys.path.insert(0, str(REPO))

import datasets  # noqa: E402
import torch  # noqa: E402
from transformers import ASTConfig, ASTModel, TrainerCallback  # noqa: E402

from lib.config import TrainingConfig  # noqa: E402
from lib.core.runtime import apply_tf32, resolve_runtime, seed_everything  # noqa: E402
from lib.data.features import (  # noqa: E402
    FeatureCacheRef,
    FeatureParams,
    build_feature_cache,
    load_split,
)
from lib.data.scan import SPLITS, scan_dataset  # noqa: E402
from lib.example import make_example_dataset, tiny_ast_config  # noqa: E402
from lib.model.checkpoint import (  # noqa: E402
    BUNDLED_CONFIG,
    architecture_dict,
    patch_grid,
    read_ast_config,
)
from lib.model.classifier import SPECIAL_TOKENS, apply_freezing, build_classifier  # noqa: E402
from lib.model.trunk import TrunkStates, TrunkTail, build_trunk_cache  # noqa: E402
from lib.train.arguments import (  # noqa: E402
    attention_implementation,
    speed_settings,
)
from lib.train.classifier import classifier_trainer_setup  # noqa: E402
from lib.train.engine import run_trainer  # noqa: E402

NOTEBOOK_FRAMES = 1024  # AST-base's input length, which the notebook padded 1 s clips to
DEFAULT_FRAMES = 128  # features.max_frames default
# Dense bf16/fp16 tensor-core peaks (TFLOP/s) from the vendor data sheets, matched on the device name.
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))


def encoder_config(name: str, max_frames: int) -> ASTConfig:
    """'small': the demo's 64-hidden, 2-layer AST; 'base': the bundled AST-base (for a GPU)."""
    config = tiny_ast_config() if name == "small" else read_ast_config(BUNDLED_CONFIG)
    return ASTConfig(**{**architecture_dict(config), "max_length": max_frames})


def tokens_per_clip(config: ASTConfig) -> int:
    frequency, time_patches = patch_grid(config)
    return SPECIAL_TOKENS + frequency * time_patches


def train_flops_per_sample(parameters: int, config: ASTConfig) -> float:
    tokens = tokens_per_clip(config)
    return 6.0 * parameters * tokens + 12.0 * config.num_hidden_layers * config.hidden_size * tokens**2


def peak_flops(device_name: str, precision: str, override_tflops: float | None) -> float | None:
    if override_tflops is not None:
        return override_tflops * 1e12
    if precision not in ("bf16", "fp16"):
        return None  # fp32 peaks depend on TF32 settings: pass --peak-tflops
    return next((tflops * 1e12 for key, tflops in PEAK_TFLOPS if key in device_name), None)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")
    ]


def _heap_in_use_reader():
    """A function returning the bytes glibc malloc has handed out (all arenas + mmapped), or None."""
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):  # not glibc >= 2.33: no CPU peak-memory figure
        return None
    mallinfo2.restype = _MallInfo2

    def in_use() -> int:
        info = mallinfo2()
        return info.uordblks + info.hblkhd

    return in_use


class HeapPeakSampler:
    """Peak of the in-use heap while active, sampled by a background thread (torch ops drop the GIL)."""

    def __init__(self, in_use, interval_seconds: float = 0.0005):
        self.in_use, self.interval_seconds, self.peak = in_use, interval_seconds, in_use()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.in_use())
            time.sleep(self.interval_seconds)

    def __enter__(self) -> HeapPeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.in_use())


def measure_training(job: dict) -> dict:
    """Run in a fresh process: time `steps` training steps of the classifier at job['max_frames']."""
    if job["cpu_threads"]:
        torch.set_num_threads(job["cpu_threads"])
    runtime = resolve_runtime(job["device"], job["precision"], tf32=True)
    apply_tf32(runtime)  # as Trainer would: the step is timed with the training defaults
    cache = FeatureCacheRef.model_validate_json(job["cache"])
    train = load_split(cache, "train")
    size = job["batch_size"]
    batches = [
        (train[start : start + size]["input_values"], train[start : start + size]["label"])
        for start in range(0, len(train) - size + 1, size)
    ]
    if not batches:
        raise ValueError(f"--batch-size {size} is larger than the {len(train)} train clips; lower it or raise --clips")
    torch.manual_seed(0)
    cuda = runtime.device == "cuda"
    heap_in_use = None if cuda else _heap_in_use_reader()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before_bytes = torch.cuda.memory_allocated()
    elif heap_in_use is not None:
        before_bytes = heap_in_use()

    config = encoder_config(job["config"], job["max_frames"])
    model = build_classifier(ASTModel(config), cache.label_names).to(runtime.device).train()
    fused = speed_settings(TrainingConfig(), runtime).optimizer == "adamw_torch_fused"  # Trainer's AdamW
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=fused)
    scaler = torch.amp.GradScaler("cuda", enabled=runtime.fp16)
    dtype = runtime.autocast_dtype

    def step(index: int) -> None:
        values, labels = batches[index % len(batches)]
        values, labels = values.to(runtime.device, non_blocking=True), labels.to(runtime.device, non_blocking=True)
        with torch.autocast(runtime.device, dtype=dtype, enabled=dtype is not None):
            loss = model(input_values=values, labels=labels).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    for index in range(job["warmup_steps"]):  # allocator, autotuning and first-call costs
        step(index)
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for index in range(job["steps"]):
        step(index)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start

    peak_mib = None
    if cuda:
        peak_mib = (torch.cuda.max_memory_allocated() - before_bytes) / 2**20
    elif heap_in_use is not None:
        # separate untimed steps, so the sampling thread does not slow the timed ones
        with HeapPeakSampler(heap_in_use) as sampler:
            for index in range(2):
                step(index)
        peak_mib = (sampler.peak - before_bytes) / 2**20
    parameters = sum(p.numel() for p in model.parameters())
    samples_per_second = job["steps"] * size / seconds
    figures = {
        "max_frames": job["max_frames"],
        "tokens": tokens_per_clip(config),
        "parameters": parameters,
        "steps_per_second": job["steps"] / seconds,
        "samples_per_second": samples_per_second,
        "peak_memory_mib": peak_mib,
        "precision": runtime.precision,
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        "torch_threads": torch.get_num_threads(),
        "mfu": None,
    }
    peak = peak_flops(figures["device_name"], runtime.precision, job["peak_tflops"]) if cuda else None
    if peak:
        figures["mfu"] = samples_per_second * train_flops_per_sample(parameters, config) / peak
    return figures


def measure_accuracy(job: dict) -> dict:
    """Run in a fresh process: best validation accuracy after `epochs` of HF Trainer at job['max_frames'].

    Both frame counts start from the same seed and the same (random) encoder weights, so the
    comparison isolates the crop; with a real SSL checkpoint run `astft finetune` twice instead.
    """
    if job["cpu_threads"]:
        torch.set_num_threads(job["cpu_threads"])
    runtime = resolve_runtime(job["device"], job["precision"])
    cache = FeatureCacheRef.model_validate_json(job["cache"])
    seed_everything(0, True)
    model = build_classifier(ASTModel(encoder_config(job["config"], job["max_frames"])), cache.label_names)
    config = TrainingConfig(
        epochs=job["epochs"], batch_size=job["batch_size"], gradient_accumulation_steps=1, learning_rate=1e-3,
        warmup_steps=0.1, save_total_limit=1,
    )
    work = Path(job["work_dir"])
    outcome = run_trainer(classifier_trainer_setup(
        model, load_split(cache, "train"), load_split(cache, "validation"), config, work, runtime, "bench",
    ))
    return {"max_frames": job["max_frames"], "best_accuracy": outcome.best_metric, "epochs": job["epochs"]}


class EpochTimer(TrainerCallback):
    """Seconds of each epoch's training (its steps, data loading included), before its evaluation and checkpoint."""

    def __init__(self, cuda: bool):
        self.cuda, self.seconds, self.started = cuda, [], 0.0

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.started = self._now()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.seconds.append(self._now() - self.started)


def measure_epoch(job: dict) -> dict:
    """Run in a fresh process: samples/s of whole training epochs of the fine-tuning Trainer at job['max_frames'].

    Everything the flow's training does per step is in: Trainer's DataLoader (with the default
    workers and pinned memory on CUDA), autocast, the optimizer step, gradient clipping, the LR
    schedule and logging. The first epoch (worker start, kernel autotuning) is left out of the median.
    """
    if job["cpu_threads"]:
        torch.set_num_threads(job["cpu_threads"])
    runtime = resolve_runtime(job["device"], job["precision"], tf32=True)
    cache = FeatureCacheRef.model_validate_json(job["cache"])
    seed_everything(0, True)
    model = build_classifier(ASTModel(encoder_config(job["config"], job["max_frames"])), cache.label_names)
    config = TrainingConfig(
        epochs=job["epochs"], batch_size=job["batch_size"], gradient_accumulation_steps=1, learning_rate=1e-5,
        warmup_steps=0, save_total_limit=1, device=job["device"], precision=job["precision"],
    )
    timer = EpochTimer(runtime.device == "cuda")
    work = Path(job["work_dir"])
    train = load_split(cache, "train")
    start = time.perf_counter()
    run_trainer(classifier_trainer_setup(
        model, train, load_split(cache, "validation"), config, work, runtime, "bench-epoch", extra_callbacks=[timer],
    ))
    run_seconds = time.perf_counter() - start
    timed = timer.seconds[1:] or timer.seconds
    return {
        "max_frames": job["max_frames"], "epochs": job["epochs"], "train_clips": len(train),
        "samples_per_second": len(train) / statistics.median(timed),
        "first_epoch_samples_per_second": len(train) / timer.seconds[0],
        # the whole run: evaluation, checkpoints and the best model's reload included
        "run_samples_per_second": len(train) * job["epochs"] / run_seconds,
        "speed": speed_settings(config, runtime, attention_implementation(model)).model_dump(),
        "precision": runtime.precision,
    }


def last_n_layers(args: argparse.Namespace) -> int:
    """The last-N variant compared: --last-n, else 3 (as the issue asks), fewer on a shallower encoder."""
    layers = encoder_config(args.config, DEFAULT_FRAMES).num_hidden_layers
    return args.last_n if args.last_n is not None else max(1, min(3, layers - 1))


def measure_trunk(job: dict) -> dict:
    """Run in a fresh process: seconds per training epoch with and without the trunk cache, per variant."""
    if job["cpu_threads"]:
        torch.set_num_threads(job["cpu_threads"])
    runtime = resolve_runtime(job["device"], job["precision"])
    cache = FeatureCacheRef.model_validate_json(job["cache"])
    config = encoder_config(job["config"], job["max_frames"])
    cuda, dtype = runtime.device == "cuda", runtime.autocast_dtype
    layers, last_n = config.num_hidden_layers, job["last_n"]

    def epoch_seconds(model: torch.nn.Module, dataset, epochs: int) -> float:
        """Median seconds per epoch of `epochs` timed epochs after one untimed (warm-up) epoch.

        The median, not the mean: an epoch of the small config lasts tens of milliseconds, so one
        burst of another process's work would otherwise decide the ratio.
        """
        model.to(runtime.device).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        scaler = torch.amp.GradScaler("cuda", enabled=runtime.fp16)
        loader = torch.utils.data.DataLoader(dataset, batch_size=job["batch_size"], shuffle=True)
        seconds = []
        for _ in range(epochs + 1):
            start = time.perf_counter()
            for batch in loader:
                inputs = {key: value.to(runtime.device, non_blocking=True) for key, value in batch.items()}
                inputs["labels"] = inputs.pop("label", inputs.get("labels"))
                with torch.autocast(runtime.device, dtype=dtype, enabled=dtype is not None):
                    loss = model(**inputs).loss
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        return statistics.median(seconds[1:])

    variants = []
    for name, freezing, trunk_layers in (
        ("head-only", {"head_only": True}, layers),
        (f"last-{last_n}", {"train_last_n_layers": last_n}, layers - last_n),
    ):
        torch.manual_seed(0)
        model = build_classifier(ASTModel(config), cache.label_names)
        apply_freezing(model, **freezing)
        plain = epoch_seconds(model, load_split(cache, "train"), job["epochs"])
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        folder, stored, hit = build_trunk_cache(
            model, trunk_layers, cache, Path(job["trunk_dir"]) / name, runtime, job["batch_size"]
        )
        build = time.perf_counter() - start
        if hit:
            raise RuntimeError(f"{folder} already held this trunk cache; the build timing would be a hit")
        cached = epoch_seconds(TrunkTail(model, trunk_layers), TrunkStates(folder, "train"), job["epochs"])
        variants.append({
            "name": name, "trunk_layers": trunk_layers, "layers": layers, "dtype": stored,
            "plain_epoch_seconds": plain, "cached_epoch_seconds": cached, "speedup": plain / cached,
            "build_seconds": build,
        })
    return {
        "max_frames": job["max_frames"], "train_clips": cache.num_clips["train"],
        "cache_clips": sum(cache.num_clips.values()), "epochs": job["epochs"], "variants": variants,
    }


def measure_features(
    data_root: Path, cache_root: Path, max_frames: int, num_mel_bins: int
) -> tuple[FeatureCacheRef, dict]:
    """Cold feature-cache build vs cache hit, in clips/s.

    The hit is timed twice: the feature stage itself (key and completeness check, then both splits
    memory-mapped, which is all the flow does before training starts) and, stricter, that plus
    reading every clip's values back, which training does on a cold build as well.
    """
    manifest = scan_dataset(data_root / "train", data_root / "validation")
    params = FeatureParams(num_mel_bins=num_mel_bins, max_frames=max_frames)
    clips = len(manifest.train) + len(manifest.validation)

    start = time.perf_counter()
    ref, hit = build_feature_cache(manifest, params, cache_root)
    cold_seconds = time.perf_counter() - start
    if hit:
        raise RuntimeError(f"{cache_root} already held this feature cache; the cold timing would be a hit")

    start = time.perf_counter()
    ref, hit = build_feature_cache(manifest, params, cache_root)
    mapped = sum(len(load_split(ref, split)) for split in SPLITS)
    hit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    build_feature_cache(manifest, params, cache_root)
    read = sum(len(load_split(ref, split).with_format("numpy")[:]["input_values"]) for split in SPLITS)
    hit_read_seconds = time.perf_counter() - start
    if not hit or read != clips or mapped != clips:
        raise RuntimeError(f"second build of {ref.path}: hit={hit}, read {read} of {clips} clips")
    return ref, {
        "clips": clips, "cold_clips_per_second": clips / cold_seconds, "hit_clips_per_second": clips / hit_seconds,
        "hit_read_clips_per_second": clips / hit_read_seconds,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--config", choices=["small", "base"], default="small",
                        help="small: 64 hidden, 2 layers (CPU); base: AST-base, 768 hidden, 12 layers (GPU)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                        help="auto: bf16 (else fp16) on CUDA, fp32 on CPU")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per frame count")
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--clips", type=int, default=64, help="synthetic train clips (plus a quarter for validation)")
    parser.add_argument("--frames", type=int, nargs=2, default=[NOTEBOOK_FRAMES, DEFAULT_FRAMES],
                        metavar=("NOTEBOOK", "CROP"), help="the two frame counts compared")
    parser.add_argument("--trunk-epochs", type=int, default=5,
                        help="timed epochs per trunk-cache variant (after one untimed epoch)")
    parser.add_argument("--last-n", type=int,
                        help="the last-N variant of the trunk-cache comparison (default 3, or layers - 1 if fewer)")
    parser.add_argument("--epoch-epochs", type=int, default=3,
                        help="epochs of a real fine-tuning Trainer run at the crop's frame count, for the whole-epoch "
                             "throughput (median of those after the first; 0 = skip)")
    parser.add_argument("--accuracy-epochs", type=int, default=10,
                        help="epochs of a short fine-tune per frame count to compare validation accuracy (0 = skip)")
    parser.add_argument("--cpu-threads", type=int, help="torch CPU threads for training (default: torch's own)")
    parser.add_argument("--peak-tflops", type=float, help="GPU peak for MFU (default: bf16/fp16 data-sheet peak)")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = parser.parse_args(argv)
    layers = encoder_config(args.config, DEFAULT_FRAMES).num_hidden_layers
    if args.last_n is not None and not 1 <= args.last_n < layers:
        parser.error(
            f"--last-n must be 1..{layers - 1} for --config {args.config} ({layers} layers), got {args.last_n}"
        )
    for name in ("batch_size", "steps", "clips", "trunk_epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.epoch_epochs < 0:
        parser.error(f"--epoch-epochs must be 0 (skip) or more, got {args.epoch_epochs}")
    return args


def format_table(figures: dict) -> str:
    notebook, crop = figures["train"]
    features = figures["features"]

    def row(label: str, key: str, fmt: str, better: str) -> str:
        a, b = notebook[key], crop[key]
        if a is None or b is None:
            return f"{label:<24}{'n/a':>18}{'n/a':>18}"
        ratio = (b / a if better == "higher" else a / b) if a and b else float("nan")
        return f"{label:<24}{format(a, fmt):>18}{format(b, fmt):>18}{ratio:>10.1f}x"

    header = (
        f"device {notebook['device_name']}, config {figures['config']} ({notebook['parameters']:,} parameters), "
        f"{notebook['precision']}, batch {figures['batch_size']}, {figures['steps']} timed steps"
    )
    lines = [
        header,
        # CPU timings are only comparable on an otherwise idle machine: say how busy it was
        f"{figures['cpus']} CPUs, torch threads {notebook['torch_threads']}, load average {figures['load_average']}",
        f"{'':<24}{'notebook':>18}{'crop':>18}{'ratio':>11}",
        f"{'max_frames':<24}{notebook['max_frames']:>18}{crop['max_frames']:>18}",
        row("tokens per clip", "tokens", "d", "lower"),
        row("train steps/s", "steps_per_second", ".2f", "higher"),
        row("train samples/s", "samples_per_second", ".1f", "higher"),
        row("peak memory (MiB)", "peak_memory_mib", ".1f", "lower"),
    ]
    if notebook["device_name"] != "cpu":
        lines.append(row("MFU", "mfu", ".1%", "higher"))
        lines.append("MFU flops/sample = 6*params*tokens + 12*layers*hidden*tokens^2")
    lines.append(
        f"feature preprocessing ({crop['max_frames']} frames, {features['clips']} clips): "
        f"cold {features['cold_clips_per_second']:.1f} clips/s, cache hit {features['hit_clips_per_second']:.1f} "
        f"clips/s ({features['hit_clips_per_second'] / features['cold_clips_per_second']:.1f}x; "
        f"{features['hit_read_clips_per_second'] / features['cold_clips_per_second']:.1f}x when every value is "
        "also read back)"
    )
    if figures.get("epoch"):
        lines += format_epoch(figures["epoch"], crop)
    if figures.get("accuracy"):
        notebook_accuracy, crop_accuracy = (entry["best_accuracy"] for entry in figures["accuracy"])
        lines.append(
            f"{'validation accuracy':<24}{notebook_accuracy:>18.3f}{crop_accuracy:>18.3f}"
            f"   (best of {figures['accuracy'][0]['epochs']} epochs, same seed and initial weights)"
        )
    if figures.get("trunk"):
        lines += format_trunk(figures["trunk"], figures["batch_size"])
    return "\n".join(lines)


def format_epoch(epoch: dict, step: dict) -> list[str]:
    """The whole-epoch throughput beside the model step's, at the crop's frame count."""
    ratio = epoch["samples_per_second"] / step["samples_per_second"]
    speed = epoch["speed"]
    lines = [
        f"whole epoch, {epoch['max_frames']} frames (Trainer, {epoch['train_clips']} clips, median of "
        f"{max(epoch['epochs'] - 1, 1)} epochs after the first; "
        f"{speed['dataloader_num_workers']} DataLoader workers, pin_memory {speed['pin_memory']}, "
        f"{speed['optimizer']}, attention {speed['attention']}, tf32 {speed['tf32']})",
        f"{'':<24}{'model step':>18}{'whole epoch':>18}{'ratio':>11}",
        f"{'train samples/s':<24}{step['samples_per_second']:>18.1f}{epoch['samples_per_second']:>18.1f}{ratio:>10.0%}",
    ]
    if step.get("mfu"):
        lines.append(f"{'MFU':<24}{step['mfu']:>18.1%}{step['mfu'] * ratio:>18.1%}")
    lines.append(
        f"first epoch {epoch['first_epoch_samples_per_second']:.1f} samples/s; whole run with evaluation and "
        f"checkpoints {epoch['run_samples_per_second']:.1f} samples/s"
    )
    return lines


def format_trunk(trunk: dict, batch_size: int) -> list[str]:
    lines = [
        f"trunk cache ({trunk['max_frames']} frames, {trunk['train_clips']} train clips, batch {batch_size}, "
        f"s/epoch = median of {trunk['epochs']} after 1 untimed)",
        f"{'':<24}{'no cache s/ep':>18}{'trunk cache s/ep':>18}{'ratio':>11}{'build (one-off)':>18}",
    ]
    for variant in trunk["variants"]:
        label = f"{variant['name']} (K={variant['trunk_layers']}/{variant['layers']})"
        lines.append(
            f"{label:<24}{variant['plain_epoch_seconds']:>18.4f}{variant['cached_epoch_seconds']:>18.4f}"
            f"{variant['speedup']:>10.1f}x{variant['build_seconds']:>17.2f}s"
        )
    lines.append(
        f"build: the trunk over all {trunk['cache_clips']} train+validation clips, stored as "
        f"{trunk['variants'][0]['dtype']}; K = frozen layers cached"
    )
    return lines


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print the table, and return the figures."""
    args = parse_args(argv)
    datasets.disable_progress_bars()  # keep the printed table readable
    mel_bins = encoder_config(args.config, DEFAULT_FRAMES).num_mel_bins
    work = Path(tempfile.mkdtemp(prefix="astft-bench-"))
    try:
        per_class = max(1, args.clips // 4)  # the example has 4 classes
        make_example_dataset(work / "data", train_per_class=per_class, validation_per_class=max(1, per_class // 4))
        # data: the default crop's cache is timed cold and warm; the notebook's is only built
        notebook_frames, crop_frames = args.frames
        crop_cache, features = measure_features(work / "data", work / "cache", crop_frames, mel_bins)
        notebook_cache, _ = measure_features(work / "data", work / "cache", notebook_frames, mel_bins)
        caches = {crop_frames: crop_cache, notebook_frames: notebook_cache}
        # train: one fresh process per frame count, so each peak-memory figure is its own
        spawn = multiprocessing.get_context("spawn")
        train = []
        for frames in args.frames:
            job = {
                "device": args.device, "precision": args.precision, "config": args.config, "max_frames": frames,
                "batch_size": args.batch_size, "steps": args.steps, "warmup_steps": args.warmup_steps,
                "peak_tflops": args.peak_tflops, "cpu_threads": args.cpu_threads,
                "cache": caches[frames].model_dump_json(),
            }
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                train.append(pool.submit(measure_training, job).result())
        # trunk cache: head-only and last-N, each with and without it, at the crop's frame count
        job = {
            "device": args.device, "precision": args.precision, "config": args.config, "max_frames": crop_frames,
            "batch_size": args.batch_size, "epochs": args.trunk_epochs, "last_n": last_n_layers(args),
            "cpu_threads": args.cpu_threads, "cache": crop_cache.model_dump_json(), "trunk_dir": str(work / "trunk"),
        }
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            trunk = pool.submit(measure_trunk, job).result()
        # whole epochs of the real training loop at the crop's frame count, against the model step above
        epoch = None
        if args.epoch_epochs:
            job = {
                "device": args.device, "precision": args.precision, "config": args.config, "max_frames": crop_frames,
                "batch_size": args.batch_size, "epochs": args.epoch_epochs, "cpu_threads": args.cpu_threads,
                "cache": crop_cache.model_dump_json(), "work_dir": str(work / "epoch"),
            }
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                epoch = pool.submit(measure_epoch, job).result()
        # fidelity: validation accuracy after the same short fine-tune at both frame counts
        accuracy = []
        for frames in args.frames if args.accuracy_epochs else ():
            job = {
                "device": args.device, "precision": args.precision, "config": args.config, "max_frames": frames,
                "batch_size": args.batch_size, "epochs": args.accuracy_epochs, "cpu_threads": args.cpu_threads,
                "cache": caches[frames].model_dump_json(), "work_dir": str(work / f"accuracy-{frames}"),
            }
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                accuracy.append(pool.submit(measure_accuracy, job).result())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures = {
        "config": args.config, "batch_size": args.batch_size, "steps": args.steps,
        "cpus": os.cpu_count(),
        "load_average": " ".join(f"{load:.2f}" for load in os.getloadavg()),
        "train": train, "features": features, "trunk": trunk, "epoch": epoch, "accuracy": accuracy,
    }
    print(format_table(figures))
    if args.json:
        print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
