"""Benchmark: `astft finetune` against the plain Hugging Face recipe, whole process, side by side.

    python benchmarks/bench_peer.py                          # ~200 clips x 10 epochs, 3 alternating pairs
    python benchmarks/bench_peer.py --per-class 2500 --epochs 3 --pairs 2     # the 10,000-clip size

Both sides get the same generated clips (lib/example.py: 4 classes, 1 s, 16 kHz), the same tiny random AST
checkpoint as the starting point (written once), 128 frames, the same epochs, batch size, learning rate and
cosine schedule with warm-up. The peer is benchmarks/peer_recipe.py (stock ASTForAudioClassification,
features per batch through `datasets`' set_transform, load_best_model_at_end). Each side runs as a fresh
process, alternating astft / peer in pairs, each with fresh output and cache folders (so astft builds its
feature cache every time: the first run a user makes). astft runs on its local Prefect server and in its warm
process (flows/warm.py: torch, transformers and datasets imported once), both started before the first pair, as
a user's earlier command leaves them (`--cold`: each astft command in its own process, importing everything, as
a first command does; `--ephemeral`: a server start per run as well).

`--cold-start` compares astft with itself instead: each run on a fresh ASTFT_HOME (a user's first run, which
starts the local server), alternating the server started after the plan (ASTFT_EARLY_SERVER_START=0) with the
server started while the CLI imports and plans (the default).

Prints, as each run ends: its wall time and accuracy, and its phase breakdown (astft: member.json's phases;
peer: its own); at the end the medians and the astft/peer ratio. And the load average: a loaded machine's
figures mean little.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lib.example import make_example_dataset, tiny_ast_config  # noqa: E402


def write_checkpoint(folder: Path, seed: int = 0) -> Path:
    """A random tiny AST encoder as an SSL checkpoint folder (model.safetensors + config.json)."""
    import torch
    from transformers import ASTModel

    torch.manual_seed(seed)
    ASTModel(tiny_ast_config()).save_pretrained(str(folder))
    return folder


def run_astft(data: Path, checkpoint: Path, work: Path, args, env: dict[str, str] | None = None) -> dict:
    command = [
        sys.executable, "-m", "flows", "finetune", "--train-dir", str(data / "train"), "--validation-dir",
        str(data / "validation"), "--ssl-checkpoint", str(checkpoint), "--name", "bench", "--output-dir",
        str(work / "out"), "--cache-dir", str(work / "cache"), "--epochs", str(args.epochs), "--batch-size",
        str(args.batch_size), "--learning-rate", str(args.learning_rate), "--warmup-steps", str(args.warmup_steps),
        "--device", "cpu", "--set", "training.gradient_accumulation_steps=1",
        *(["--ephemeral"] if args.ephemeral else []),
    ]
    env = env or _env()
    if args.cold or args.ephemeral:
        env = {**env, "ASTFT_WARM": "0"}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"astft failed ({done.returncode}):\n{done.stderr[-3000:]}")
    member = json.loads((work / "out" / "best" / "bench" / "member.json").read_text())
    metrics = json.loads((work / "out" / "best" / "bench" / "metrics.json").read_text())
    return {"wall": wall, "accuracy": metrics["accuracy"], "phases": member["phases"]}


def run_peer(data: Path, checkpoint: Path, work: Path, args) -> dict:
    command = [
        sys.executable, str(REPO / "benchmarks" / "peer_recipe.py"), str(data / "train"), str(data / "validation"),
        str(checkpoint), str(work / "peer"), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
        "--learning-rate", str(args.learning_rate), "--warmup-steps", str(args.warmup_steps),
    ]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=_env())
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"the peer recipe failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall": wall, "accuracy": result["accuracy"], "phases": result["phases"]}


def run_cold(early: bool):
    """run_astft on a fresh ASTFT_HOME (the server starts, then is stopped), the server started early or not."""
    def run(data: Path, checkpoint: Path, work: Path, args) -> dict:
        env = {**_env(), "ASTFT_HOME": str(work / "home"), "ASTFT_EARLY_SERVER_START": "1" if early else "0",
               "ASTFT_WARM": "0"}  # a first command imports everything (and its home is removed after it)
        try:
            return run_astft(data, checkpoint, work, args, env)
        finally:
            subprocess.run([sys.executable, "-m", "flows", "server", "stop", "--force"], cwd=REPO, env=env,
                           capture_output=True, timeout=120)
    return run


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def show(side: str, pair: int, result: dict) -> None:
    phases = ", ".join(f"{name} {seconds:.2f}" for name, seconds in result["phases"].items())
    print(f"pair {pair} {side:>5}: {result['wall']:6.1f} s wall, accuracy {result['accuracy']:.4f}; "
          f"phases (s): {phases}; load {os.getloadavg()[0]:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=40, help="train clips per class (4 classes; default 40)")
    parser.add_argument("--validation-per-class", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--ephemeral", action="store_true",
                        help="astft starts a server of its own each run (and imports everything: no warm process)")
    parser.add_argument("--cold", action="store_true",
                        help="each astft command in its own process, importing everything (no warm process)")
    parser.add_argument("--cold-start", action="store_true",
                        help="astft against itself on a fresh server each run: started after the plan, or early")
    args = parser.parse_args()
    sides = (("after", run_cold(False)), ("early", run_cold(True))) if args.cold_start else (
        ("astft", run_astft), ("peer", run_peer))

    root = Path(tempfile.mkdtemp(prefix="astft-bench-peer-"))
    os.environ.setdefault("ASTFT_HOME", str(root / "astft-home"))
    try:
        data = root / "data"
        make_example_dataset(data, args.per_class, args.validation_per_class)
        checkpoint = write_checkpoint(root / "checkpoint")
        clips = 4 * (args.per_class + args.validation_per_class)
        print(f"{clips} clips ({4 * args.per_class} train), {args.epochs} epochs, batch {args.batch_size}, "
              f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        if not args.ephemeral and not args.cold_start:
            from flows.server import local_server

            print(f"astft's local Prefect server: {local_server()} (started before the pairs)", flush=True)
        if not (args.ephemeral or args.cold or args.cold_start):
            started = subprocess.run([sys.executable, "-m", "flows.warm", "start"], cwd=REPO, env=_env(),
                                     capture_output=True, text=True, timeout=300)
            if started.returncode:
                raise SystemExit(f"astft's warm process did not start:\n{started.stderr[-2000:]}")
            print(f"astft's warm process: {started.stdout.strip()} (started before the pairs)", flush=True)
        else:
            print("astft: each command in its own process (no warm process)", flush=True)
        walls: dict[str, list[float]] = {side: [] for side, _ in sides}
        for pair in range(1, args.pairs + 1):
            for side, run in sides:
                work = root / f"{side}-{pair}"
                result = run(data, checkpoint, work, args)
                walls[side].append(result["wall"])
                show(side, pair, result)
                shutil.rmtree(work, ignore_errors=True)
        (first, first_walls), (second, second_walls) = walls.items()
        a, b = statistics.median(first_walls), statistics.median(second_walls)
        print(f"median wall: {first} {a:.1f} s, {second} {b:.1f} s; {first}/{second} = {a / b:.2f}", flush=True)
    finally:
        if not args.ephemeral and not args.cold_start and os.environ["ASTFT_HOME"].startswith(str(root)):
            from flows.server import stop_local_server
            from flows.warm import stop_all

            stop_local_server(force=True)
            stop_all()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
