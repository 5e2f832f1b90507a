"""The GPU check's benchmark: warm-up, model step, levers and whole epochs, each figure printed as it is measured.

    python benchmarks/bench_gpu.py --device cuda              # quick profile: AST-base, about 2 min on one H100/H200
    python benchmarks/bench_gpu.py --device cuda --full       # docs/gpu.md's lever table, 10,000 clips (longer)
    python benchmarks/bench_gpu.py --device cpu               # a rehearsal on a CPU: the small AST, about 1 min
    python benchmarks/bench_gpu.py --summarize bench.log      # the summary table of a log, also of one cut short

Each figure is one JSON line, {"stage": ..., ...}, printed and flushed the moment it is measured, after a
readable line starting with '#'. A run stopped at any point has therefore reported everything it finished. Each
stage runs in a fresh process: the warm-up stages measure a cold start, and a stage that hangs is stopped at what
is left of --budget seconds. A stage whose estimate does not fit in what is left is skipped, with a line saying
so. The last lines are the summary table (--summarize prints it again from a log).

Stages (docs/gpu.md):
- warmup-model: the model's own first iteration on a cold process (CUDA start, the first forward, backward and
  optimizer step, the first evaluation forward), and the other candidates for a slow start each timed alone:
  the DataLoader's first batch with the run's workers and pinned memory, a checkpoint save, scikit-learn's import;
- warmup-trainer: the fine-tuning Trainer on a cold process: seconds to its first optimizer step and of its first
  and later evaluations; the 'warmup' line then gives what the Trainer adds to the model's own first iteration
  (targets: at most 2 s on a GPU, 1 s on a CPU);
- step: the model step (forward, loss, backward, fused AdamW, as the Trainer does it) at each batch size:
  samples/s and MFU;
- sdpa: which attention kernel torch ran (from the profiler's kernel names);
- transfer: seconds to copy a pinned batch to the GPU stored as float32 and as float16;
- eval-batch: evaluation samples/s at 1, 2 and 4 times the training batch;
- compile: the model step under torch.compile, with its compile seconds;
- epoch: whole epochs of the fine-tuning Trainer (DataLoader, optimizer, scheduler, logging) against the model
  step at the same batch (target: at least 85%), and the whole run with evaluation and checkpoints (70%).
MFU: training FLOPs per sample = 6 * parameters * tokens + 12 * layers * hidden * tokens^2 over the GPU's dense
bf16 peak (benchmarks/bench_training.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (str(REPO), str(Path(__file__).resolve().parent)):
    if path not in sys.path:  # run as a script from anywhere: lib/ and bench_training live here
        sys.path.insert(0, path)

# (name, estimated seconds on a GPU, on a CPU): a stage is skipped when its estimate does not fit the budget left
# In the order they run, the targets first.
STAGES = (
    ("warmup-model", 25, 15), ("warmup-trainer", 30, 15), ("step", 20, 25), ("epoch", 25, 30), ("sdpa", 10, 8),
    ("transfer", 8, 0), ("eval-batch", 10, 10), ("compile", 60, 0),
)
# workers: the warm-up stages' DataLoader workers; on a CPU 2, not auto's 0, so that their start is rehearsed too
QUICK = {"cuda": {"config": "base", "clips": 2048, "batch_sizes": [64, 128, 256], "batch_size": 128, "steps": 30,
                  "epochs": 3, "workers": "auto"},
         "cpu": {"config": "small", "clips": 256, "batch_sizes": [8, 32], "batch_size": 32, "steps": 8, "epochs": 3,
                 "workers": 2}}
FULL = {"cuda": {"config": "base", "clips": 10_000, "batch_sizes": [64, 128, 256, 512], "batch_size": 256,
                 "steps": 50, "epochs": 3, "workers": "auto"},
        "cpu": {"config": "small", "clips": 1024, "batch_sizes": [8, 32, 128], "batch_size": 32, "steps": 10,
                "epochs": 3, "workers": 2}}


def emit(stage: str, text: str, **figures) -> dict:
    """A readable line and the JSON line, flushed at once: a run cut short keeps every figure printed."""
    line = {"stage": stage, **figures}
    print(f"# {stage}: {text}", flush=True)
    print(json.dumps(line), flush=True)
    return line


# --- what each stage's process does -------------------------------------------------------------------------


def _setup(job: dict):
    import torch

    from lib.core.runtime import apply_tf32, resolve_runtime

    if job["device"] == "cpu" and job.get("cpu_threads"):
        torch.set_num_threads(job["cpu_threads"])
    runtime = resolve_runtime(job["device"], "auto", tf32=True)
    apply_tf32(runtime)
    return torch, runtime


def _model(job: dict, runtime, labels: list[str]):
    from bench_training import encoder_config
    from transformers import ASTModel

    from lib.model.classifier import build_classifier

    return build_classifier(ASTModel(encoder_config(job["config"], job["max_frames"])), labels)


def _sync(torch, runtime) -> float:
    if runtime.device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def _batches(job: dict, split: str, size: int):
    """(values, labels) batches of the feature cache, as float32 tensors on the host."""
    import torch

    from lib.data.feature_rows import FeatureRows
    from lib.data.features import FeatureCacheRef, load_split

    rows = FeatureRows(load_split(FeatureCacheRef.model_validate_json(job["cache"]), split))
    batches = []
    for start in range(0, len(rows) - size + 1, size):
        items = rows.__getitems__(list(range(start, start + size)))
        batches.append((torch.stack([item["input_values"] for item in items]),
                        torch.stack([item["label"] for item in items])))
    if not batches:
        raise SystemExit(f"batch {size} is larger than the {len(rows)} {split} clips: raise the profile's clips or "
                         "lower its batch sizes (QUICK and FULL in benchmarks/bench_gpu.py)")
    return batches


def _step_function(torch, runtime, model, optimizer):
    dtype = runtime.autocast_dtype

    def step(values, labels) -> None:
        values = values.to(runtime.device, non_blocking=True)
        labels = labels.to(runtime.device, non_blocking=True)
        with torch.autocast(runtime.device, dtype=dtype, enabled=dtype is not None):
            loss = model(input_values=values, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def stage_warmup_model(job: dict) -> None:
    started = time.perf_counter()
    torch, runtime = _setup(job)
    labels = json.loads(job["labels"])

    def timed(candidate: str, function, text: str) -> float:
        start = _sync(torch, runtime)
        function()
        seconds = _sync(torch, runtime) - start
        emit("warmup-model", f"{text} {seconds:.3f} s", candidate=candidate, seconds=round(seconds, 4))
        return seconds

    emit("warmup-model", f"imports {time.perf_counter() - started:.2f} s", candidate="imports",
         seconds=round(time.perf_counter() - started, 4))
    timed("device_start", lambda: torch.zeros(1, device=runtime.device),
          "device start (CUDA context)" if runtime.device == "cuda" else "device start (nothing to start on a CPU)")
    model = _model(job, runtime, labels)
    timed("model_to_device", lambda: model.to(runtime.device).train(), "model to the device")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    train = _batches(job, "train", job["batch_size"])
    dtype = runtime.autocast_dtype
    values, targets = (tensor.to(runtime.device) for tensor in train[0])
    outputs = {}

    def forward():
        with torch.autocast(runtime.device, dtype=dtype, enabled=dtype is not None):
            outputs["loss"] = model(input_values=values, labels=targets).loss

    first = timed("first_forward", forward, "first forward")
    first += timed("first_backward", lambda: outputs["loss"].backward(), "first backward")
    first += timed("first_optimizer_step", optimizer.step, "first optimizer step (fused AdamW)")
    optimizer.zero_grad(set_to_none=True)
    emit("warmup-model", f"the model's own first iteration {first:.3f} s", candidate="first_iteration",
         seconds=round(first, 4))
    step = _step_function(torch, runtime, model, optimizer)
    timed("second_iteration", lambda: step(*train[1 % len(train)]), "second iteration")
    model.eval()
    evaluation = _batches(job, "validation", min(job["batch_size"], job["validation_clips"]))[0][0]
    short = evaluation[: max(1, len(evaluation) // 2 - 1)]  # the last, partial batch: another shape

    def evaluate(batch):
        def run():
            with torch.no_grad(), torch.autocast(runtime.device, dtype=dtype, enabled=dtype is not None):
                model(input_values=batch.to(runtime.device))
        return run

    timed("first_eval_forward", evaluate(evaluation), "first evaluation forward")
    timed("eval_forward_new_shape", evaluate(short), "evaluation forward at a new batch size")
    timed("second_eval_forward", evaluate(evaluation), "second evaluation forward")

    from lib.config import TrainingConfig
    from lib.data.feature_rows import FeatureRows
    from lib.data.features import FeatureCacheRef, load_split
    from lib.train.arguments import speed_settings

    speed = speed_settings(TrainingConfig(dataloader_num_workers=job["workers"]), runtime)
    rows = FeatureRows(load_split(FeatureCacheRef.model_validate_json(job["cache"]), "train"))
    loader = torch.utils.data.DataLoader(
        rows, batch_size=job["batch_size"], shuffle=True, num_workers=speed.dataloader_num_workers,
        pin_memory=speed.pin_memory, persistent_workers=speed.dataloader_num_workers > 0,
    )
    timed("dataloader_first_batch", lambda: next(iter(loader)),
          f"DataLoader's first batch ({speed.dataloader_num_workers} workers, pin_memory {speed.pin_memory})")
    folder = Path(tempfile.mkdtemp(prefix="astft-bench-save-"))
    try:
        timed("checkpoint_save", lambda: model.save_pretrained(folder), "a checkpoint save (safetensors)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def stage_warmup_trainer(job: dict) -> None:
    torch, runtime = _setup(job)
    from lib.config import TrainingConfig
    from lib.data.feature_rows import FeatureRows
    from lib.data.features import FeatureCacheRef, load_split
    from lib.train.arguments import speed_settings
    from lib.train.classifier import classifier_trainer_setup
    from lib.train.engine import run_trainer
    from lib.train.epochs import read_epoch_records

    cache = FeatureCacheRef.model_validate_json(job["cache"])
    model = _model(job, runtime, cache.label_names)
    # one batch per optimizer step, as the model stage's first iteration: the two are compared
    config = TrainingConfig(epochs=3, batch_size=job["batch_size"], gradient_accumulation_steps=1, warmup_steps=0,
                            save_total_limit=1, dataloader_num_workers=job["workers"])
    work = Path(job["work_dir"]) / "warmup-trainer"
    run = run_trainer(classifier_trainer_setup(
        model, FeatureRows(load_split(cache, "train")), FeatureRows(load_split(cache, "validation")), config, work,
        runtime, "bench-warmup",
    ))
    records = read_epoch_records(work)
    later = [record.evaluation_seconds for record in records[1:]]
    speed = speed_settings(config, runtime)
    emit(
        "warmup-trainer",
        f"first optimizer step {records[0].first_step_seconds:.3f} s, first evaluation "
        f"{records[0].evaluation_seconds:.3f} s, later evaluations {statistics.median(later):.3f} s "
        f"({speed.dataloader_num_workers} workers)",
        first_step_seconds=round(records[0].first_step_seconds, 4),
        first_evaluation_seconds=round(records[0].evaluation_seconds, 4),
        later_evaluation_seconds=round(statistics.median(later), 4),
        phases=run.phases, workers=speed.dataloader_num_workers, pin_memory=speed.pin_memory,
    )


def _step_figures(torch, runtime, model, batches, steps: int, warmup: int) -> tuple[float, float]:
    """Samples/s of the model step over `steps` timed steps after `warmup` untimed ones, and the seconds taken."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    step = _step_function(torch, runtime, model, optimizer)
    for index in range(warmup):
        step(*batches[index % len(batches)])
    start = _sync(torch, runtime)
    for index in range(steps):
        step(*batches[index % len(batches)])
    seconds = _sync(torch, runtime) - start
    return steps * len(batches[0][0]) / seconds, seconds


def _mfu(torch, runtime, model, job: dict, samples_per_second: float) -> float | None:
    from bench_training import encoder_config, peak_flops, train_flops_per_sample

    if runtime.device != "cuda":
        return None
    peak = peak_flops(torch.cuda.get_device_name(), runtime.precision, None)
    flops = train_flops_per_sample(sum(p.numel() for p in model.parameters()),
                                   encoder_config(job["config"], job["max_frames"]))
    return samples_per_second * flops / peak if peak else None


def stage_step(job: dict) -> None:
    torch, runtime = _setup(job)
    labels = json.loads(job["labels"])
    for size in job["batch_sizes"]:
        torch.manual_seed(0)
        model = _model(job, runtime, labels).to(runtime.device).train()
        try:
            speed, _ = _step_figures(torch, runtime, model, _batches(job, "train", size), job["steps"], 3)
        except torch.cuda.OutOfMemoryError:
            emit("step", f"batch {size}: out of memory", batch_size=size, samples_per_second=None, mfu=None)
            continue
        mfu = _mfu(torch, runtime, model, job, speed)
        emit("step", f"batch {size}: {speed:.1f} samples/s" + (f", MFU {mfu:.1%}" if mfu else ""),
             batch_size=size, samples_per_second=round(speed, 2), mfu=mfu and round(mfu, 4),
             precision=runtime.precision)
        del model
        if runtime.device == "cuda":
            torch.cuda.empty_cache()


def stage_sdpa(job: dict) -> None:
    torch, runtime = _setup(job)
    model = _model(job, runtime, json.loads(job["labels"])).to(runtime.device).eval()
    values = _batches(job, "train", job["batch_size"])[0][0].to(runtime.device)
    dtype = runtime.autocast_dtype
    activities = [torch.profiler.ProfilerActivity.CPU]
    if runtime.device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.no_grad(), torch.autocast(runtime.device, dtype=dtype, enabled=dtype is not None):
        model(input_values=values)
        with torch.profiler.profile(activities=activities) as profiler:
            model(input_values=values)
    names = sorted({event.key for event in profiler.key_averages()
                    if any(word in event.key.lower() for word in ("attention", "flash", "fmha", "sdpa", "efficient"))})
    emit("sdpa", f"attention {model.config._attn_implementation}: {', '.join(names) or 'no attention kernel seen'}",
         attention=model.config._attn_implementation, kernels=names)


def stage_transfer(job: dict) -> None:
    torch, runtime = _setup(job)
    values = _batches(job, "train", job["batch_size"])[0][0]
    for dtype in (torch.float32, torch.float16):
        pinned = values.to(dtype).pin_memory()
        for _ in range(3):
            pinned.to(runtime.device, non_blocking=True)
        start = _sync(torch, runtime)
        for _ in range(20):
            pinned.to(runtime.device, non_blocking=True)
        seconds = (_sync(torch, runtime) - start) / 20
        name = str(dtype).removeprefix("torch.")
        emit("transfer", f"a pinned batch of {len(values)} as {name}: {seconds * 1e3:.3f} ms to the GPU",
             dtype=name, batch_size=len(values), milliseconds=round(seconds * 1e3, 4))


def stage_eval_batch(job: dict) -> None:
    torch, runtime = _setup(job)
    model = _model(job, runtime, json.loads(job["labels"])).to(runtime.device).eval()
    dtype = runtime.autocast_dtype
    for multiple in (1, 2, 4):
        size = job["batch_size"] * multiple
        if size > job["validation_clips"]:
            emit("eval-batch", f"batch {size}: more than the {job['validation_clips']} validation clips, skipped",
                 batch_size=size, samples_per_second=None)
            continue
        batches = [values for values, _ in _batches(job, "validation", size)]
        with torch.no_grad(), torch.autocast(runtime.device, dtype=dtype, enabled=dtype is not None):
            model(input_values=batches[0].to(runtime.device))
            start = _sync(torch, runtime)
            for values in batches:
                model(input_values=values.to(runtime.device, non_blocking=True))
            seconds = _sync(torch, runtime) - start
        speed = len(batches) * size / seconds
        emit("eval-batch", f"batch {size}: {speed:.1f} samples/s", batch_size=size, samples_per_second=round(speed, 2))


def stage_compile(job: dict) -> None:
    torch, runtime = _setup(job)
    torch.manual_seed(0)
    model = _model(job, runtime, json.loads(job["labels"])).to(runtime.device).train()
    batches = _batches(job, "train", job["batch_size"])
    compiled = torch.compile(model)
    start = _sync(torch, runtime)
    _step_figures(torch, runtime, compiled, batches, 1, 0)  # the first call compiles
    compile_seconds = _sync(torch, runtime) - start
    speed, _ = _step_figures(torch, runtime, compiled, batches, job["steps"], 2)
    mfu = _mfu(torch, runtime, model, job, speed)
    emit("compile", f"batch {job['batch_size']}: {speed:.1f} samples/s compiled (compile {compile_seconds:.1f} s)"
         + (f", MFU {mfu:.1%}" if mfu else ""), batch_size=job["batch_size"], samples_per_second=round(speed, 2),
         mfu=mfu and round(mfu, 4), compile_seconds=round(compile_seconds, 2))


def stage_epoch(job: dict) -> None:
    torch, runtime = _setup(job)
    from bench_training import EpochTimer

    from lib.config import TrainingConfig
    from lib.data.feature_rows import FeatureRows
    from lib.data.features import FeatureCacheRef, load_split
    from lib.train.arguments import speed_settings
    from lib.train.classifier import classifier_trainer_setup
    from lib.train.engine import run_trainer

    cache = FeatureCacheRef.model_validate_json(job["cache"])
    torch.manual_seed(0)
    model = _model(job, runtime, cache.label_names)
    config = TrainingConfig(epochs=job["epochs"], batch_size=job["batch_size"], gradient_accumulation_steps=1,
                            learning_rate=1e-5, warmup_steps=0, save_total_limit=1)  # a step per batch, as `step`
    timer = EpochTimer(runtime.device == "cuda")
    train = FeatureRows(load_split(cache, "train"))
    start = time.perf_counter()
    run_trainer(classifier_trainer_setup(
        model, train, FeatureRows(load_split(cache, "validation")), config, Path(job["work_dir"]) / "epoch", runtime,
        "bench-epoch", extra_callbacks=[timer],
    ))
    run_seconds = time.perf_counter() - start
    epoch = len(train) / statistics.median(timer.seconds[1:] or timer.seconds)
    run = len(train) * job["epochs"] / run_seconds
    step = job.get("step_samples_per_second")
    ratio = epoch / step if step else None
    speed = speed_settings(config, runtime)
    emit("epoch", f"batch {job['batch_size']}, {len(train)} clips: whole epoch {epoch:.1f} samples/s"
         + (f" = {ratio:.0%} of the model step (target 85%), whole run {run / step:.0%} (target 70%)" if step else ""),
         batch_size=job["batch_size"], clips=len(train), samples_per_second=round(epoch, 2),
         run_samples_per_second=round(run, 2), step_samples_per_second=step, ratio=ratio and round(ratio, 4),
         run_ratio=step and round(run / step, 4), workers=speed.dataloader_num_workers, pin_memory=speed.pin_memory)


STAGE_FUNCTIONS = {
    "warmup-model": stage_warmup_model, "warmup-trainer": stage_warmup_trainer, "step": stage_step,
    "sdpa": stage_sdpa, "transfer": stage_transfer, "eval-batch": stage_eval_batch, "compile": stage_compile,
    "epoch": stage_epoch,
}


# --- the driver ----------------------------------------------------------------------------------------------


def run_stage(name: str, job: dict, seconds_left: float) -> list[dict]:
    """Run one stage in a fresh process, relaying its lines as they come; its JSON lines, parsed.

    The stage and whatever it starts (DataLoader workers, compile workers) are one process group, killed together
    when the budget runs out, silent or not: their end closes the pipe this reads.
    """
    command = [sys.executable, "-u", __file__, "--stage", name, "--job", json.dumps(job)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                             start_new_session=True)
    timer = threading.Timer(max(seconds_left, 0.0), _kill_group, (child.pid,))
    timer.start()
    figures, other = [], []
    try:
        for line in child.stdout:
            figure = parse_figure(line)
            if figure is not None:
                figures.append(figure)
            if figure is not None or line.startswith("# "):
                print(line, end="", flush=True)
            else:
                other.append(line)  # warnings, progress, a traceback: shown only if the stage fails
        child.wait()
    finally:
        stopped = not timer.is_alive()  # the timer fired: the budget ran out
        timer.cancel()
        _kill_group(child.pid)  # a driver stopped by Ctrl-C takes its stage with it; after a clean end, a no-op
        child.wait()
    if stopped:
        figures.append(emit(name, f"stopped at the budget ({seconds_left:.0f} s left when it started)",
                            status="stopped"))
    elif child.returncode:
        print("".join(other[-25:]), end="", flush=True)
        figures.append(emit(name, f"failed (exit {child.returncode})", status="failed"))
    return figures


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # already gone


def parse_figure(line: str) -> dict | None:
    """A figure line's JSON, or None for any other line (one that merely starts with '{' included)."""
    if not line.startswith("{"):
        return None
    try:
        figure = json.loads(line)
    except json.JSONDecodeError:
        return None
    return figure if isinstance(figure, dict) and "stage" in figure else None


def make_data(args: argparse.Namespace, profile: dict, work: Path) -> dict:
    """The example's 4 classes, their feature cache at 128 frames; what every stage's job carries."""
    import datasets
    from bench_training import DEFAULT_FRAMES, encoder_config

    from lib.data.features import FeatureParams, build_feature_cache
    from lib.data.scan import scan_dataset
    from lib.example import make_example_dataset

    datasets.disable_progress_bars()
    per_class = max(2, profile["clips"] // 4)
    validation_per_class = max(2, min(per_class // 4, 256))
    make_example_dataset(work / "data", train_per_class=per_class, validation_per_class=validation_per_class)
    manifest = scan_dataset(work / "data" / "train", work / "data" / "validation")
    mel_bins = encoder_config(profile["config"], DEFAULT_FRAMES).num_mel_bins
    cache, _ = build_feature_cache(
        manifest, FeatureParams(num_mel_bins=mel_bins, max_frames=DEFAULT_FRAMES), work / "cache"
    )
    return {
        "device": args.device, "config": profile["config"], "max_frames": DEFAULT_FRAMES,
        "batch_size": profile["batch_size"], "batch_sizes": profile["batch_sizes"], "steps": profile["steps"],
        "epochs": profile["epochs"], "cache": cache.model_dump_json(), "labels": json.dumps(cache.label_names),
        "validation_clips": cache.num_clips["validation"], "work_dir": str(work / "runs"),
        "workers": profile["workers"], "cpu_threads": args.cpu_threads,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stage:
        STAGE_FUNCTIONS[args.stage](json.loads(args.job))
        return 0
    if args.summarize:
        try:
            text = Path(args.summarize).read_text(errors="replace")
        except OSError as error:
            print(f"bench_gpu: cannot read {args.summarize}: {error.strerror}", file=sys.stderr)
            return 2
        print(summary([figure for line in text.splitlines() if (figure := parse_figure(line)) is not None]))
        return 0
    started = time.monotonic()
    # `timeout` and schedulers stop with SIGTERM: end as Ctrl-C does, stopping the running stage and cleaning up
    signal.signal(signal.SIGTERM, _interrupt)
    profile = (FULL if args.full else QUICK)[args.device]
    lines = [emit("machine", f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
         f"device {args.device}, profile {'full' if args.full else 'quick'}, budget {args.budget:.0f} s",
         cpus=os.cpu_count(), load_average=list(os.getloadavg()), device=args.device,
         profile="full" if args.full else "quick", budget_seconds=args.budget, **profile)]
    work = Path(tempfile.mkdtemp(prefix="astft-bench-gpu-"))
    try:
        job = make_data(args, profile, work)
        seconds = time.monotonic() - started
        lines.append(emit("data", f"{profile['clips']} train clips, their features in {seconds:.1f} s",
                          seconds=round(seconds, 2)))
        for name, gpu_estimate, cpu_estimate in STAGES:
            estimate = gpu_estimate if args.device == "cuda" else cpu_estimate
            left = args.budget - (time.monotonic() - started)
            if args.stages and name not in args.stages:
                continue
            if not estimate:
                lines.append(emit(name, f"not on {args.device}", status="skipped", reason=f"not on {args.device}"))
                continue
            if estimate > left:
                lines.append(emit(name, f"skipped: needs about {estimate} s, {left:.0f} s of the budget left",
                                  status="skipped", reason="budget"))
                continue
            if name == "epoch":  # the model step at the epoch's batch size, to compare against
                step = next((line for line in lines if line["stage"] == "step"
                             and line.get("batch_size") == job["batch_size"]), {})
                job["step_samples_per_second"] = step.get("samples_per_second")
            lines += run_stage(name, job, left)
            if name == "warmup-trainer" and any(line.get("candidate") for line in lines):
                lines.append(warmup_verdict(lines, args.device))
    except KeyboardInterrupt:  # Ctrl-C (or SIGTERM): the running stage is stopped; what was measured stays
        lines.append(emit("interrupted", "stopped by Ctrl-C or a signal", status="interrupted"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not args.no_summary:
        print(summary(lines), flush=True)
    return 1 if any(line.get("status") in ("failed", "stopped", "interrupted") for line in lines) else 0


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def warmup_verdict(lines: list[dict], device: str) -> dict:
    """What the Trainer's start adds to the model's own first iteration, against the issue's targets."""
    model = {line["candidate"]: line["seconds"] for line in lines if "candidate" in line}
    trainer = next((line for line in lines if line["stage"] == "warmup-trainer" and "first_step_seconds" in line), None)
    if trainer is None or "first_iteration" not in model:
        return emit("warmup", "not measured (a warm-up stage did not finish)", status="incomplete")
    target = 2.0 if device == "cuda" else 1.0
    # the model's own costs: its first iteration (the model is already on the device when training starts)
    step_stall = trainer["first_step_seconds"] - model["first_iteration"]
    own_evaluation = max(0.0, model.get("first_eval_forward", 0.0) - model.get("second_eval_forward", 0.0))
    evaluation_stall = trainer["first_evaluation_seconds"] - trainer["later_evaluation_seconds"] - own_evaluation
    met = step_stall <= target and evaluation_stall <= target
    return emit(
        "warmup",
        f"the Trainer adds {step_stall:.2f} s before its first step and {evaluation_stall:.2f} s to its first "
        f"evaluation beyond the model's own first-call costs (target at most {target:.0f} s each: "
        f"{'met' if met else 'missed'})",
        first_step_stall_seconds=round(step_stall, 3), first_evaluation_stall_seconds=round(evaluation_stall, 3),
        target_seconds=target, met=met,
    )


def summary(lines: list[dict]) -> str:
    """The table the check ends with: one row per figure that matters, from whatever lines there are."""
    rows = []

    def row(name: str, value: str) -> None:
        rows.append(f"{name:<44}{value}")

    for line in lines:
        try:
            summary_row(line, row)
        except (KeyError, TypeError, ValueError, IndexError):  # a line cut or edited by hand: say so, keep the rest
            row(str(line.get("stage")), "unreadable figure line")
    return "\n".join(["==== bench_gpu summary", *rows])


def summary_row(line: dict, row: Callable[[str, str], None]) -> None:
    """The summary's row for one figure line, if it has one."""
    stage = line["stage"]
    if line.get("status") in ("skipped", "stopped", "failed", "incomplete", "interrupted"):
        row(stage, f"{line['status']}" + (f" ({line['reason']})" if line.get("reason") else ""))
    elif stage == "machine":
        row("machine", f"{line['cpus']} CPUs, load {line['load_average'][0]:.2f}, {line['device']}, "
                       f"{line['profile']} profile, AST {line['config']}")
    elif stage == "warmup-trainer":
        row("Trainer: first optimizer step / first eval", f"{line['first_step_seconds']:.2f} s / "
            f"{line['first_evaluation_seconds']:.2f} s (later evals {line['later_evaluation_seconds']:.2f} s)")
    elif stage == "warmup":
        row("warm-up stall: first step / first eval", f"{line['first_step_stall_seconds']:.2f} s / "
            f"{line['first_evaluation_stall_seconds']:.2f} s (target <= {line['target_seconds']:.0f} s: "
            f"{'met' if line['met'] else 'missed'})")
    elif stage == "warmup-model" and line["candidate"] in ("device_start", "first_iteration"):
        row(f"model: {line['candidate'].replace('_', ' ')}", f"{line['seconds']:.2f} s")
    elif stage in ("step", "compile") and line.get("samples_per_second"):
        mfu = f", MFU {line['mfu']:.1%} (target 40%)" if line.get("mfu") else ""
        row(f"{'model step' if stage == 'step' else 'compiled step'}, batch {line['batch_size']}",
            f"{line['samples_per_second']:.1f} samples/s{mfu}")
    elif stage == "sdpa":
        row("attention kernel", f"{line['attention']}: {', '.join(line['kernels'][:3]) or 'n/a'}")
    elif stage == "transfer":
        row(f"pinned batch to the GPU, {line['dtype']}", f"{line['milliseconds']:.3f} ms")
    elif stage == "eval-batch" and line.get("samples_per_second"):
        row(f"evaluation, batch {line['batch_size']}", f"{line['samples_per_second']:.1f} samples/s")
    elif stage == "epoch":
        ratios = (f" = {line['ratio']:.0%} of the step (target 85%), whole run {line['run_ratio']:.0%} (70%)"
                  if line.get("ratio") else "")
        row(f"whole epoch, batch {line['batch_size']}", f"{line['samples_per_second']:.1f} samples/s{ratios}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--full", action="store_true", help="the lever table's profile: 10,000 clips, batch to 512")
    parser.add_argument("--budget", type=float, default=150.0, help="seconds for all stages (default 150)")
    parser.add_argument("--stages", nargs="+", choices=list(STAGE_FUNCTIONS), help="only these stages")
    parser.add_argument("--cpu-threads", type=int, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--summarize", metavar="LOG", help="print the summary table of a benchmark log and stop")
    parser.add_argument("--no-summary", action="store_true", help="leave the table out (gpu_check.sh prints it last)")
    parser.add_argument("--stage", choices=list(STAGE_FUNCTIONS), help=argparse.SUPPRESS)  # a stage's own process
    parser.add_argument("--job", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
