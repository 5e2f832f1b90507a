"""One run per work dir: a held lock refuses a second run, naming the holder; a killed holder frees it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lib.core.errors import ConfigError
from lib.core.locks import check_unlocked, folder_lock

ROOT = Path(__file__).resolve().parents[2]


def hold_in_another_process(folder: Path) -> subprocess.Popen:
    """A process that takes folder's lock, says so, and sleeps until killed."""
    script = (
        "import sys, time\n"
        "from lib.core.locks import folder_lock\n"
        f"with folder_lock({str(folder)!r}, 'the fine-tune run \\'first\\''):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_lock_on_a_held_folder_is_refused_naming_the_holder(tmp_path):
    holder = hold_in_another_process(tmp_path / "work")
    try:
        with pytest.raises(ConfigError, match=rf"in use by the fine-tune run 'first' \(pid {holder.pid} on "):
            check_unlocked(tmp_path / "work")
        with pytest.raises(ConfigError, match=r"would delete each other's checkpoints"), folder_lock(
            tmp_path / "work", "the fine-tune run 'second'"
        ):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_a_holder_killed_outright_leaves_the_folder_free(tmp_path):
    holder = hold_in_another_process(tmp_path / "work")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    check_unlocked(tmp_path / "work")
    with folder_lock(tmp_path / "work", "the fine-tune run 'second'"):
        assert "the fine-tune run 'second'" in (tmp_path / "work" / ".astft.lock").read_text()


def held_elsewhere(folder: Path) -> bool:
    """Whether another process finds folder's lock held."""
    script = f"from lib.core.locks import check_unlocked\ncheck_unlocked({str(folder)!r})"
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True).returncode != 0


def test_the_same_process_takes_its_own_lock_again_and_keeps_it_until_the_outer_block_ends(tmp_path):
    with folder_lock(tmp_path, "the CLI"):
        with folder_lock(tmp_path, "its flow"):  # re-entered, not refused
            check_unlocked(tmp_path)  # its own lock is free to it
        assert held_elsewhere(tmp_path)  # the inner block's end did not release it
    assert not held_elsewhere(tmp_path)


def test_a_waiting_lock_takes_the_folder_once_its_holder_ends(tmp_path):
    holder = hold_in_another_process(tmp_path / "work")
    try:
        waiter = subprocess.Popen(
            [sys.executable, "-c",
             f"from lib.core.locks import folder_lock\nwith folder_lock({str(tmp_path / 'work')!r}, 'w', wait=True):\n"
             "    print('got it', flush=True)\n"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        with pytest.raises(subprocess.TimeoutExpired):
            waiter.wait(timeout=2)  # queued behind the holder
    finally:
        holder.kill()
        holder.wait()
    assert waiter.stdout.readline().strip() == "got it"
    assert waiter.wait(timeout=30) == 0
    assert f"is in use by the fine-tune run 'first' (pid {holder.pid}" in waiter.stderr.read()  # said it waited


def test_a_fine_tune_whose_work_dir_another_run_holds_is_refused_at_plan_time(tmp_path, dataset_dirs, ssl_checkpoint):
    from lib.config import FinetuneConfig
    from lib.recipes.finetune import plan_run

    train_dir, validation_dir = dataset_dirs
    config = FinetuneConfig.model_validate({
        "name": "dup", "output_dir": str(tmp_path / "out"),
        "data": {"train_dir": str(train_dir), "validation_dir": str(validation_dir)},
        "model": {"ssl_checkpoint": str(ssl_checkpoint)},
        "features": {"max_frames": None, "clip_seconds": 0.6},
    })
    plan = plan_run(config)
    holder = hold_in_another_process(plan.work_dir)
    try:
        with pytest.raises(ConfigError, match=rf"runs/dup is in use by the fine-tune run 'first' \(pid {holder.pid}"):
            plan_run(config)
    finally:
        holder.kill()
        holder.wait()
    assert plan_run(config).work_dir == plan.work_dir


def test_a_run_that_waits_for_its_work_dir_passes_plan_and_queues_behind_the_holder(
    tmp_path, dataset_dirs, ssl_checkpoint
):
    from lib.config import FinetuneConfig
    from lib.recipes.finetune import plan_run

    train_dir, validation_dir = dataset_dirs
    config = FinetuneConfig.model_validate({
        "name": "queued", "output_dir": str(tmp_path / "out"), "wait_for_work_dir": True,
        "data": {"train_dir": str(train_dir), "validation_dir": str(validation_dir)},
        "model": {"ssl_checkpoint": str(ssl_checkpoint)},
        "features": {"max_frames": None, "clip_seconds": 0.6},
    })
    holder = hold_in_another_process(tmp_path / "out" / "runs" / "queued")
    try:
        plan = plan_run(config)  # refused without wait_for_work_dir (--wait)
        assert plan.config.wait_for_work_dir
        with pytest.raises(ConfigError, match=r"--wait queues this run behind it"):
            plan_run(config.model_copy(update={"wait_for_work_dir": False}))
    finally:
        holder.kill()
        holder.wait()
    with plan.run_lock():  # the holder has ended: the queued run takes the work dir
        pass


def test_waiting_is_not_part_of_the_run_fingerprint():
    from lib.config import FinetuneConfig

    base = {"name": "m", "data": {"train_dir": "t", "validation_dir": "v"}, "model": {"ssl_checkpoint": "c"}}
    assert (
        FinetuneConfig.model_validate(base).fingerprint()
        == FinetuneConfig.model_validate({**base, "wait_for_work_dir": True}).fingerprint()
    )


def test_the_lock_file_names_the_holders_own_start_time(tmp_path):
    import json

    import psutil

    holder = hold_in_another_process(tmp_path / "work")
    try:
        recorded = json.loads((tmp_path / "work" / ".astft.lock").read_text())
        assert recorded["pid"] == holder.pid
        assert recorded["started"] == pytest.approx(psutil.Process(holder.pid).create_time(), abs=1)
    finally:
        holder.kill()
        holder.wait()


def test_a_run_publishing_the_same_name_from_another_work_dir_is_refused_at_plan_time(
    tmp_path, dataset_dirs, ssl_checkpoint
):
    from lib.config import FinetuneConfig
    from lib.core.layout import lock_file_for
    from lib.recipes.finetune import plan_run

    train_dir, validation_dir = dataset_dirs
    base = {
        "name": "same", "output_dir": str(tmp_path / "out"),
        "data": {"train_dir": str(train_dir), "validation_dir": str(validation_dir)},
        "model": {"ssl_checkpoint": str(ssl_checkpoint)},
        "features": {"max_frames": None, "clip_seconds": 0.6},
    }
    first = plan_run(FinetuneConfig.model_validate({**base, "work_dir": str(tmp_path / "w1")}))
    script = (
        "import sys, time\nfrom lib.core.locks import file_lock\n"
        f"with file_lock({str(lock_file_for(first.publish_slot))!r}, 'the fine-tune run \\'same\\''):\n"
        "    print('held', flush=True)\n    time.sleep(600)\n"
    )
    (tmp_path / "out" / "best").mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=r"best/same is being made by the fine-tune run 'same' \(pid \d+"):
            plan_run(FinetuneConfig.model_validate({**base, "work_dir": str(tmp_path / "w2")}))
    finally:
        holder.kill()
        holder.wait()


def test_a_cache_being_built_elsewhere_is_waited_for_then_found_whole(tmp_path):
    from lib.core.staging import build_lock

    final = tmp_path / "features" / "key"
    script = (
        "import sys\nfrom pathlib import Path\nfrom lib.core.staging import build_lock\n"
        f"final = Path({str(final)!r})\n"
        "with build_lock(final, 'feature cache'):\n"
        "    print('building', flush=True)\n    sys.stdin.readline()\n"
        "    final.mkdir()\n    (final / 'meta.json').write_text('{}')\n"
    )
    builder = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert builder.stdout.readline().strip() == "building"
    def finish() -> None:
        builder.stdin.write("done\n")
        builder.stdin.flush()

    threading.Timer(0.5, finish).start()  # the builder finishes while this process waits for its lock below
    with build_lock(final, "feature cache"):
        assert (final / "meta.json").is_file()  # built by the other run before this one got the lock
    assert builder.wait(timeout=30) == 0
    assert sorted(p.name for p in final.parent.iterdir()) == ["key"]  # the lock file went with the build


def test_a_lock_taken_a_moment_ago_is_named_once_its_holder_has_written_it(tmp_path):
    import json
    import threading

    from lib.core.locks import holder

    lock = tmp_path / ".astft.lock"
    lock.write_text("")  # flock taken, the holder's record not yet written
    record = {"what": "the fine-tune run 'x'", "pid": 7, "host": "h", "started": 0}
    threading.Timer(0.2, lambda: lock.write_text(json.dumps(record))).start()
    assert holder(lock).startswith("the fine-tune run 'x' (pid 7 on h")
    lock.write_text("not json")
    assert holder(lock) == "an unknown process"
