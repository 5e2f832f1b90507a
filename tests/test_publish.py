import json
import os

import pytest

import lib.publish as publish_module
from lib.publish import backup_path, publish_member


def member_files(tmp_path, version: str):
    source = tmp_path / f"model-{version}"
    source.mkdir()
    (source / "model.safetensors").write_text(version)
    (source / "training_args.bin").write_text("pickle")
    (source / "config.json").write_text("{}")
    return {"": source}, {"metrics.json": {"version": version}}


def test_publish_replaces_the_previous_member(tmp_path):
    best = tmp_path / "best"
    publish_member(best, "m", *member_files(tmp_path, "v1"))
    destination = publish_member(best, "m", *member_files(tmp_path, "v2"))
    assert destination == best / "m"
    assert (destination / "model.safetensors").read_text() == "v2"
    assert json.loads((destination / "metrics.json").read_text()) == {"version": "v2"}
    assert not (destination / "training_args.bin").exists()
    assert sorted(p.name for p in best.iterdir()) == ["m"]  # no staging or backup left behind
    assert (destination / "config.json").stat().st_mode & 0o044  # readable by others (umask permitting)


def test_a_crash_mid_publish_never_exposes_a_partial_member(tmp_path, monkeypatch):
    best = tmp_path / "best"
    publish_member(best, "m", *member_files(tmp_path, "v1"))
    real_rename = os.rename
    calls = []

    def crash_on_second_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError("simulated crash")
        real_rename(src, dst)

    monkeypatch.setattr(publish_module.os, "rename", crash_on_second_rename)
    with pytest.raises(OSError, match="simulated crash"):
        publish_member(best, "m", *member_files(tmp_path, "v2"))
    monkeypatch.setattr(publish_module.os, "rename", real_rename)

    # The old member sits complete in its backup; the next publish (or a reader's recovery) restores it.
    assert (backup_path(best / "m") / "model.safetensors").read_text() == "v1"
    publish_module.recover_member(best / "m")
    assert (best / "m" / "model.safetensors").read_text() == "v1"
    publish_member(best, "m", *member_files(tmp_path, "v3"))
    assert (best / "m" / "model.safetensors").read_text() == "v3"
    assert sorted(p.name for p in best.iterdir()) == ["m"]


def test_a_crash_while_copying_leaves_the_previous_member_untouched(tmp_path, monkeypatch):
    best = tmp_path / "best"
    publish_member(best, "m", *member_files(tmp_path, "v1"))

    def failing_copy(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(publish_module.shutil, "copytree", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        publish_member(best, "m", *member_files(tmp_path, "v2"))
    assert (best / "m" / "model.safetensors").read_text() == "v1"
    assert sorted(p.name for p in best.iterdir()) == ["m"]
