"""Benchmark: how the data stages grow with the number of clips (time and peak memory).

    python benchmarks/bench_scale.py                        # 2,000 clips, a minute or two
    python benchmarks/bench_scale.py --clips 2000 10000 50000
    python benchmarks/bench_scale.py --clips 100000         # Speech Commands v2 size

For each N it synthesises N one-second 16 kHz clips (4 classes, 90% train / 10% validation; a
pool of distinct clips is written once and copied, since decoding cost does not depend on the
content), then runs each stage in a fresh process and prints its seconds, clips/s and the
process's peak RSS:
- scan: folder listing, header probe of every clip, fingerprint (lib/scan.py)
- build: the Arrow feature cache, cold (decode, resample, fbank, write)
- hit: the feature stage on a cache hit (key check, memory-map)
- epoch: one pass of a shuffled torch DataLoader over the cached train features (batch 32), no model
plus the feature cache's size on disk. Time should grow linearly with N and peak RSS stay flat:
the last columns give each figure relative to the smallest N.
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
STAGES = ("scan", "build", "hit", "epoch")


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


def run_stage(stage: str, root: Path) -> dict:
    """One stage in this (fresh) process; returns seconds and the process's peak RSS."""
    from lib.config import FeatureConfig
    from lib.features import FeatureParams, build_feature_cache, load_split
    from lib.scan import scan_dataset

    params = FeatureParams(**FeatureConfig().model_dump(), num_mel_bins=128)
    cache = root / "cache"
    start = time.perf_counter()
    manifest = scan_dataset(root / "train", root / "validation")
    scanned = time.perf_counter()
    result: dict = {"clips": len(manifest.train) + len(manifest.validation)}
    if stage == "scan":
        result["seconds"] = scanned - start
    elif stage in ("build", "hit"):
        ref, hit = build_feature_cache(manifest, params, cache)
        if hit != (stage == "hit"):
            raise RuntimeError(f"stage {stage}: expected a cache {'hit' if stage == 'hit' else 'miss'}")
        result["seconds"] = time.perf_counter() - scanned
        result["disk_mb"] = sum(p.stat().st_size for p in Path(ref.path).iterdir()) / 2**20
    else:
        import torch

        ref, _ = build_feature_cache(manifest, params, cache)
        train = load_split(ref, "train")
        loaded = time.perf_counter()
        loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True)
        seen = sum(len(batch["label"]) for batch in loader)
        result["seconds"] = time.perf_counter() - loaded
        result["clips"] = seen
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
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
    parser.add_argument("--workdir", type=Path, default=None, help="where to write clips and caches (default: a temp dir)")
    parser.add_argument("--stage", choices=("synth", *STAGES), help=argparse.SUPPRESS)  # internal: one stage
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage == "synth":
        synthesise(args.root, args.clips[0])
        return []
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.root)))
        return []

    print(f"# bench_scale: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    rows = []
    base = args.workdir or Path(tempfile.mkdtemp(prefix="astft-bench-scale-"))
    for clips in args.clips:
        root = base / f"n{clips}"
        shutil.rmtree(root, ignore_errors=True)
        started = time.perf_counter()
        # Every stage, synthesis included, runs in its own process: Linux keeps a process's peak RSS
        # across fork and exec, so this parent must stay small for the children's figures to be theirs.
        subprocess.run([sys.executable, __file__, "--stage", "synth", "--root", str(root), "--clips", str(clips)], check=True)
        print(f"# N={clips}: synthesised in {time.perf_counter() - started:.1f} s", flush=True)
        for stage in STAGES:
            output = subprocess.run(
                [sys.executable, __file__, "--stage", stage, "--root", str(root)],
                check=True, capture_output=True, text=True,
            ).stdout
            result = json.loads(output.strip().splitlines()[-1])
            rows.append({"N": clips, "stage": stage, **result})
            print(f"  {stage:<6} {result['seconds']:8.2f} s  {result['clips'] / max(result['seconds'], 1e-9):9.0f} clips/s"
                  f"  peak RSS {result['peak_rss_mb']:7.0f} MB" + (f"  cache {result['disk_mb']:.0f} MB" if "disk_mb" in result else ""),
                  flush=True)
        shutil.rmtree(root, ignore_errors=True)
    if args.workdir is None:
        shutil.rmtree(base, ignore_errors=True)

    smallest = min(args.clips)
    first = {row["stage"]: row for row in rows if row["N"] == smallest}
    print(f"\n{'N':>7} {'stage':<6} {'seconds':>9} {'clips/s':>9} {'peak MB':>8} {'anon MB':>8} {'file MB':>8} "
          f"{'time x':>7} {'RSS x':>6}  (x: vs N={smallest}; anon/file: resident at the end of the stage)")
    for row in rows:
        ref = first[row["stage"]]
        print(f"{row['N']:>7} {row['stage']:<6} {row['seconds']:>9.2f} {row['clips'] / max(row['seconds'], 1e-9):>9.0f} "
              f"{row['peak_rss_mb']:>8.0f} {row.get('anon_mb', 0):>8.0f} {row.get('file_mb', 0):>8.0f} "
              f"{row['seconds'] / max(ref['seconds'], 1e-9):>7.2f} "
              f"{row['peak_rss_mb'] / ref['peak_rss_mb']:>6.2f}")
    return rows


if __name__ == "__main__":
    main()
