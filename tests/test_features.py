import builtins
import sys

import numpy as np
import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

import lib.features as features_module
from lib.audio import load_clip
from lib.features import (
    FeatureParams,
    build_feature_cache,
    fbank_frames,
    has_test_split,
    load_split,
    make_feature_extractor,
)
from lib.scan import scan_dataset

PARAMS = FeatureParams(num_mel_bins=64, max_frames=64)


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
    for split in ("train", "validation"):
        assert (tmp_path / "a" / "features" / one.key / f"{split}.arrow").read_bytes() == (
            tmp_path / "b" / "features" / two.key / f"{split}.arrow"
        ).read_bytes()
    other, _ = build_feature_cache(manifest, PARAMS.model_copy(update={"normalize": False}), tmp_path / "a")
    assert other.key != one.key


def test_truncated_cache_is_rebuilt_not_read(manifest, tmp_path):
    ref, _ = build_feature_cache(manifest, PARAMS, tmp_path)
    arrow = tmp_path / "features" / ref.key / "train.arrow"
    good = arrow.read_bytes()
    arrow.write_bytes(good[: len(good) // 2])
    rebuilt, hit = build_feature_cache(manifest, PARAMS, tmp_path)
    assert not hit
    assert arrow.read_bytes() == good
    assert not [p for p in (tmp_path / "features").iterdir() if p.name.startswith(".")]  # no staging left


def test_a_same_size_corrupt_cache_file_is_a_clear_error_naming_the_folder_to_delete(manifest, tmp_path):
    from lib.features import FeatureCacheCorrupt, load_split

    ref, _ = build_feature_cache(manifest, PARAMS, tmp_path)
    arrow = tmp_path / "features" / ref.key / "train.arrow"
    good = arrow.read_bytes()
    arrow.write_bytes(bytes(160) + good[160:])  # same size: meta.json cannot tell
    with pytest.raises(FeatureCacheCorrupt, match=rf"feature cache .*{ref.key}/train.arrow cannot be read .*delete the folder"):
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


def test_a_test_split_is_cached_beside_the_others_and_keys_the_cache(dataset_dirs, test_split, manifest, tmp_path):
    with_test = scan_dataset(*dataset_dirs, test_dir=test_split)
    ref, _ = build_feature_cache(with_test, PARAMS, tmp_path)
    assert has_test_split(ref) and ref.num_clips["test"] == len(with_test.test) == 18
    test = load_split(ref, "test")
    assert np.asarray(test["label"]).tolist() == [clip.label for clip in with_test.test]
    plain, _ = build_feature_cache(manifest, PARAMS, tmp_path)
    assert not has_test_split(plain) and plain.key != ref.key
    assert not (tmp_path / "features" / plain.key / "test.arrow").exists()
