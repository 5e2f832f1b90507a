"""Benchmark: how the data stages grow with the number of clips (time and peak memory).

    python benchmarks/bench_scale.py                        # 2,000 clips, a minute or two
    python benchmarks/bench_scale.py --clips 2000 10000 50000
    python benchmarks/bench_scale.py --clips 100000         # Speech Commands v2 size
    python benchmarks/bench_scale.py --workers 4            # the parallel builds on 4 processes

For each N it synthesises N one-second 16 kHz clips (4 classes, 90% train / 10% validation; a
pool of distinct clips is written once and copied, since decoding cost does not depend on the
content), then runs each stage in a fresh process and prints its seconds, clips/s, CPU seconds
(the process's and its workers'), the process's peak RSS and its largest worker process's, and
the load average when the stage started:
- scan: folder listing, header probe of every clip, fingerprint (lib/scan.py)
- build-1: the Arrow feature cache, cold (decode, resample, fbank, write), on one process
- build: the same cold build on --workers processes (default: one per usable core)
- hit: the feature stage on a cache hit (key check, memory-map)
- epoch: one pass of a shuffled torch DataLoader over the cached train features (batch 32), no model
- build-f16: the parallel cold build with features.storage_dtype float16
plus each cache's size on disk and per clip. Time should grow linearly with N and peak RSS stay
flat: the last columns give each figure relative to the smallest N. After each N, a line gives the
parallel build's speed-up over one process, the cores each build had (CPU over wall seconds) and
float16's size against float32's. On a machine shared with other work, a parallel build that had
fewer cores than it has workers was slowed by that work, not by its own overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: lib/ lives in the repository root
    sys.path.insert(0, str(REPO))

CLASSES = ("chirp", "noise_burst", "tone_high", "tone_low")
POOL_PER_CLASS = 50  # distinct clips per class; the rest are copies
STAGES = ("scan", "build-1", "build", "hit", "epoch", "build-f16")
# Each build stage's cache folder under the N's root: build-1 and build share a key (the worker
# count is not part of it), so they need folders of their own.
CACHES = {"build-1": "cache-1", "build": "cache", "hit": "cache", "epoch": "cache", "build-f16": "cache-f16"}


def synthesise(root: Path, clips: int) -> tuple[Path, Path]:
    """root/{train,validation}/<class>/*.wav, `clips` in all."""
    from lib.example import make_example_dataset

    pool = root / "pool"
    make_example_dataset(pool, train_per_class=POOL_PER_CLASS, validation_per_class=0, classes=CLASSES, seed=0)
    per_class = clips // len(CLASSES)
    validation = max(1, per_class // 10)
    for class_name in CLASSES:
        sources = sorted((pool / "train" / class_name).glob("*.wav"))
        for index in range(per_class):
            split = "validation" if index < validation else "train"
            folder = root / split / class_name
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sources[index % len(sources)], folder / f"{class_name}_{index:06d}.wav")
    shutil.rmtree(pool)
    return root / "train", root / "validation"


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished workers: on a machine shared with other work,
    what a parallel build costs, beside how long it took (its wall time depends on the free cores)."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def run_stage(stage: str, root: Path, workers: int) -> dict:
    """One stage in this (fresh) process; returns seconds and the process's peak RSS."""
    from lib.config import FeatureConfig
    from lib.data.features import (
        FeatureParams,
        build_feature_cache,
        build_workers,
        load_split,
    )
    from lib.data.scan import scan_dataset

    load = os.getloadavg()[0]
    params = FeatureParams(**FeatureConfig().model_dump(), num_mel_bins=128)
    if stage == "build-f16":
        params = params.model_copy(update={"storage_dtype": "float16"})
    workers = 1 if stage == "build-1" else workers
    cache = root / CACHES.get(stage, "cache")
    start, cpu_start = time.perf_counter(), cpu_seconds()
    manifest = scan_dataset(root / "train", root / "validation")
    scanned, cpu_scanned = time.perf_counter(), cpu_seconds()
    result: dict = {"clips": len(manifest.train) + len(manifest.validation), "load_average": load}
    if stage == "scan":
        result["seconds"], result["cpu_seconds"] = scanned - start, cpu_scanned - cpu_start
    elif stage != "epoch":
        ref, hit = build_feature_cache(manifest, params, cache, workers=workers)
        if hit != (stage == "hit"):
            raise RuntimeError(f"stage {stage}: expected a cache {'hit' if stage == 'hit' else 'miss'}")
        result["seconds"], result["cpu_seconds"] = time.perf_counter() - scanned, cpu_seconds() - cpu_scanned
        result["disk_bytes"] = sum(p.stat().st_size for p in Path(ref.path).iterdir())
        result["disk_mb"] = result["disk_bytes"] / 2**20
        result["workers"] = build_workers(workers, result["clips"])
    else:
        import torch

        ref, _ = build_feature_cache(manifest, params, cache)
        train = load_split(ref, "train")
        loaded, cpu_loaded = time.perf_counter(), cpu_seconds()
        loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True)
        seen = sum(len(batch["label"]) for batch in loader)
        result["seconds"], result["cpu_seconds"] = time.perf_counter() - loaded, cpu_seconds() - cpu_loaded
        result["clips"] = seen
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    result["peak_rss_mb"] = usage[0].ru_maxrss / 1024  # KiB on Linux
    # The largest of the finished worker processes (0 when the build ran in this one). A forked
    # worker's RSS counts the pages it shares with this process (torch and lib/ already loaded).
    result["worker_peak_mb"] = usage[1].ru_maxrss / 1024
    # RSS counts the pages of memory-mapped cache files read so far (file-backed, reclaimable page
    # cache) as well as the process's own memory: the split tells which one grows with N.
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    for key, name in (("RssAnon", "anon_mb"), ("RssFile", "file_mb")):
        if key in status:
            result[name] = int(status[key].split()[0]) / 1024
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, nargs="+", default=[2000], help="dataset sizes N (default 2000)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to write clips and caches (default: a temp dir)")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes of the parallel builds "
                             "(default 0: one per usable core, data.feature_workers)")
    parser.add_argument("--stage", choices=("synth", *STAGES), help=argparse.SUPPRESS)  # internal: one stage
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage == "synth":
        synthesise(args.root, args.clips[0])
        return []
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.root, args.workers)))
        return []

    # Not lib.data.features.usable_cores: importing torch here would raise the stages' peak RSS (see below).
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = args.workers
    print(f"# bench_scale: {os.cpu_count()} CPUs ({usable} usable), parallel builds on "
          f"{workers or 'one process per usable core'}, load average {os.getloadavg()[0]:.2f}")
    rows = []
    base = args.workdir or Path(tempfile.mkdtemp(prefix="astft-bench-scale-"))
    for clips in args.clips:
        root = base / f"n{clips}"
        shutil.rmtree(root, ignore_errors=True)
        started = time.perf_counter()
        # Every stage, synthesis included, runs in its own process: Linux keeps a process's peak RSS
        # across fork and exec, so this parent must stay small for the children's figures to be theirs.
        subprocess.run(
            [sys.executable, __file__, "--stage", "synth", "--root", str(root), "--clips", str(clips)], check=True
        )
        print(f"# N={clips}: synthesised in {time.perf_counter() - started:.1f} s", flush=True)
        for stage in STAGES:
            output = subprocess.run(
                [sys.executable, __file__, "--stage", stage, "--root", str(root), "--workers", str(workers)],
                check=True, capture_output=True, text=True,
            ).stdout
            result = json.loads(output.strip().splitlines()[-1])
            rows.append({"N": clips, "stage": stage, **result})
            disk = (f"  cache {result['disk_mb']:.0f} MB, "
                    f"{result['disk_bytes'] / result['clips'] / 1024:.1f} KB/clip"
                    if "disk_bytes" in result else "")
            print(f"  {stage:<9} {result['seconds']:8.2f} s  "
                  f"{result['clips'] / max(result['seconds'], 1e-9):9.0f} clips/s"
                  f"  CPU {result['cpu_seconds']:7.2f} s  peak RSS {result['peak_rss_mb']:5.0f} MB, "
                  f"workers {result['worker_peak_mb']:5.0f} MB"
                  f"  load {result['load_average']:.2f}{disk}", flush=True)
            if stage == "build-1":  # only its figures were needed: free the disk for the next cache
                shutil.rmtree(root / CACHES[stage], ignore_errors=True)
        print("  " + compare(rows[-len(STAGES):]), flush=True)
        shutil.rmtree(root, ignore_errors=True)
    if args.workdir is None:
        shutil.rmtree(base, ignore_errors=True)

    smallest = min(args.clips)
    first = {row["stage"]: row for row in rows if row["N"] == smallest}
    print(f"\n{'N':>7} {'stage':<9} {'seconds':>9} {'clips/s':>9} {'CPU s':>8} {'peak MB':>8} {'worker MB':>9} "
          f"{'anon MB':>8} {'file MB':>8} {'load':>5} {'time x':>7} {'RSS x':>6}  "
          f"(x: vs N={smallest}; worker: largest worker's peak; anon/file: resident at the end of the stage)")
    for row in rows:
        ref = first[row["stage"]]
        print(f"{row['N']:>7} {row['stage']:<9} {row['seconds']:>9.2f} "
              f"{row['clips'] / max(row['seconds'], 1e-9):>9.0f} "
              f"{row['cpu_seconds']:>8.2f} {row['peak_rss_mb']:>8.0f} {row['worker_peak_mb']:>9.0f} "
              f"{row.get('anon_mb', 0):>8.0f} {row.get('file_mb', 0):>8.0f} {row['load_average']:>5.2f} "
              f"{row['seconds'] / max(ref['seconds'], 1e-9):>7.2f} "
              f"{row['peak_rss_mb'] / ref['peak_rss_mb']:>6.2f}")
    return rows


def compare(rows: list[dict]) -> str:
    """One N's parallel build against one process, and float16's cache against float32's."""
    stage = {row["stage"]: row for row in rows}
    one, parallel, half = stage["build-1"], stage["build"], stage["build-f16"]
    speedup = one["seconds"] / max(parallel["seconds"], 1e-9)
    processes = f"{parallel['workers']} process{'es' if parallel['workers'] > 1 else ''}"
    # CPU seconds over wall seconds: the cores a build actually had (under 2 on 2 cores: other work took some).
    cores = [row["cpu_seconds"] / max(row["seconds"], 1e-9) for row in (one, parallel)]
    return (f"parallel build: {processes} {speedup:.2f}x the clips/s of one, for "
            f"{parallel['cpu_seconds'] / max(one['cpu_seconds'], 1e-9):.2f}x its CPU seconds "
            f"(cores busy: {cores[0]:.2f} and {cores[1]:.2f}); cache "
            f"{parallel['disk_bytes'] / parallel['clips'] / 1024:.1f} KB/clip float32, "
            f"{half['disk_bytes'] / half['clips'] / 1024:.1f} KB/clip float16 "
            f"({half['disk_bytes'] / parallel['disk_bytes']:.3f} of it)")


if __name__ == "__main__":
    main()
