"""Train on several processes (one per GPU) with torchrun, passing rank 0's epoch records on as they come.

HF Trainer picks up the distributed environment torchrun sets (DistributedSampler, gradients all-reduced);
only rank 0 writes checkpoints, logs, the epochs file and the outcome file.
"""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import BaseModel

from lib.train.epochs import EpochRecord, read_epoch_records

EPOCH_POLL_SECONDS = 2.0  # how often a launch looks for new epoch records
SPEC_FILE = "launch_spec.json"
OUTCOME_FILE = "launch_outcome.json"


def launch_ranks(
    module: str, spec: BaseModel, num_processes: int, work_dir: Path, describe: str,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> str:
    """Run `python -m module SPEC` on num_processes ranks and return the outcome rank 0 wrote (JSON text).

    spec is written to the work dir with its outcome_file set; the module's main reads it on every rank.
    """
    work_dir = Path(work_dir)
    spec_file, outcome_file = work_dir / SPEC_FILE, work_dir / OUTCOME_FILE
    outcome_file.unlink(missing_ok=True)
    spec_file.write_text(spec.model_copy(update={"outcome_file": str(outcome_file)}).model_dump_json())
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={num_processes}",
        "-m", module, str(spec_file),
    ]
    seen = len(read_epoch_records(work_dir))  # a resumed run's earlier epochs were reported by their own run
    with subprocess.Popen(command, cwd=Path(__file__).resolve().parents[2]) as ranks:
        try:
            returncode = None
            while returncode is None:
                try:
                    returncode = ranks.wait(timeout=EPOCH_POLL_SECONDS)
                except subprocess.TimeoutExpired:
                    pass
                for record in read_epoch_records(work_dir, seen):
                    seen += 1
                    if on_epoch is not None:
                        on_epoch(record)
        except BaseException:  # cancelled or interrupted: do not leave the ranks training (as subprocess.run)
            ranks.kill()
            raise
    if returncode != 0 or not outcome_file.is_file():
        raise RuntimeError(
            f"torchrun training of {describe} failed (exit code {returncode}); its ranks' output is above. "
            f"Command: {' '.join(command)}"
        )
    return outcome_file.read_text()


def release_memory() -> None:
    """Drop what a failed run left behind (its traceback holds model and optimizer) before the next one."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
