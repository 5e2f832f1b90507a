"""Two real astft processes started on one name at the same moment: one trains and publishes, the other is
refused in one line before it touches anything."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def start_finetune(dataset_dirs, ssl_checkpoint, tmp_path, seed: int) -> subprocess.Popen:
    from prefect.settings import PREFECT_API_URL

    train, validation = dataset_dirs
    command = [
        sys.executable, "-m", "flows", "finetune", "--train-dir", str(train), "--validation-dir", str(validation),
        "--ssl-checkpoint", str(ssl_checkpoint), "--name", "dup", "--output-dir", str(tmp_path / "out"),
        "--cache-dir", str(tmp_path / "cache"), "--epochs", "4", "--device", "cpu", "--seed", str(seed),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": PREFECT_API_URL.value()}  # the harness's server
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_runs_started_at_once_on_one_name_one_publishes_the_other_is_refused_in_one_line(
    dataset_dirs, ssl_checkpoint, tmp_path, prefect_harness
):
    runs = [start_finetune(dataset_dirs, ssl_checkpoint, tmp_path, seed) for seed in (1, 2)]
    results = [(run.wait(timeout=600), *run.communicate()) for run in runs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    (_, _, refused_err), = [result for result in results if result[0] == 2]
    assert "Traceback" not in refused_err
    last = refused_err.strip().splitlines()[-1]
    assert last.startswith("astft: ")
    assert "runs/dup is in use by the fine-tune run (astft finetune / ensemble) 'dup' (pid " in last
    member = tmp_path / "out" / "best" / "dup"
    log = (member / "train_logdup.txt").read_text()
    assert re.findall(r"^epoch (\d+)/4 ", log, re.MULTILINE) == ["1", "2", "3", "4"]  # one run's log, not two
    assert log.count("# run started") == 1
    assert json.loads((member / "metrics.json").read_text())["accuracy"] > 0
    assert not list((tmp_path / "out" / "best").glob(".*.lock"))  # the publish slot's lock went with its run
