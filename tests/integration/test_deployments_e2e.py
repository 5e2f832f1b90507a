"""End to end: a real Prefect server on 127.0.0.1, a process pool, deployments from prefect.yaml,
two workers, and the ensemble in scale-out mode. Everything started here is stopped at the end."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(url: str, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"prefect server not healthy at {url} after {timeout_s}s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture()
def prefect_stack(tmp_path):
    """Server + environment; the test adds workers to `processes`, all stopped in teardown."""
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
        "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "prefect-storage"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
    }
    processes: list[subprocess.Popen] = []
    logs = tmp_path / "logs"
    logs.mkdir()
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=(logs / "server.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    processes.append(server)
    try:
        wait_for_health(f"http://127.0.0.1:{port}/api/health", server)
        yield env, processes, logs
    finally:
        for process in reversed(processes):
            stop(process)


def run(command: list[str], env: dict, timeout_s: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_scale_out_ensemble_runs_members_on_two_workers(prefect_stack, tmp_path, dataset_dirs, ssl_checkpoint):
    env, processes, logs = prefect_stack
    for pool in ("astft-process", "astft-orchestration"):
        run([PREFECT, "work-pool", "create", pool, "--type", "process"], env)
    deployed = run(
        [PREFECT, "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all"], env
    )
    for name in ("astft-finetune/member", "astft-ensemble/ensemble-scale-out", "astft-predict/predict",
                 "astft-pretrain/pretrain"):
        assert name in deployed.stdout, deployed.stdout[-2000:]
    for worker in ("worker-a", "worker-b"):
        processes.append(subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", "astft-process", "--limit", "1", "--name", worker],
            env=env, cwd=ROOT, stdout=(logs / f"{worker}.log").open("w"), stderr=subprocess.STDOUT,
            start_new_session=True,
        ))

    train_dir, validation_dir = dataset_dirs
    preset = tmp_path / "ensemble.yaml"
    preset.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "shared" / "ensemble"),
        "data": {"train_dir": str(train_dir), "validation_dir": str(validation_dir),
                 "cache_dir": str(tmp_path / "shared" / "cache")},
        "model": {"ssl_checkpoint": str(ssl_checkpoint)},
        "training": {"epochs": 3, "batch_size": 8, "gradient_accumulation_steps": 1, "learning_rate": 2e-3,
                     "device": "cpu"},
        "members": [{"name": "head", "head_only": True}, {"name": "last1", "train_last_n_layers": 1},
                    {"name": "full"}],
        "dispatch": "deployments",
        "selection": "all",  # every member votes, so each worker's member is in the listing below
    }))
    result = subprocess.run(
        [sys.executable, "-m", "flows", "ensemble", "--config", str(preset)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    worker_logs = "".join((logs / f"worker-{w}.log").read_text()[-2000:] for w in "ab")
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-4000:]}\n{worker_logs}"

    best = tmp_path / "shared" / "ensemble" / "best"
    assert sorted(p.name for p in best.iterdir() if not p.name.startswith(".")) == [
        "README.md", "ensemble.json", "full", "head", "last1", "leaderboard.png", "reliability.png"
    ]
    # the rest is each member's live version folder, which best/<name> links to: no staging or old version
    assert sorted(p.name for p in best.iterdir() if p.name.startswith(".")) == sorted(
        os.readlink(best / name) for name in ("full", "head", "last1")
    )
    workers = {json.loads((best / name / "member.json").read_text())["trained_by"]["worker"]
               for name in ("head", "last1", "full")}
    assert workers <= {"worker-a", "worker-b"} and None not in workers
    assert len(workers) == 2, f"all members ran on {workers}"
    board = json.loads((best / "ensemble.json").read_text())
    assert [m["name"] for m in board["members"]] == ["head", "last1", "full"]
    assert "ensemble (all)" in result.stdout and "its best member" in result.stdout
