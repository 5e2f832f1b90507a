import builtins
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

import lib.data.features as features_module
from lib.core.errors import BadAudioError, FeatureCacheCorrupt, FeatureWorkerDied
from lib.data.audio import load_clip
from lib.data.features import (
    FeatureParams,
    build_feature_cache,
    fbank_frames,
    featurize,
    has_test_split,
    load_split,
    make_feature_extractor,
    shard_bounds,
    split_files,
)
from lib.data.scan import scan_dataset

PARAMS = FeatureParams(num_mel_bins=64, max_frames=64)
FLOAT16 = PARAMS.model_copy(update={"storage_dtype": "float16"})


def folder_bytes(folder) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(Path(folder).iterdir())}


@pytest.fixture()
def manifest(dataset_dirs):
    return scan_dataset(*dataset_dirs)


def test_features_match_the_ast_feature_extractor(manifest, tmp_path):
    ref, hit = build_feature_cache(manifest, PARAMS, tmp_path)
    assert not hit
    train = load_split(ref, "train")
    assert len(train) == len(manifest.train) == ref.num_clips["train"]
    assert tuple(train[0]["input_values"].shape) == (64, 64)
    assert np.asarray(train["label"]).tolist() == [clip.label for clip in manifest.train]

    clip = manifest.train[5]
    expected = make_feature_extractor(PARAMS)(
        [load_clip(clip.path, 16000, 1.0)], sampling_rate=16000, return_tensors="np"
    )["input_values"][0]
    np.testing.assert_allclose(train[5]["input_values"].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_second_build_is_a_cache_hit_without_decoding_audio(manifest, tmp_path, monkeypatch):
    first, _ = build_feature_cache(manifest, PARAMS, tmp_path)

    def no_decoding(*args, **kwargs):
        raise AssertionError("audio was decoded on a cache hit")

    monkeypatch.setattr(features_module, "load_clip", no_decoding)
    second, hit = build_feature_cache(manifest, PARAMS, tmp_path)
    assert hit and second.path == first.path
    assert len(load_split(second, "validation")) == len(manifest.validation)


def test_cache_is_byte_identical_across_builds_and_keyed_by_params(manifest, tmp_path):
    one, _ = build_feature_cache(manifest, PARAMS, tmp_path / "a")
    two, _ = build_feature_cache(manifest, PARAMS, tmp_path / "b")
    assert [path.name for path in split_files(one.path, "train")] == ["train-00000-of-00001.arrow"]
    assert folder_bytes(one.path) == folder_bytes(two.path)
    other, _ = build_feature_cache(manifest, PARAMS.model_copy(update={"normalize": False}), tmp_path / "a")
    assert other.key != one.key
    assert build_feature_cache(manifest, FLOAT16, tmp_path / "a")[0].key not in (one.key, other.key)


def test_shards_depend_only_on_the_clip_count():
    assert shard_bounds(0) == [(0, 0)]
    assert shard_bounds(255) == [(0, 255)]  # below 2 x SHARD_CLIPS: one shard
    assert shard_bounds(256) == [(0, 128), (128, 256)]
    assert shard_bounds(1000) == [(0, 142), (142, 285), (285, 428), (428, 571), (571, 714), (714, 857), (857, 1000)]
    bounds = shard_bounds(105_829)  # Speech Commands v2: capped at MAX_SHARDS, sizes within one of each other
    assert len(bounds) == 256 and bounds[0][0] == 0 and bounds[-1][1] == 105_829
    assert all(end == start for (_, end), (start, _) in zip(bounds, bounds[1:], strict=False))
    assert {end - start for start, end in bounds} == {413, 414}


def test_one_and_several_workers_write_the_same_cache_byte_for_byte(manifest, tmp_path, monkeypatch):
    monkeypatch.setattr(features_module, "SHARD_CLIPS", 8)  # 48 train clips: 6 shards, for 1 or 3 workers
    one, _ = build_feature_cache(manifest, PARAMS, tmp_path / "one", workers=1)
    three, _ = build_feature_cache(manifest, PARAMS, tmp_path / "three", workers=3)
    assert len(split_files(one.path, "train")) == 6 and len(split_files(one.path, "validation")) == 2
    assert folder_bytes(one.path) == folder_bytes(three.path)  # meta.json included
    assert one.model_dump(exclude={"path"}) == three.model_dump(exclude={"path"})
    for split in ("train", "validation"):
        rows = load_split(three, split).with_format("numpy", columns=["input_values", "label", "path"])[:]
        clips = manifest.split(split)
        assert rows["path"].tolist() == [clip.path for clip in clips]  # every clip, in manifest order
        assert rows["label"].tolist() == [clip.label for clip in clips]
    built, _ = build_feature_cache(manifest, PARAMS, tmp_path / "whole")  # 1 shard a split: the same rows
    whole, sharded = (load_split(ref, "train")[:]["input_values"] for ref in (built, three))
    np.testing.assert_array_equal(whole, sharded)


def test_a_worker_that_dies_is_a_clear_error_and_leaves_no_cache(manifest, tmp_path, monkeypatch):
    monkeypatch.setattr(features_module, "SHARD_CLIPS", 8)
    # Forked workers inherit this: each dies as if killed for memory.
    monkeypatch.setattr(features_module, "featurize", lambda *args, **kwargs: os._exit(9))
    with pytest.raises(FeatureWorkerDied, match="ended abruptly.*lower data.feature_workers"):
        build_feature_cache(manifest, PARAMS, tmp_path, workers=2)
    assert list((tmp_path / "features").iterdir()) == []  # the staging folder is gone


def test_workers_end_with_a_parent_killed_outright(manifest, tmp_path):
    # kill -9 (or the OOM killer) gives the parent no chance to stop its pool: the kernel must end the workers
    import signal
    import subprocess
    import time

    script = f"""
import os, sys, time
import lib.data.features as features
from lib.data.scan import Manifest
manifest = Manifest.model_validate_json(open({str(tmp_path / 'manifest.json')!r}).read())
features.SHARD_CLIPS = 8
def slow(*args, **kwargs):
    os.write(1, f"{{os.getpid()}}\\n".encode())  # one write: the two workers' lines never interleave
    time.sleep(600)
features.featurize = slow
features.build_feature_cache(manifest, features.FeatureParams(num_mel_bins=64, max_frames=64, clip_seconds=0.6),
                             {str(tmp_path)!r}, workers=2)
"""
    (tmp_path / "manifest.json").write_text(manifest.model_dump_json())
    repo = Path(__file__).parents[2]
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    workers: set[int] = set()
    while len(workers) < 2:  # both are computing
        line = parent.stdout.readline()
        assert line, "the build ended before its workers started"
        workers |= {int(line)} if line.strip().isdigit() else set()
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while (alive := {pid for pid in workers if Path(f"/proc/{pid}").exists()
                     and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"}) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in alive:  # a failing run leaves nothing behind either
        os.kill(pid, signal.SIGKILL)
    assert alive == set()


def test_a_split_left_empty_by_skipping_says_so_instead_of_suggesting_the_flag_already_given(
    manifest, tmp_path, monkeypatch
):
    real = features_module.featurize

    def validation_all_bad(paths, params, extractor, bad, notes=None, training=False):
        if "validation" in str(paths[0]):
            bad.update({str(path): "its samples are not finite" for path in paths})
            return np.zeros((0, params.max_frames, params.num_mel_bins), np.float32), []
        return real(paths, params, extractor, bad, notes, training)

    monkeypatch.setattr(features_module, "featurize", validation_all_bad)
    with pytest.raises(BadAudioError) as error:
        build_feature_cache(manifest, PARAMS, tmp_path, skip_bad_files=True, workers=1)
    lines = str(error.value).splitlines()
    assert lines[0] == (
        "every clip of the validation split is a bad file, so data.skip_bad_files left nothing to use there; "
        f"fix these {len(manifest.validation)} file(s) (or give the split other clips):"
    )
    assert len(lines) == 1 + len(manifest.validation) and "--skip-bad-files" not in str(error.value)


def test_a_float16_cache_is_half_the_size_and_loads_as_float32(manifest, tmp_path):
    single, _ = build_feature_cache(manifest, PARAMS, tmp_path)
    half, _ = build_feature_cache(manifest, FLOAT16, tmp_path)
    single_values = load_split(single, "train")[:]["input_values"]
    half_values = load_split(half, "train")[:]["input_values"]
    assert half_values.dtype == torch.float32  # what the model is given, whatever is stored
    torch.testing.assert_close(half_values, single_values.half().float(), rtol=0, atol=0)
    sizes = {ref.key: sum(path.stat().st_size for path in Path(ref.path).glob("*.arrow")) for ref in (single, half)}
    assert 0.49 < sizes[half.key] / sizes[single.key] < 0.52  # 64 x 64 values a row, plus the path and label
    # prediction rounds the same way, so a member is given what it was trained and evaluated on
    clip = manifest.train[3].path
    predicted, kept = featurize([clip], FLOAT16, make_feature_extractor(FLOAT16), {})
    assert kept == [0] and predicted.dtype == np.float32
    np.testing.assert_array_equal(predicted[0], half_values[3].numpy())


def test_features_beyond_float16s_range_are_a_bad_file_naming_the_setting(manifest, tmp_path):
    # A far-off mean over a tiny std scales log-mels (about -20..20) to around -5e5: finite in float32.
    extreme = {"mean": 1000.0, "std": 0.001}
    clip = manifest.train[0].path
    bad: dict[str, str] = {}
    wide = PARAMS.model_copy(update=extreme)
    values, kept = featurize([clip], wide, make_feature_extractor(wide), bad)
    assert kept == [0] and np.isfinite(values).all() and np.abs(values).max() > 65504
    overflowing = FLOAT16.model_copy(update=extreme)
    values, kept = featurize([clip], overflowing, make_feature_extractor(overflowing), bad)
    assert values.shape == (0, 64, 64) and kept == []
    assert list(bad) == [clip]
    assert "beyond float16's range (65504)" in bad[clip] and "features.storage_dtype to float32" in bad[clip]


def test_truncated_cache_is_rebuilt_not_read(manifest, tmp_path):
    ref, _ = build_feature_cache(manifest, PARAMS, tmp_path)
    arrow = split_files(ref.path, "train")[0]
    good = arrow.read_bytes()
    arrow.write_bytes(good[: len(good) // 2])
    rebuilt, hit = build_feature_cache(manifest, PARAMS, tmp_path)
    assert not hit
    assert arrow.read_bytes() == good
    assert not [p for p in (tmp_path / "features").iterdir() if p.name.startswith(".")]  # no staging left


def test_a_same_size_corrupt_cache_file_is_a_clear_error_naming_the_folder_to_delete(manifest, tmp_path):
    ref, _ = build_feature_cache(manifest, PARAMS, tmp_path)
    arrow = split_files(ref.path, "train")[0]
    good = arrow.read_bytes()
    arrow.write_bytes(bytes(160) + good[160:])  # same size: meta.json cannot tell
    with pytest.raises(
        FeatureCacheCorrupt,
        match=rf"feature cache .*{ref.key}/train-00000-of-00001.arrow cannot be read .*delete the folder",
    ):
        load_split(ref, "train")
    arrow.unlink()
    with pytest.raises(FeatureCacheCorrupt, match=r"0 of the 1 train shard files are there; delete the folder"):
        load_split(ref, "train")


@pytest.mark.parametrize(
    ("sample_rate_hz", "clip_seconds", "frames"), [(16000, 1.0, 98), (16000, 10.24, 1022), (22050, 1.3, 128)]
)
def test_fbank_frames_counts_what_the_kaldi_fbank_makes(sample_rate_hz, clip_seconds, frames):
    samples = torch.randn(1, int(round(sample_rate_hz * clip_seconds)))
    made = kaldi.fbank(samples, sample_frequency=sample_rate_hz, window_type="hanning", num_mel_bins=64).shape[0]
    assert fbank_frames(sample_rate_hz, clip_seconds) == made == frames


def test_a_feature_build_prints_nothing(manifest, tmp_path, monkeypatch):
    # Prefect's log_prints turns every print() to stdout into a run log line. datasets used to
    # fingerprint the clip table with dill, which disassembles a function with print(): ~18 lines
    # of bytecode per split in the task log.
    printed = []
    real_print = builtins.print

    def recording_print(*args, **kwargs):
        if kwargs.get("file") in (None, sys.stdout, sys.stderr):
            printed.append(" ".join(map(str, args)))
        real_print(*args, **kwargs)

    monkeypatch.setattr(builtins, "print", recording_print)
    build_feature_cache(manifest, PARAMS, tmp_path)
    assert printed == []


def test_a_parallel_feature_build_writes_nothing_to_stdout_or_stderr(manifest, tmp_path, monkeypatch, capfd):
    # Worker processes write to the same file descriptors as this one, where print patching cannot see.
    monkeypatch.setattr(features_module, "SHARD_CLIPS", 8)
    capfd.readouterr()
    ref, _ = build_feature_cache(manifest, PARAMS, tmp_path, workers=2)
    assert len(split_files(ref.path, "train")) == 6
    assert capfd.readouterr() == ("", "")


def test_a_test_split_is_cached_beside_the_others_and_keys_the_cache(dataset_dirs, test_split, manifest, tmp_path):
    with_test = scan_dataset(*dataset_dirs, test_dir=test_split)
    ref, _ = build_feature_cache(with_test, PARAMS, tmp_path)
    assert has_test_split(ref) and ref.num_clips["test"] == len(with_test.test) == 18
    test = load_split(ref, "test")
    assert np.asarray(test["label"]).tolist() == [clip.label for clip in with_test.test]
    plain, _ = build_feature_cache(manifest, PARAMS, tmp_path)
    assert not has_test_split(plain) and plain.key != ref.key
    assert not split_files(plain.path, "test")
    assert set(json.loads((Path(ref.path) / "meta.json").read_text())["file_bytes"]) == {
        "train-00000-of-00001.arrow", "validation-00000-of-00001.arrow", "test-00000-of-00001.arrow"}


@pytest.mark.train
def test_a_float16_cache_trains_to_the_accuracy_of_float32(features, dataset_dirs, ssl_checkpoint, tmp_path):
    from lib.config import TrainingConfig
    from lib.core.runtime import seed_everything
    from lib.model.checkpoint import load_encoder
    from lib.model.classifier import apply_freezing, build_classifier
    from tests.helpers import CPU, train_classifier

    half, _ = build_feature_cache(scan_dataset(*dataset_dirs), FLOAT16, tmp_path / "cache")
    best = {}
    for ref in (features, half):
        dtype = ref.params.storage_dtype
        seed_everything(0, True)
        encoder, _ = load_encoder(ssl_checkpoint)
        model = build_classifier(encoder, ref.label_names)
        apply_freezing(model)
        config = TrainingConfig(
            epochs=12, batch_size=8, gradient_accumulation_steps=1, learning_rate=2e-3, warmup_steps=0.1, seed=0
        )
        outcome = train_classifier(
            model, load_split(ref, "train"), load_split(ref, "validation"), make_feature_extractor(ref.params),
            config, tmp_path / dtype, tmp_path / f"{dtype}.log", "fp", CPU,
        )
        best[dtype] = outcome.best_metric
    assert best["float32"] >= 0.8  # 3 classes: chance is 0.33
    # float16 rounds each value by at most 1 part in 2,048: the same seed reaches the same accuracy
    # within one of the 18 validation clips
    assert abs(best["float16"] - best["float32"]) <= 1 / 18 + 1e-9, best


def test_a_cache_too_big_for_the_free_space_is_refused_before_it_is_built(dataset_dirs, tmp_path, monkeypatch):
    import shutil

    import lib.core.staging
    from lib.core.errors import DiskSpaceError

    manifest = scan_dataset(*dataset_dirs)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(lib.core.staging.shutil, "disk_usage", lambda path: usage._replace(free=10_000))
    with pytest.raises(DiskSpaceError, match=r"feature cache needs about \d+\.\d MB in .*features but only 10\.0 KB "
                                             r"are free there: free some space, or pass --cache-dir"):
        build_feature_cache(manifest, FeatureParams(num_mel_bins=64, max_frames=64), tmp_path)
    assert not [p for p in (tmp_path / "features").iterdir()]  # nothing started


def test_the_size_estimate_is_close_to_what_the_cache_takes(features):
    from lib.data.features import estimated_bytes

    written = sum(path.stat().st_size for path in Path(features.path).iterdir())
    estimate = estimated_bytes(features.params, sum(features.num_clips.values()))
    assert 0.9 * written <= estimate <= 1.5 * written
