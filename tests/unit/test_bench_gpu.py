import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.bench_gpu import parse_figure, run_stage, summary, warmup_verdict

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "bench_gpu.py"


def start(tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-u", str(SCRIPT), "--device", "cpu", *args], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,  # its own group: killed with its stages
        env={**os.environ, "TMPDIR": str(tmp_path)},  # what a SIGKILL leaves behind stays in the test's folder
    )


@pytest.mark.train
def test_a_benchmark_killed_mid_stage_has_already_printed_every_figure_it_finished(tmp_path):
    bench = start(tmp_path, "--stages", "warmup-model", "step")
    printed = []
    for line in bench.stdout:
        printed.append(line)
        if '"candidate": "first_iteration"' in line:  # mid-way through the first stage: kill everything
            os.killpg(bench.pid, signal.SIGKILL)
            break
    bench.wait(timeout=30)
    printed += bench.stdout.readlines()

    figures = [json.loads(line) for line in printed if line.startswith("{")]
    assert [figure["stage"] for figure in figures[:2]] == ["machine", "data"]
    candidates = [figure["candidate"] for figure in figures if figure["stage"] == "warmup-model"]
    first = candidates.index("first_forward")
    assert candidates[first:first + 4] == ["first_forward", "first_backward", "first_optimizer_step", "first_iteration"]
    assert all(figure["seconds"] >= 0 for figure in figures if figure["stage"] == "warmup-model")
    assert all(line.startswith(("{", "# ")) for line in printed)  # readable: no bars, warnings or chatter
    table = summary(figures)
    assert "model: first iteration" in table and "model step" not in table


@pytest.mark.train
def test_a_stage_that_does_not_fit_the_budget_is_skipped_with_a_line_saying_so(tmp_path):
    bench = start(tmp_path, "--stages", "step", "epoch", "--budget", "1")
    out, _ = bench.communicate(timeout=120)

    figures = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(figure["stage"], figure.get("status"), figure.get("reason")) for figure in figures[2:]] == [
        ("step", "skipped", "budget"), ("epoch", "skipped", "budget")]
    assert bench.returncode == 0
    assert "step                                        skipped (budget)" in out


def test_the_warmup_verdict_is_what_the_trainer_adds_to_the_models_own_first_calls():
    lines = [
        {"stage": "warmup-model", "candidate": "first_iteration", "seconds": 3.0},
        {"stage": "warmup-model", "candidate": "first_eval_forward", "seconds": 1.5},
        {"stage": "warmup-model", "candidate": "second_eval_forward", "seconds": 0.5},
        {"stage": "warmup-trainer", "first_step_seconds": 4.5, "first_evaluation_seconds": 2.5,
         "later_evaluation_seconds": 0.25},
    ]
    verdict = warmup_verdict(lines, "cuda")
    assert verdict["first_step_stall_seconds"] == pytest.approx(1.5)
    assert verdict["first_evaluation_stall_seconds"] == pytest.approx(1.25)  # 2.5 - 0.25 - (1.5 - 0.5)
    assert verdict["met"] is True
    assert warmup_verdict(lines, "cpu")["met"] is False  # 1 s on a CPU
    assert warmup_verdict(lines[:1], "cuda")["status"] == "incomplete"


def test_a_silent_stage_is_stopped_when_the_budget_runs_out():
    start_time = time.monotonic()
    figures = run_stage("warmup-model", {}, 0.05)  # stopped while Python still starts: it has printed nothing

    assert figures[-1]["status"] == "stopped"
    assert time.monotonic() - start_time < 10


def test_only_a_json_object_with_a_stage_is_a_figure():
    assert parse_figure('{"stage": "step", "batch_size": 8}\n') == {"stage": "step", "batch_size": 8}
    assert parse_figure("{'loss': 0.5}\n") is None
    assert parse_figure('{"loss": 0.5}\n') is None
    assert parse_figure('{"stage": "step", "batch_size": 8}{"x": 1}\n') is None
    assert parse_figure("# step: batch 8\n") is None


def test_a_figure_line_missing_its_fields_is_one_unreadable_row_and_the_rest_of_the_table_stays():
    table = summary([
        {"stage": "epoch"},
        {"stage": "step", "batch_size": 8, "samples_per_second": "abc"},
        {"stage": "step", "batch_size": 32, "samples_per_second": 800.0, "mfu": None},
    ])

    assert table.splitlines()[1:] == [
        f"{'epoch':<44}unreadable figure line",
        f"{'step':<44}unreadable figure line",
        f"{'model step, batch 32':<44}800.0 samples/s",
    ]
