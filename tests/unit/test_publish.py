import json
import os
import shutil
import subprocess

import pytest

import lib.publish.folder as publish_module
from lib.data.features import FeatureParams
from lib.evaluate.members import resolve_members
from lib.publish.folder import PublishSpec, publish_folder


def publish(root, name, sources, json_files, kind="member"):
    return publish_folder(PublishSpec(root=root, name=name, kind=kind, sources=sources, json_files=json_files))


def member_files(tmp_path, version: str):
    source = tmp_path / f"model-{version}"
    source.mkdir(exist_ok=True)
    (source / "model.safetensors").write_text(version)
    (source / "training_args.bin").write_text("pickle")
    (source / "config.json").write_text(json.dumps({"id2label": {"0": "a", "1": "b"}}))
    return {"": source}, {
        "metrics.json": {"version": version},
        "member.json": {"name": "m", "feature_params": FeatureParams().model_dump()},
    }


def read_version(best, name="m") -> str:
    """What a reader opening best/<name> sees: the member's version, after checking it is whole."""
    folder = best / name
    version = (folder / "model.safetensors").read_text()
    assert json.loads((folder / "metrics.json").read_text()) == {"version": version}
    assert (folder / "config.json").is_file() and (folder / "member.json").is_file()
    return version


def visible(best) -> list[str]:
    return sorted(p.name for p in best.iterdir() if not p.name.startswith("."))


class Killed(BaseException):
    """The process died: nothing after this point runs, not even cleanup."""


OPERATIONS = {"rename": os, "replace": os, "symlink": os, "unlink": os, "rmtree": shutil}


def run_killed_at(monkeypatch, point: int | None, action, check=None) -> int:
    """Run action with a kill before the point-th file operation (None: never); return how many ran.

    `check` is called before and after every operation, i.e. at every point a reader could look.
    """
    count, killed = 0, False
    originals = {name: getattr(module, name) for name, module in OPERATIONS.items()}

    def wrap(name):
        def operation(*args, **kwargs):
            nonlocal count, killed
            if killed:
                raise Killed(f"{name} after the kill")
            count += 1
            if check:
                check()
            if count == point:
                killed = True
                raise Killed(f"killed before {name} #{point}")
            result = originals[name](*args, **kwargs)
            if check:
                check()
            return result

        return operation

    with monkeypatch.context() as patch:
        for name, module in OPERATIONS.items():
            patch.setattr(module, name, wrap(name))
        if point is None:
            action()
        else:
            with pytest.raises(Killed):
                action()
    return count


def test_publish_replaces_the_previous_member(tmp_path):
    best = tmp_path / "best"
    publish(best, "m", *member_files(tmp_path, "v1"))
    destination = publish(best, "m", *member_files(tmp_path, "v2"))
    assert destination == best / "m"
    assert read_version(best) == "v2"
    assert not (destination / "training_args.bin").exists()
    assert (destination / "config.json").stat().st_mode & 0o044  # readable by others (umask permitting)
    # best/m is a relative link to the one version folder left: no staging, old version or backup
    assert destination.is_symlink() and "/" not in os.readlink(destination)
    assert sorted(p.name for p in best.iterdir()) == sorted(["m", os.readlink(destination)])


def test_a_kill_at_any_point_of_a_publish_leaves_the_old_or_the_new_member(tmp_path, monkeypatch):
    def fresh_best(point):
        best = tmp_path / f"best-{point}"
        publish(best, "m", *member_files(tmp_path, "v1"))
        return best

    best = fresh_best("clean")
    points = run_killed_at(monkeypatch, None, lambda: publish(best, "m", *member_files(tmp_path, "v2")))
    assert read_version(best) == "v2"
    assert points >= 2

    after_kill = set()
    for point in range(1, points + 1):
        best = fresh_best(point)
        seen = set()
        run_killed_at(
            monkeypatch, point, lambda best=best: publish(best, "m", *member_files(tmp_path, "v2")),
            lambda best=best, seen=seen: seen.add(read_version(best)),
        )
        assert seen <= {"v1", "v2"} and seen
        after_kill.add(read_version(best))  # what readers see after the kill, until the next publish
        # the next publish cleans up whatever the killed one left behind
        publish(best, "m", *member_files(tmp_path, "v3"))
        assert read_version(best) == "v3"
        assert sorted(p.name for p in best.iterdir()) == sorted(["m", os.readlink(best / "m")])
    assert after_kill == {"v1", "v2"}  # the kills fell before and after the switch


def test_a_crash_while_copying_leaves_the_previous_member_untouched(tmp_path, monkeypatch):
    best = tmp_path / "best"
    publish(best, "m", *member_files(tmp_path, "v1"))
    before = sorted(p.name for p in best.iterdir())

    def failing_copy(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(publish_module.shutil, "copytree", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        publish(best, "m", *member_files(tmp_path, "v2"))
    assert read_version(best) == "v1"
    assert sorted(p.name for p in best.iterdir()) == before


def test_versions_links_and_backups_are_never_listed_as_members(tmp_path, monkeypatch):
    best = tmp_path / "best"
    for version in ("v1", "v2"):
        publish(best, "m", *member_files(tmp_path, version))
        publish(best, "other", *member_files(tmp_path, version))
    # a publish of m killed after building its new version, before switching the link
    run_killed_at(monkeypatch, 1, lambda: publish(best, "m", *member_files(tmp_path, "v3")))
    assert len([p for p in best.iterdir() if p.name.startswith(".m.")]) > 1
    assert visible(best) == ["m", "other"]
    assert [member.path for member in resolve_members(best)] == [str(best / "m"), str(best / "other")]


def test_a_copied_best_folder_still_works(tmp_path):
    from transformers import ASTModel

    from tests.helpers import small_config

    best = tmp_path / "best"
    sources, files = member_files(tmp_path, "v1")
    ASTModel(small_config(id2label={0: "a", 1: "b"}, label2id={"a": 0, "b": 1})).save_pretrained(sources[""])
    publish(best, "m", sources, files)
    publish(best, "m", sources, files)
    # readers that open the path follow the link
    assert ASTModel.from_pretrained(best / "m").config.hidden_size == small_config().hidden_size
    # `cp -r` copies the link as a link; its target is relative, so it points into the copy
    subprocess.run(["cp", "-r", str(best), str(tmp_path / "copy")], check=True)
    shutil.rmtree(best)
    assert (tmp_path / "copy" / "m").is_symlink()
    assert ASTModel.from_pretrained(tmp_path / "copy" / "m").config.hidden_size == small_config().hidden_size
    assert [member.name for member in resolve_members(tmp_path / "copy")] == ["m"]


def test_a_failure_after_the_switch_keeps_the_new_member(tmp_path, monkeypatch):
    best = tmp_path / "best"
    publish(best, "m", *member_files(tmp_path, "v1"))

    def failing_sync(path):
        raise OSError("I/O error")

    monkeypatch.setattr(publish_module, "_fsync_folder", failing_sync)
    with pytest.raises(OSError, match="I/O error"):
        publish(best, "m", *member_files(tmp_path, "v2"))
    assert read_version(best) == "v2"


def test_a_version_another_running_publish_is_building_is_kept_until_that_process_ends(tmp_path):
    import sys

    from lib.core.staging import owner_tag

    best = tmp_path / "best"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        building = best / f".m.v-{owner_tag(child.pid)}-0123abcd"
        building.mkdir(parents=True)
        (building / "model.safetensors").write_text("half")
        publish(best, "m", *member_files(tmp_path, "v1"))
        assert building.is_dir()
    finally:
        child.kill()
        child.wait()
    publish(best, "m", *member_files(tmp_path, "v2"))
    assert not building.exists()
    assert read_version(best) == "v2"
    assert sorted(p.name for p in best.iterdir()) == sorted(["m", os.readlink(best / "m")])


def test_publish_never_replaces_a_folder_it_did_not_publish(tmp_path):
    from lib.core.errors import ConfigError

    best = tmp_path / "best"
    (best / "m").mkdir(parents=True)
    (best / "m" / "mydata.txt").write_text("keep me")
    with pytest.raises(ConfigError, match=r"best/m is a plain folder, not a member astft published"):
        publish(best, "m", *member_files(tmp_path, "v1"))
    assert (best / "m" / "mydata.txt").read_text() == "keep me"
    assert sorted(p.name for p in best.iterdir()) == ["m"]
