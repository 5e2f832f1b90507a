"""What a failing CLI run leaves on the terminal: one `astft:` line, no traceback; the traceback in the log file
that line names. And a full or read-only disk mid-run: one line naming the folders and their free space."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def dataset_with_a_broken_clip(dataset_dirs, tmp_path) -> tuple[Path, Path]:
    train, validation = (shutil.copytree(folder, tmp_path / folder.name) for folder in dataset_dirs)
    first_class = sorted(p for p in train.iterdir() if p.is_dir())[0]
    (first_class / "broken.wav").write_bytes(b"RIFF not really a wav")
    return train, validation


def finetune_args(train, validation, ssl_checkpoint, tmp_path) -> list[str]:
    return ["finetune", "--train-dir", str(train), "--validation-dir", str(validation), "--ssl-checkpoint",
            str(ssl_checkpoint), "--name", "m", "--output-dir", str(tmp_path / "out"), "--cache-dir",
            str(tmp_path / "cache"), "--epochs", "1", "--device", "cpu"]


def test_an_error_inside_the_flow_is_one_line_and_its_traceback_goes_to_the_named_log_file(
    dataset_dirs, ssl_checkpoint, tmp_path, prefect_harness
):
    train, validation = dataset_with_a_broken_clip(dataset_dirs, tmp_path)
    done = run_astft(finetune_args(train, validation, ssl_checkpoint, tmp_path))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr + done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert "broken.wav" in done.stderr
    log_file = Path(re.search(r"\(details: (\S+\.log)\)$", last)[1])
    assert log_file.parent == tmp_path / "out" / "logs"
    assert "Traceback" in log_file.read_text() and "broken.wav" in log_file.read_text()


def run_astft(args: list[str], before: str = "") -> subprocess.CompletedProcess:
    """astft in a process of its own (its terminal as a user sees it), on the harness's server; `before` runs first."""
    from prefect.settings import PREFECT_API_URL

    script = f"import sys\n{before}\nfrom flows.cli import main\nsys.exit(main({args!r}))\n"
    return subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": PREFECT_API_URL.value()},
    )


@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_disk_mid_run_is_one_line_naming_the_folders(
    dataset_dirs, ssl_checkpoint, tmp_path, prefect_harness, number
):
    written = tmp_path / "cache" / "features" / "k" / "train-0.arrow"
    disk_fails = (
        "import os, tasks.data\n"
        "def disk_fails(*args, **kwargs):\n"
        f"    raise OSError({number}, os.strerror({number}), {str(written)!r})\n"
        "tasks.data.build_feature_cache = disk_fails\n"
    )
    done = run_astft(finetune_args(*dataset_dirs, ssl_checkpoint, tmp_path), before=disk_fails)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    error = done.stderr.strip().splitlines()[-1]
    words = "no space left on the device" if number == errno.ENOSPC else "read-only file system"
    assert error.startswith(f"astft: {words} writing {written} (")
    assert f"--cache-dir {tmp_path / 'cache'}: " in error and " GB free" in error
    assert ("free space there" if number == errno.ENOSPC else "make the folder writable") in error
