"""Bad input and faults: every failure is a clear message or a safe recovery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from lib.core.errors import BadAudioError
from lib.data.features import FeatureParams, build_feature_cache, load_split
from lib.data.scan import scan_dataset

PARAMS = FeatureParams(num_mel_bins=64, max_frames=64)
ROOT = Path(__file__).resolve().parents[2]


def wav(path: Path, data, rate=16000, subtype="PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(data, np.float32), rate, subtype=subtype)
    return path


def small_layout(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        for name in ("a", "b"):
            for i in range(3):
                wav(root / split / name / f"{i}.wav", rng.uniform(-0.5, 0.5, 16000))
    return root / "train", root / "validation"


def test_clips_that_fail_only_when_decoded_are_all_listed_then_skippable(tmp_path):
    train, validation = small_layout(tmp_path)
    nan = np.zeros(16000)
    nan[5] = np.nan
    wav(train / "a" / "nan.wav", nan, subtype="FLOAT")
    inf = np.zeros(16000)
    inf[7] = np.inf
    wav(validation / "b" / "inf.wav", inf, subtype="DOUBLE")
    manifest = scan_dataset(train, validation)  # headers are fine

    with pytest.raises(BadAudioError) as error:
        build_feature_cache(manifest, PARAMS, tmp_path / "cache")
    assert set(error.value.bad) == {str(train / "a" / "nan.wav"), str(validation / "b" / "inf.wav")}
    assert "NaN or infinite" in str(error.value) and "--skip-bad-files" in str(error.value)

    ref, _ = build_feature_cache(manifest, PARAMS, tmp_path / "cache", skip_bad_files=True)
    assert ref.num_clips == {"train": 6, "validation": 6}
    assert len(ref.skipped) == 2
    assert len(load_split(ref, "train")) == 6
    # a strict run must not silently reuse the lenient run's cache
    with pytest.raises(BadAudioError):
        build_feature_cache(manifest, PARAMS, tmp_path / "cache")


def test_silence_non_ascii_names_and_symlinks(tmp_path):
    train, validation = small_layout(tmp_path)
    wav(train / "ça va" / "silence 1.wav", np.zeros(16000))
    wav(validation / "ça va" / "ß.wav", np.zeros(8000), rate=8000)
    (train / "b" / "link.wav").symlink_to(train / "b" / "0.wav")
    (tmp_path / "elsewhere").mkdir()
    wav(tmp_path / "elsewhere" / "x.wav", np.zeros(1600))
    (train / "linked_class").symlink_to(tmp_path / "elsewhere")
    wav(validation / "linked_class" / "y.wav", np.zeros(1600))

    manifest = scan_dataset(train, validation)
    assert manifest.label_names == ["a", "b", "linked_class", "ça va"]
    assert sum(1 for c in manifest.train if c.path.endswith("link.wav")) == 1
    ref, _ = build_feature_cache(manifest, PARAMS, tmp_path / "cache")
    values = load_split(ref, "train")[:]["input_values"]
    assert torch.isfinite(values).all()


@pytest.mark.train
def test_thousands_of_classes(tmp_path):
    silence = np.zeros(160, np.float32)
    names = [f"class_{i:04d}" for i in range(1500)]
    for split in ("train", "validation"):
        for name in names:
            (tmp_path / split / name).mkdir(parents=True)
            sf.write(str(tmp_path / split / name / "x.wav"), silence, 16000, subtype="PCM_16")
    manifest = scan_dataset(tmp_path / "train", tmp_path / "validation")
    assert manifest.label_names == names
    assert manifest.label2id["class_1499"] == 1499


def test_gpu_out_of_memory_names_the_knobs(tmp_path, dataset_dirs, ssl_checkpoint, monkeypatch):
    import transformers

    import lib.recipes.finetune
    from lib.config import (
        DataConfig,
        FeatureConfig,
        FinetuneConfig,
        ModelConfig,
        TrainingConfig,
    )
    from lib.core.errors import TrainingOutOfMemory
    from lib.model.checkpoint import export_encoder
    from lib.recipes.finetune import plan_run

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(transformers.Trainer, "train", out_of_memory)
    train_dir, validation_dir = dataset_dirs
    plan = plan_run(FinetuneConfig(
        name="oom", output_dir=tmp_path,
        data=DataConfig(train_dir=train_dir, validation_dir=validation_dir, cache_dir=tmp_path / "c"),
        features=FeatureConfig(max_frames=None, clip_seconds=0.6),  # 58 frames fit the tiny checkpoint's 64
        model=ModelConfig(ssl_checkpoint=ssl_checkpoint), training=TrainingConfig(device="cpu", batch_size=64),
    ))
    features, _ = build_feature_cache(scan_dataset(train_dir, validation_dir), plan.feature_params, tmp_path / "c")
    encoder, _ = export_encoder(ssl_checkpoint, None, tmp_path / "c")
    with pytest.raises(TrainingOutOfMemory, match="per-device batch size 64.*--batch-size.*max_frames"):
        lib.recipes.finetune.train_member(plan, features, encoder)


@pytest.mark.slow
def test_training_killed_mid_run_resumes_and_ends_like_a_clean_run(tmp_path, dataset_dirs, ssl_checkpoint):
    from lib.config import (
        DataConfig,
        FeatureConfig,
        FinetuneConfig,
        ModelConfig,
        TrainingConfig,
    )
    from lib.model.checkpoint import export_encoder
    from lib.recipes.finetune import MemberSpec, plan_run

    train_dir, validation_dir = dataset_dirs
    params = PARAMS.model_copy(update={"clip_seconds": 0.6})
    features, _ = build_feature_cache(scan_dataset(train_dir, validation_dir), params, tmp_path / "cache")
    encoder, _ = export_encoder(ssl_checkpoint, None, tmp_path / "cache")

    def spec_file(output: Path) -> Path:
        plan = plan_run(FinetuneConfig(
            name="resume", output_dir=output,
            data=DataConfig(train_dir=train_dir, validation_dir=validation_dir, cache_dir=tmp_path / "cache"),
            features=FeatureConfig(max_frames=None, clip_seconds=0.6),  # 58 frames fit the tiny checkpoint's 64
            model=ModelConfig(ssl_checkpoint=ssl_checkpoint),
            training=TrainingConfig(epochs=30, batch_size=8, gradient_accumulation_steps=1, learning_rate=1e-3,
                                    device="cpu", save_total_limit=1),
        ))
        assert plan.feature_params == params
        path = output / "spec.json"
        output.mkdir(parents=True)
        path.write_text(MemberSpec(plan=plan, features=features, encoder=encoder,
                                   outcome_file=str(output / "outcome.json")).model_dump_json())
        return path

    def start(spec: Path) -> subprocess.Popen:
        log = (spec.parent / "log.txt").open("a")
        return subprocess.Popen([sys.executable, "-m", "lib.recipes.finetune", str(spec)], cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    killed_spec = spec_file(tmp_path / "killed")
    work_dir = tmp_path / "killed" / "runs" / "resume"
    process = start(killed_spec)
    deadline = time.monotonic() + 240
    # wait for a complete checkpoint (Trainer writes trainer_state.json last), then kill at once
    while (not list(work_dir.glob("checkpoint-*/trainer_state.json")) and time.monotonic() < deadline
           and process.poll() is None):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "outcome.json").exists(), "training finished before it could be killed"
    assert list(work_dir.glob("checkpoint-*"))

    resumed = start(killed_spec)
    assert resumed.wait(timeout=300) == 0, (tmp_path / "killed" / "log.txt").read_text()[-3000:]
    outcome = json.loads((tmp_path / "killed" / "outcome.json").read_text())
    assert outcome["resumed_from"] is not None and outcome["epochs_run"] == 30

    clean_spec = spec_file(tmp_path / "clean")
    assert start(clean_spec).wait(timeout=300) == 0
    clean = json.loads((tmp_path / "clean" / "outcome.json").read_text())
    assert clean["resumed_from"] is None
    assert outcome["best_metric"] == clean["best_metric"] and outcome["best_epoch"] == clean["best_epoch"]
    resumed_weights = load_file(str(work_dir / "best-model" / "model.safetensors"))
    clean_weights = load_file(str(tmp_path / "clean" / "runs" / "resume" / "best-model" / "model.safetensors"))
    for key, tensor in clean_weights.items():
        torch.testing.assert_close(resumed_weights[key], tensor, rtol=1e-5, atol=1e-6)


def test_a_changed_clip_never_gets_stale_features(tmp_path):
    train, validation = small_layout(tmp_path)
    first, _ = build_feature_cache(scan_dataset(train, validation), PARAMS, tmp_path / "cache")
    before = load_split(first, "train")[0]["input_values"]
    time.sleep(0.01)
    wav(train / "a" / "0.wav", np.sin(np.arange(16000) * 0.3) * 0.5)  # same name, new content
    second, hit = build_feature_cache(scan_dataset(train, validation), PARAMS, tmp_path / "cache")
    assert not hit and second.key != first.key
    assert not torch.allclose(load_split(second, "train")[0]["input_values"], before)
    os.remove(train / "a" / "1.wav")
    third, hit = build_feature_cache(scan_dataset(train, validation), PARAMS, tmp_path / "cache")
    assert not hit and third.num_clips["train"] == 5


@pytest.mark.train
def test_two_processes_building_the_same_cache_at_once(tmp_path):
    train, validation = small_layout(tmp_path)
    script = (
        "import sys; from pathlib import Path; from lib.data.scan import scan_dataset; "
        "from lib.data.features import FeatureParams, build_feature_cache; "
        f"ref, hit = build_feature_cache(scan_dataset(Path({str(train)!r}), Path({str(validation)!r})), "
        f"FeatureParams(num_mel_bins=64, max_frames=64), Path({str(tmp_path / 'cache')!r})); print(ref.path)"
    )
    processes = [subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert outputs[0][0].strip().splitlines()[-1] == outputs[1][0].strip().splitlines()[-1]
    ref, hit = build_feature_cache(scan_dataset(train, validation), PARAMS, tmp_path / "cache")
    assert hit and len(load_split(ref, "train")) == 6
    assert [p.name for p in (tmp_path / "cache" / "features").iterdir()] == [ref.key]  # no staging left


def test_finite_but_huge_samples_that_make_non_finite_features_are_bad_files(tmp_path):
    train, validation = small_layout(tmp_path)
    huge = wav(train / "a" / "huge.wav", np.full(16000, 1e30), subtype="FLOAT")  # finite, but its power overflows
    manifest = scan_dataset(train, validation)
    with pytest.raises(BadAudioError) as error:
        build_feature_cache(manifest, PARAMS, tmp_path / "cache")
    assert error.value.bad == {
        str(huge): "its features are not finite (peak sample 1e+30; "
                   "samples this far outside [-1, 1] overflow the fbank)"
    }

    ref, _ = build_feature_cache(manifest, PARAMS, tmp_path / "cache", skip_bad_files=True)
    assert ref.num_clips == {"train": 6, "validation": 6} and list(ref.skipped) == [str(huge)]
    assert torch.isfinite(load_split(ref, "train")[:]["input_values"]).all()


def test_suspicious_clips_are_named_on_build_and_on_a_cache_hit(tmp_path):
    train, validation = small_layout(tmp_path)
    loud = wav(train / "a" / "loud.wav", np.sin(np.arange(16000) * 0.1) * 3, subtype="FLOAT")
    tone = np.sin(np.arange(16000) * 0.2) * 0.5
    cancelling = wav(validation / "b" / "cancelling.wav", np.stack([tone, -tone], axis=1), subtype="FLOAT")
    manifest = scan_dataset(train, validation)

    built, hit = build_feature_cache(manifest, PARAMS, tmp_path / "cache")
    assert not hit and list(built.warnings) == [str(loud), str(cancelling)]
    assert "far outside [-1, 1]" in built.warnings[str(loud)] and "cancel out" in built.warnings[str(cancelling)]
    reused, hit = build_feature_cache(manifest, PARAMS, tmp_path / "cache")
    assert hit and reused.warnings == built.warnings


def test_bad_and_suspicious_clips_in_different_shards_are_reported_alike_by_one_and_several_workers(
    tmp_path, monkeypatch, caplog
):
    import lib.data.features

    monkeypatch.setattr(lib.data.features, "SHARD_CLIPS", 2)  # 8 clips a split: 4 shards each
    train, validation = small_layout(tmp_path)
    nan = np.zeros(16000)
    nan[5] = np.nan
    bad = [  # sorted by path: a/ shards before b/ shards
        wav(train / "a" / "0nan.wav", nan, subtype="FLOAT"),
        wav(train / "b" / "huge.wav", np.full(16000, 1e30), subtype="FLOAT"),
        wav(validation / "b" / "nan.wav", nan, subtype="DOUBLE"),
    ]
    loud = wav(validation / "a" / "loud.wav", np.sin(np.arange(16000) * 0.1) * 3, subtype="FLOAT")
    manifest = scan_dataset(train, validation)
    assert (len(manifest.train), len(manifest.validation)) == (8, 8)

    errors = []
    for workers in (1, 3):
        with pytest.raises(BadAudioError) as error:
            build_feature_cache(manifest, PARAMS, tmp_path / f"strict{workers}", workers=workers)
        errors.append(str(error.value))
    assert errors[0] == errors[1] and all(f"  - {path}: " in errors[0] for path in bad)

    built = {}
    for workers in (1, 3):
        caplog.clear()
        with caplog.at_level("WARNING", logger="lib.data.features"):
            built[workers], _ = build_feature_cache(
                manifest, PARAMS, tmp_path / f"lenient{workers}", skip_bad_files=True, workers=workers
            )
        assert [record.getMessage().split(":")[0] for record in caplog.records] == [
            *(f"skipping {path}" for path in sorted(map(str, bad))), "clip used, but check it"]
    one, three = built[1], built[3]
    assert len(lib.data.features.split_files(one.path, "train")) == 4
    assert one.model_dump(exclude={"path"}) == three.model_dump(exclude={"path"})
    assert one.num_clips == {"train": 6, "validation": 7} and sorted(one.skipped) == sorted(map(str, bad))
    assert list(one.warnings) == [str(loud)]
    for split in ("train", "validation"):
        files = [lib.data.features.split_files(ref.path, split) for ref in (one, three)]
        assert [path.read_bytes() for path in files[0]] == [path.read_bytes() for path in files[1]]
