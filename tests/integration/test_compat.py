"""What astft 0.1.0 wrote stays usable: its published member and encoder load, and its work dir resumes.

tests/fixtures/v0_1_0 was written by tests/fixtures/v0_1_0/make_fixtures.py at commit 736fab7 (before lib/
was layered): a member published with a 2-epoch fine-tune, its work dir, an encoder published by astft
pretrain, the clips and SSL checkpoint they came from, and what predict and the caches said then.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest

from lib.config import FinetuneConfig
from lib.data.features import build_feature_cache
from lib.data.scan import scan_dataset
from lib.evaluate.predict import predict_files
from lib.model.checkpoint import export_encoder
from lib.recipes.finetune import member_resume_key, plan_run, train_member
from tests.helpers import CPU

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "v0_1_0"
FIXED_MTIME_NS = 1_700_000_000 * 10**9  # what make_fixtures.py set: the scan fingerprint holds each clip's mtime


@pytest.fixture
def old_run(tmp_path) -> Path:
    """A copy of the fixtures (links kept) with the inputs' mtimes as they were when the fixtures were made."""
    root = tmp_path / "v0_1_0"
    shutil.copytree(FIXTURES, root, symlinks=True)
    for folder in ("data", "ssl-checkpoint"):
        for path in (root / folder).rglob("*"):
            if path.is_file():
                os.utime(path, ns=(FIXED_MTIME_NS, FIXED_MTIME_NS))
    return root


def expected() -> dict:
    return json.loads((FIXTURES / "expected.json").read_text())


def probabilities(csv_path: Path) -> dict[str, dict[str, float]]:
    """file name -> the per-class probabilities a predictions CSV holds."""
    with csv_path.open() as handle:
        rows = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    return {
        Path(row["file"]).name: {key: float(value) for key, value in row.items() if key.startswith("prob_")}
        for row in rows
    }


def test_a_member_published_by_0_1_0_predicts_as_it_did(old_run, tmp_path):
    output = tmp_path / "now.csv"
    predict_files(old_run / "output" / "best" / "fx", old_run / "data" / "validation", output, CPU, batch_size=4)
    then, now = probabilities(old_run / "predictions.csv"), probabilities(output)
    assert sorted(now) == sorted(then) and len(now) == 6
    for name, probs in then.items():
        assert now[name] == pytest.approx(probs, abs=1e-5), name


def test_an_encoder_published_by_0_1_0_loads_as_an_ssl_checkpoint(old_run, tmp_path):
    ref, hit = export_encoder(old_run / "output" / "ssl" / "enc", None, tmp_path / "cache", 128)
    assert not hit
    assert ref.report.dropped  # the projector and decoder SSAST trains beside the encoder
    assert json.loads((Path(ref.path) / "config.json").read_text())["hidden_size"] == 32


def fixture_config(root: Path) -> FinetuneConfig:
    """The config make_fixtures.py trained with, at the copy's paths."""
    return FinetuneConfig.model_validate({
        "name": "fx", "output_dir": str(root / "output"),
        "data": {"train_dir": str(root / "data/train"), "validation_dir": str(root / "data/validation"),
                 "cache_dir": str(root / "cache"), "feature_workers": 1},
        "model": {"ssl_checkpoint": str(root / "ssl-checkpoint"), "train_last_n_layers": 1},
        "training": {"epochs": 2, "batch_size": 4, "learning_rate": 1e-3, "warmup_steps": 0, "device": "cpu",
                     "save_total_limit": 1},
    })


@pytest.mark.train
def test_a_work_dir_of_0_1_0_resumes_from_its_checkpoint(old_run):
    plan = plan_run(fixture_config(old_run))
    manifest = scan_dataset(plan.config.data.train_dir, plan.config.data.validation_dir)
    features, _ = build_feature_cache(manifest, plan.feature_params, plan.config.data.cache_dir, workers=1)
    encoder, _ = export_encoder(
        plan.config.model.ssl_checkpoint, None, plan.config.data.cache_dir, plan.feature_params.max_frames
    )
    # the config's fingerprint and the feature cache key are what 0.1.0 computed for the same clips and config
    recorded = expected()["resume_key"]
    assert recorded.startswith(f"{plan.fingerprint}-{features.key}-")
    assert features.key == expected()["feature_cache_key"]
    # 0.1.0 keyed the encoder by its checkpoint's path and mtime, and this copy lies elsewhere: run.json is
    # pointed at the key 0.1.0 would have recorded here (EncoderRef.legacy_key). Everything else in the work dir
    # (checkpoint, epochs file, logs) is as 0.1.0 left it.
    run_file = plan.work_dir / "run.json"
    marker = json.loads(run_file.read_text())
    assert marker == {"fingerprint": recorded, "kind": "finetune", "name": "fx"}
    marker["fingerprint"] = f"{plan.fingerprint}-{features.key}-{encoder.legacy_key}+trunk1"
    run_file.write_text(json.dumps(marker))
    outcome = train_member(plan, features, encoder)
    assert Path(outcome.resumed_from).name == expected()["best_checkpoint"]
    assert outcome.optimizer_steps == 2 and outcome.epochs_run == 2
    # accepted once: run.json now holds today's key, over the encoder's content
    assert json.loads(run_file.read_text())["fingerprint"] == member_resume_key(plan, features, encoder) + "+trunk1"
