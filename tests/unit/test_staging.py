import json
import os
import subprocess
import sys

import pytest

from lib.core.staging import (
    file_sizes_match,
    owner_tag,
    record_file_sizes,
    staged_folder,
)


def ended_process_tag() -> str:
    """The owner tag of a process that has since exited (its pid is free, or taken by a later process)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        return owner_tag(child.pid)
    finally:
        child.kill()
        child.wait()


def test_file_sizes_catch_a_truncated_or_missing_file_and_a_foreign_key(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"x" * 100)
    (tmp_path / "sub" / "config.json").write_text("{}")
    record_file_sizes(tmp_path, "k1", {"note": "extra fields are kept"})
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["file_bytes"] == {"weights.bin": 100, "sub/config.json": 2} and meta["note"] == "extra fields are kept"
    assert file_sizes_match(tmp_path, "k1")
    assert not file_sizes_match(tmp_path, "k2")  # another key's content
    (tmp_path / "weights.bin").write_bytes(b"x" * 99)  # truncated
    assert not file_sizes_match(tmp_path, "k1")
    (tmp_path / "weights.bin").unlink()
    assert not file_sizes_match(tmp_path, "k1")
    (tmp_path / "meta.json").write_text('{"key": "k1", "file_by')  # killed while writing it
    assert not file_sizes_match(tmp_path, "k1")
    assert not file_sizes_match(tmp_path / "absent", "k1")


def test_staging_folders_of_ended_processes_are_removed_and_live_ones_kept(tmp_path):
    root = tmp_path / "features"
    root.mkdir()
    ours = owner_tag()
    host, pid, start = ours.split("-")
    leftovers = {
        "killed": root / f".k1.tmp-{ended_process_tag()}-0123abcd",
        # a pid the kernel gave to a later process: same number, another start time
        "pid_reused": root / f".k2.tmp-{host}-{pid}-{int(start) - 3600}-0123abcd",
    }
    kept = {
        "live": root / f".k3.tmp-{ours}-0123abcd",  # this process is still building it
        "other_host": root / f".k4.tmp-{'0' * 8}-1-1-0123abcd",  # its pid says nothing here
        "untagged": root / ".k5.tmp-0123abcd",  # an older version's name: owner unknown
        "finished": root / "k6",
    }
    for folder in [*leftovers.values(), *kept.values()]:
        folder.mkdir()
        (folder / "part.arrow").write_text("x")

    with staged_folder(root, "new", lambda folder, key: file_sizes_match(folder, key), "test cache") as staging:
        assert staging.name.startswith(f".new.tmp-{ours}-")  # named after its owner
        (staging / "train.arrow").write_text("features")
        record_file_sizes(staging, "new")

    assert not any(folder.exists() for folder in leftovers.values())
    assert all(folder.is_dir() for folder in kept.values())
    assert file_sizes_match(root / "new", "new")


def test_a_staging_folder_is_removed_when_its_build_fails(tmp_path):
    with pytest.raises(RuntimeError, match="build failed"):
        with staged_folder(tmp_path, "k", file_sizes_match, "test cache"):
            raise RuntimeError("build failed")
    assert list(tmp_path.iterdir()) == []


def test_owner_tag_names_this_host_process_and_its_start():
    host, pid, start = owner_tag().split("-")
    assert len(host) == 8 and int(pid) == os.getpid() and int(start) > 0


def test_a_zombie_owner_counts_as_ended():
    from lib.core.staging import owner_state

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    tag = owner_tag(child.pid)
    assert owner_state(tag) == "running"
    child.kill()
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # dead, but not reaped yet: a zombie
    try:
        assert owner_state(tag) == "gone"
    finally:
        child.wait()
    assert owner_state(tag) == "gone"
    assert owner_state(owner_tag()) == "self"
