"""Plan-time guards: empty locations, folders that cannot be written, a held-out share too small to score."""

from __future__ import annotations

import logging
import os
import typing
from functools import reduce
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from pydantic import BaseModel, ValidationError

from lib.config import (
    LOCATION,
    DataConfig,
    EnsembleConfig,
    FeatureConfig,
    FinetuneConfig,
    ModelConfig,
    PredictConfig,
    PretrainConfig,
    load_config,
    tagged,
)
from lib.core.errors import ConfigError
from lib.data.unlabeled import held_out, scan_unlabeled
from lib.recipes import planning
from lib.recipes.finetune import plan_run
from lib.recipes.pretrain import plan_pretrain

# --- 1. empty locations --------------------------------------------------------------------------------------

CONFIGS = [FinetuneConfig, PretrainConfig, EnsembleConfig, PredictConfig]


def _field(model: type[BaseModel], path: tuple[str, ...]):
    *sections, name = path
    section = reduce(lambda cls, key: cls.model_fields[key].annotation, sections, model)
    return section.model_fields[name]


def _nested(path: tuple[str, ...], value) -> dict:
    return reduce(lambda inner, key: {key: inner}, reversed(path), value)


def _location_cases():
    for model in CONFIGS:
        for path in tagged(model, LOCATION):
            is_list = typing.get_origin(_field(model, path).annotation) is list
            for empty in ("", "   "):
                yield pytest.param(model, path, [Path("a"), empty] if is_list else empty,
                                   id=f"{model.__name__}.{'.'.join(path)}={empty!r}")


@pytest.mark.parametrize(("model", "path", "value"), list(_location_cases()))
def test_every_location_field_refuses_an_empty_path(model, path, value):
    # Path("") is Path("."): '--set data.train_dir=' silently meant the current folder
    with pytest.raises(ValidationError) as caught:
        model.model_validate(_nested(path, value))
    refusals = [error for error in caught.value.errors() if error["loc"][: len(path)] == path]
    assert refusals and "must not be empty; pass a folder" in refusals[0]["msg"]
    assert path[-1] in refusals[0]["msg"]


def test_the_cli_loader_names_the_empty_field_and_other_values_still_pass(dataset_dirs, ssl_checkpoint, tmp_path):
    train_dir, validation_dir = dataset_dirs
    raw = {"name": "x", "output_dir": str(tmp_path), "model": {"ssl_checkpoint": str(ssl_checkpoint)},
           "data": {"train_dir": str(train_dir), "validation_dir": str(validation_dir)}}
    assert load_config(FinetuneConfig, overrides=raw).data.test_dir is None  # None is not an empty path
    assert load_config(FinetuneConfig, overrides={**raw, "work_dir": "."}).work_dir == Path(".")
    with pytest.raises(ConfigError, match=r"data\.train_dir: .*train_dir must not be empty; pass a folder"):
        load_config(FinetuneConfig, overrides={**raw, "data": {**raw["data"], "train_dir": ""}})
    config = load_config(FinetuneConfig, overrides=raw)
    with pytest.raises(ValidationError, match=r"cache_dir must not be empty"):
        config.data.cache_dir = " "  # validate_assignment: the form and tests assign too
    with pytest.raises(ConfigError, match=r"data\.data_dirs: .*data_dirs\[1\] must not be empty"):
        load_config(PretrainConfig, overrides={"name": "x", "output_dir": str(tmp_path),
                                               "data": {"data_dirs": [str(train_dir), ""]}})


# --- 2. folders that cannot be written -------------------------------------------------------------------------

def finetune_config(dataset_dirs, ssl_checkpoint, tmp_path) -> FinetuneConfig:
    train_dir, validation_dir = dataset_dirs
    return FinetuneConfig(
        name="guards",
        output_dir=tmp_path / "out",
        data=DataConfig(train_dir=train_dir, validation_dir=validation_dir, cache_dir=tmp_path / "cache"),
        features=FeatureConfig(),
        model=ModelConfig(ssl_checkpoint=ssl_checkpoint),
    )


@pytest.fixture
def deny_writes(monkeypatch):
    """Make os.access refuse writes to the folders added to the returned set (root passes chmod, so a chmod
    would not show it here); everything else asks the real os.access."""
    denied: set[Path] = set()
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and Path(path).resolve() in denied:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)  # the module planning calls
    return denied


@pytest.mark.parametrize(
    ("field", "label"),
    [("output_dir", r"output_dir \(--output-dir\)"), ("cache_dir", r"data\.cache_dir \(--cache-dir\)"),
     ("work_dir", r"work_dir \(--work-dir\)")],
)
def test_finetune_plan_refuses_a_folder_it_cannot_write(dataset_dirs, ssl_checkpoint, tmp_path, deny_writes,
                                                       field, label):
    config = finetune_config(dataset_dirs, ssl_checkpoint, tmp_path)
    plan_run(config)  # writable: planned
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    deny_writes.add(read_only.resolve())
    target = read_only / "sub"  # missing: its nearest existing parent is the one to write to
    if field == "cache_dir":
        config.data.cache_dir = target
    else:
        setattr(config, field, target)
    with pytest.raises(ConfigError, match=rf"{label} .*sub: its nearest existing parent .*read-only is not writable "
                                          r"\(.*\): pass a folder you can write to"):
        plan_run(config)
    target.mkdir()
    deny_writes.add(target.resolve())
    with pytest.raises(ConfigError, match=rf"{label} .*read-only/sub is not writable"):
        plan_run(config)


def test_pretrain_plan_refuses_an_output_dir_it_cannot_write(dataset_dirs, tmp_path, deny_writes):
    train_dir, _ = dataset_dirs
    config = PretrainConfig(
        name="guards", output_dir=tmp_path / "out",
        data={"data_dirs": [train_dir], "cache_dir": tmp_path / "cache"},
        features={"clip_seconds": 0.6, "max_frames": 64},
        model={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
               "num_mel_bins": 64},
    )
    plan_pretrain(config)
    deny_writes.add(tmp_path.resolve())
    with pytest.raises(ConfigError, match=r"output_dir \(--output-dir\) .*out: its nearest existing parent .* is not "
                                          r"writable"):
        plan_pretrain(config)


def test_a_read_only_mount_is_named_as_such(tmp_path, monkeypatch, deny_writes):
    deny_writes.add(tmp_path.resolve())
    real = os.statvfs(tmp_path)

    class ReadOnly:
        f_flag = real.f_flag | os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", lambda path: ReadOnly())
    with pytest.raises(ConfigError, match=r"is not writable \(read-only file system\)"):
        planning.check_writable("output_dir (--output-dir)", tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod; the monkeypatched tests cover it")
def test_a_folder_made_read_only_by_chmod_is_refused(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match=r"is not writable \(no write permission\)"):
            planning.check_writable("output_dir (--output-dir)", folder / "new")
    finally:
        folder.chmod(0o755)


# --- 3. a held-out share too small to score --------------------------------------------------------------------

def write_clips(folder: Path, count: int, rate: int = 16000) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        sf.write(folder / f"c{index:03d}.wav", np.zeros(rate // 4, np.float32), rate, subtype="PCM_16")


def test_a_held_out_share_under_eight_clips_is_warned_about(tmp_path, caplog):
    write_clips(tmp_path / "two", 2)
    with caplog.at_level(logging.WARNING, logger="lib.data.unlabeled"):
        manifest = scan_unlabeled([tmp_path / "two"])
    assert (len(manifest.train), len(manifest.validation)) == (1, 1)
    warnings = [r.getMessage() for r in caplog.records if r.name == "lib.data.unlabeled"]
    assert len(warnings) == 1
    assert "holds out only 1 of 2 clips (50%)" in warnings[0]
    assert "add clips, or pass --validation-dir" in warnings[0]


def test_no_warning_with_a_validation_folder_or_enough_held_out_clips(tmp_path, caplog):
    write_clips(tmp_path / "two", 2)
    write_clips(tmp_path / "held", 2)
    write_clips(tmp_path / "many", 40)
    expected = sum(held_out(f"c{index:03d}.wav", 0.5) for index in range(40))
    assert expected >= 8  # the path hash is fixed: this holds on every machine
    with caplog.at_level(logging.WARNING, logger="lib.data.unlabeled"):
        scan_unlabeled([tmp_path / "two"], tmp_path / "held")  # the user chose the validation clips
        assert len(scan_unlabeled([tmp_path / "many"], holdout_fraction=0.5).validation) == expected
    assert not [r for r in caplog.records if r.name == "lib.data.unlabeled"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_folder_the_file_system_refuses_even_to_root_is_refused():
    from lib.core.errors import ConfigError
    from lib.recipes.planning import check_writable

    with pytest.raises(ConfigError, match=r"output_dir \(--output-dir\) /proc/astft-out: its nearest existing parent "
                                          r"/proc is not writable"):
        check_writable("output_dir (--output-dir)", Path("/proc/astft-out"))
